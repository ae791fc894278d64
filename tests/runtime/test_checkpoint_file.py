"""Checkpoint files: complete or absent, refused with a clear error when not usable, never
able to run code when read."""
import errno
import hashlib
import io
import os
import pickle

import pytest
import torch

from skselflabel._runtime import checkpoint_file
from skselflabel._runtime.checkpoint_file import (FRAME, MAGIC, CheckpointError,
                                                  CheckpointWriteError, check_writable,
                                                  checkpoint_path, read_checkpoint,
                                                  remove_checkpoint, write_checkpoint)
from disk_faults import failing_open


def _payload():
    return {"weights": torch.arange(1000, dtype=torch.float32), "epoch": 3,
            "history": [[1, 0.5, float("nan")]], "name": "fit", "pair": (1, 2.0)}


def _read(path):
    return read_checkpoint(path.read_bytes(), path)


def test_a_written_checkpoint_reads_back(tmp_path):
    path = tmp_path / "fit.ckpt"
    write_checkpoint(path, _payload())
    back = _read(path)
    assert torch.equal(back["weights"], _payload()["weights"])
    assert back["epoch"] == 3 and back["name"] == "fit" and back["pair"] == (1, 2.0)
    assert [p.name for p in tmp_path.iterdir()] == ["fit.ckpt"]      # no temporary left


def _fsync_fails(fd):
    raise OSError(errno.EIO, os.strerror(errno.EIO))


@pytest.mark.parametrize("where, code", [("write", errno.ENOSPC), ("fsync", errno.EIO),
                                         ("open", errno.EACCES), ("replace", errno.EXDEV)])
def test_a_failed_write_names_the_path_and_cause_and_leaves_the_previous_checkpoint(
        tmp_path, monkeypatch, where, code):
    path = tmp_path / "fit.ckpt"
    write_checkpoint(path, _payload())
    before = path.read_bytes()
    if where in ("write", "open"):     # a full disk half-way through, or no permission
        monkeypatch.setattr(checkpoint_file, "open", failing_open(code), raising=False)
    elif where == "fsync":            # an I/O error while the data goes to the disk
        monkeypatch.setattr(os, "fsync", _fsync_fails)
    else:
        def replace(*args):
            raise OSError(code, os.strerror(code))
        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(CheckpointWriteError) as err:
        write_checkpoint(path, {"weights": torch.zeros(10_000)})
    assert isinstance(err.value, OSError) and err.value.errno == code
    assert (f"The checkpoint {str(path)!r} could not be written: {os.strerror(code)} "
            f"({errno.errorcode[code]}). The previous checkpoint there") in str(err.value)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["fit.ckpt"]      # no temporary left
    monkeypatch.undo()
    assert torch.equal(_read(path)["weights"], _payload()["weights"])


def test_a_path_that_cannot_be_written_is_found_before_any_write(tmp_path, monkeypatch):
    path = tmp_path / "fit.ckpt"
    check_writable(path)
    assert list(tmp_path.iterdir()) == []                            # nothing left
    monkeypatch.setattr(checkpoint_file, "open", failing_open(errno.EACCES), raising=False)
    with pytest.raises(ValueError, match=r"checkpoint='.*fit.ckpt' cannot be written: "
                       r"Permission denied \(EACCES\) \(creating '.fit.ckpt.tmp' in its "
                       r"folder failed\)"):
        check_writable(path)


@pytest.mark.parametrize("keep", [0, 10, FRAME.size, FRAME.size + 100, -1])
def test_a_truncated_file_is_refused_as_incomplete(tmp_path, keep):
    path = tmp_path / "fit.ckpt"
    write_checkpoint(path, _payload())
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(CheckpointError, match="is incomplete"):
        _read(path)


def test_a_changed_byte_is_refused_as_corrupted(tmp_path):
    # torch's own reader would load the changed tensor without a word (tested here too).
    path = tmp_path / "fit.ckpt"
    write_checkpoint(path, _payload())
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    changed = torch.load(io.BytesIO(bytes(data[FRAME.size:])), weights_only=True)
    assert not torch.equal(changed["weights"], _payload()["weights"])
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is corrupted"):
        _read(path)


def test_other_files_are_not_checkpoints(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_payload(), path)            # a plain torch file
    with pytest.raises(CheckpointError, match="not a skselflabel checkpoint"):
        _read(path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_checkpoint_crafted_to_run_code_does_not_run_it(tmp_path):
    marker = tmp_path / "code-ran"
    payload = io.BytesIO()
    torch.save({"weights": torch.zeros(2), "trap": _RunsCode(marker)}, payload)
    # Framed as a real checkpoint, with a correct checksum (which is no signature).
    data = payload.getvalue()
    path = tmp_path / "fit.ckpt"
    path.write_bytes(FRAME.pack(MAGIC, len(data), hashlib.sha256(data).digest()) + data)
    with pytest.raises(CheckpointError, match="could run code") as err:
        _read(path)
    assert "mkdir" in str(err.value)                 # names what it refused
    assert not marker.exists()
    # The same bytes unpickled without weights_only would run it: the trap is real.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(io.BytesIO(data), weights_only=True)
    torch.load(io.BytesIO(data), weights_only=False)
    assert marker.exists()


def test_the_path_must_be_a_file_in_an_existing_folder(tmp_path):
    assert checkpoint_path(str(tmp_path / "a.ckpt")) == tmp_path / "a.ckpt"
    with pytest.raises(ValueError, match="is a folder"):
        checkpoint_path(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        checkpoint_path(tmp_path / "missing" / "a.ckpt")


def test_removing_deletes_the_file_and_a_temporary_a_killed_writer_left(tmp_path):
    path = tmp_path / "fit.ckpt"
    write_checkpoint(path, _payload())
    (tmp_path / ".fit.ckpt.tmp").write_bytes(b"partial")
    remove_checkpoint(path)
    assert list(tmp_path.iterdir()) == []
    remove_checkpoint(path)                          # nothing there: no error
