"""Checkpoints that survive kill -9: a fit on digits with ``checkpoint=...`` is killed
(SIGKILL) at three random moments, in one process and under torchrun with two; after each
kill the checkpoint file is complete, and the same fit run again ends with the labels of
an uninterrupted fit. Under torchrun a Ctrl-C reaching one process stops both at the same
batch and leaves a checkpoint too.

The moments are drawn from a fresh seed, printed on failure (set SKSELFLABEL_KILL_SEED to
replay one)."""
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from skselflabel._runtime.checkpoint_file import read_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _launch  # noqa: E402

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("SKSELFLABEL_KILL_SEED", np.random.SeedSequence().entropy % 10**6))
# Each kill lands once the run has written a checkpoint of its own (so that every run moves
# the fit on), this fraction of an uninterrupted fit later: in the middle of a write or
# between writes, never so late that three kills leave no fit to the final, resumed run.
KILL_AFTER = (0.0, 0.12)


def _uninterrupted(out, processes):
    """Results of the fit run through, and how long its fit took (seconds)."""
    proc = _launch.start("checkpoint", out, out / "fit.ckpt", processes)
    _launch.wait_for(out / "started0", proc)
    began = time.monotonic()
    _launch.finish(proc, out)
    return _launch.results(out, processes)[0], time.monotonic() - began


def _assert_same_end(rank, reference, message=""):
    for name in ("labels", "self_labels", "cluster_sizes"):
        np.testing.assert_array_equal(rank[name], reference[name], err_msg=message + name)


def _kill(proc, out, how, processes):
    """SIGKILL: every process of the run ("all": a power cut), or one worker."""
    pids = {r: int((out / f"pid{r}").read_text()) for r in range(processes)}
    targets = list(pids.values()) + [proc.pid] if how == "all" else [pids[how]]
    for pid in targets:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=120)          # torchrun ends the other worker when one dies


def _check_complete(path, what):
    """The checkpoint, if any, reads back whole (frame, checksum, weights_only load)."""
    if not path.exists():
        return f"{what}: no checkpoint yet"
    state = read_checkpoint(path.read_bytes(), path)
    training = state["training"]
    return (f"{what}: checkpoint at epoch {training['epoch']}, batch "
            f"{training['epoch_steps']}, step {training['step']}")


def _identity(path):
    """The file's inode and modification time (a checkpoint is renamed into place: a new
    one has a new inode), or None."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _wait_for_a_new_checkpoint(path, previous, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while _identity(path) in (None, previous):
        assert proc.poll() is None, f"the fit ended without a new checkpoint; log:\n" + (
            _launch.log_tail(path.parent))
        assert time.monotonic() < deadline, f"no new checkpoint after {timeout} s"
        time.sleep(0.01)


def _kill_three_times(tmp_path, processes, ways):
    reference, seconds = _uninterrupted(tmp_path / "reference", processes)
    out, rng, seen = tmp_path / "killed", np.random.default_rng(SEED), []
    path = out / "fit.ckpt"
    for k, how in enumerate(ways):
        previous = _identity(path)
        proc = _launch.start("checkpoint", out, path, processes)
        _launch.wait_for(out / "started0", proc)
        _wait_for_a_new_checkpoint(path, previous, proc)
        time.sleep(rng.uniform(*KILL_AFTER) * seconds)
        assert proc.poll() is None, f"seed {SEED}: the fit ended before kill {k + 1}"
        _kill(proc, out, how, processes)
        seen.append(_check_complete(path, f"after kill {k + 1} ({how})"))
    _launch.finish(_launch.start("checkpoint", out, path, processes), out)
    ranks = _launch.results(out, processes)
    assert "resumes from the checkpoint" in _launch.log_tail(out, 10**6), (
        f"seed {SEED}; " + "; ".join(seen))
    for rank in ranks:
        _assert_same_end(rank, reference, f"seed {SEED}; " + "; ".join(seen) + "; ")
    assert not path.exists()                    # the completed fit removed it
    print(f"seed {SEED}; fit of {seconds:.1f} s; " + "; ".join(seen))
    return seen


def test_kill_9_three_times_then_the_same_fit_ends_as_an_uninterrupted_one(tmp_path):
    seen = _kill_three_times(tmp_path, 1, [0, 0, 0])
    assert sum("checkpoint at" in s for s in seen) >= 2, seen


@pytest.mark.skipif(not _launch.needs_gloo[0], reason=_launch.needs_gloo[1])
def test_kill_9_under_torchrun_three_times_then_resume(tmp_path):
    # A power cut (every process), the writer (rank 0) alone, the other worker alone.
    seen = _kill_three_times(tmp_path, 2, ["all", 0, 1])
    assert sum("checkpoint at" in s for s in seen) >= 2, seen


@pytest.mark.skipif(not _launch.needs_gloo[0], reason=_launch.needs_gloo[1])
def test_ctrl_c_in_one_process_stops_both_at_the_same_batch_under_torchrun(tmp_path):
    reference, seconds = _uninterrupted(tmp_path / "reference", 2)
    out = tmp_path / "interrupted"
    path = out / "fit.ckpt"
    proc = _launch.start("checkpoint", out, path, 2)
    _launch.wait_for(out / "started1", proc)
    time.sleep(0.4 * seconds)
    os.kill(int((out / "pid1").read_text()), signal.SIGINT)
    _launch.finish(proc, out)
    stopped = _launch.results(out, 2)
    assert stopped[0]["n_iter"] < 4 and "interrupted" in _launch.log_tail(out, 10**6)
    for name in ("labels", "history", "weights", "cluster_sizes"):
        np.testing.assert_array_equal(stopped[0][name], stopped[1][name], err_msg=name)
    assert "checkpoint at" in _check_complete(path, "after Ctrl-C")
    _launch.finish(_launch.start("checkpoint", out, path, 2), out)
    for rank in _launch.results(out, 2):
        _assert_same_end(rank, reference)
