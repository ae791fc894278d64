"""Checkpoint files: framed, checksummed and replaced atomically, so that they are always
complete on disk (a write that fails leaves the previous one), and read back without running
code."""
from contextlib import suppress
import errno
import hashlib
import io
import os
from pathlib import Path
import pickle
import struct

import torch

MAGIC = b"skselflabel-ckpt"
FRAME = struct.Struct("<16sQ32s")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: incomplete, corrupted, not a checkpoint,
    holding more than tensors and plain values, or written by a different fit."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (a full disk, an I/O error, no permission):
    the previous one is intact, and no temporary file is left."""


def checkpoint_path(checkpoint):
    """``checkpoint`` (str or path-like) as a Path whose folder exists, or a ValueError."""
    path = Path(os.fspath(checkpoint))
    if path.is_dir():
        raise ValueError(f"checkpoint={str(path)!r} is a folder; pass a file path such as "
                         f"{str(path / 'fit.ckpt')!r}.")
    if not path.parent.is_dir():
        raise ValueError(f"The folder of checkpoint={str(path)!r} does not exist; create "
                         "it first (the checkpoint is written there during fit).")
    return path


def _temporary(path):
    return path.with_name(f".{path.name}.tmp")


def write_checkpoint(path, payload):
    """Write ``payload`` to ``path`` atomically: whoever reads ``path`` at any moment, even
    after a crash, finds the previous checkpoint or this one, complete. A write that fails
    raises a :class:`CheckpointWriteError` naming the path and the cause."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getbuffer()
    temporary = _temporary(path)
    try:
        with open(temporary, "wb") as file:
            file.write(FRAME.pack(MAGIC, len(data), hashlib.sha256(data).digest()))
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as exc:
        with suppress(OSError):           # the cause, not a failing clean-up, is reported
            temporary.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CheckpointWriteError(exc.errno, (
                f"The checkpoint {str(path)!r} could not be written: {_cause(exc)}. The "
                "previous checkpoint there, if any, is intact: fitting again resumes from "
                "it. Free space on its disk or pass another checkpoint path.")) from exc
        raise
    _sync_folder(path.parent)


def check_writable(path):
    """Refuse, with a ValueError naming the cause, a checkpoint ``path`` that cannot be
    written: a fit finds out when it starts rather than at its first checkpoint."""
    temporary = _temporary(path)
    try:
        with open(temporary, "wb"):
            pass
    except OSError as exc:
        raise ValueError(f"checkpoint={str(path)!r} cannot be written: {_cause(exc)} "
                         f"(creating {temporary.name!r} in its folder failed). Pass a path "
                         "in a folder this process can write to.") from None
    finally:
        with suppress(OSError):
            temporary.unlink(missing_ok=True)


def _cause(exc):
    """An OSError in words, with its errno's name: ``No space left on device (ENOSPC)``."""
    name = errno.errorcode.get(exc.errno)
    return f"{exc.strerror or exc}" + (f" ({name})" if name else "")


def _sync_folder(folder):
    """Make a rename in ``folder`` durable (where the platform allows opening folders)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def remove_checkpoint(path):
    """Delete the checkpoint at ``path`` and any temporary file a killed writer left."""
    path.unlink(missing_ok=True)
    _temporary(path).unlink(missing_ok=True)


def read_checkpoint(data, path):
    """The payload of a checkpoint file's bytes ``data`` (read from ``path``), or a
    :class:`CheckpointError` that says what is wrong with the file."""
    where = f"The checkpoint file {str(path)!r}"
    if len(data) < FRAME.size and MAGIC.startswith(data[:len(MAGIC)]):
        raise CheckpointError(f"{where} is incomplete: it holds only {len(data)} bytes "
                              "(truncated). Delete it to train afresh.")
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{where} is not a skselflabel checkpoint (it does not start "
                              "as one). Pass another path, or delete the file.")
    _, length, digest = FRAME.unpack_from(data)
    payload = memoryview(data)[FRAME.size:]
    if len(payload) < length:
        raise CheckpointError(f"{where} is incomplete: it holds {len(payload)} of its "
                              f"{length} bytes (truncated, e.g. copied before the end). "
                              "Delete it to train afresh.")
    if len(payload) > length or hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{where} is corrupted: its content does not match its "
                              "SHA-256 checksum. Delete it to train afresh.")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
        raise CheckpointError(
            f"{where} was refused: it holds objects other than tensors and plain values, "
            "which could run code when loaded (it was not written by skselflabel, or was "
            "altered). Loading stopped before anything ran" +
            (f" ({found[0]})." if found else ".")) from None
    except Exception as exc:
        raise CheckpointError(f"{where} could not be read: {exc}") from None
