"""Starting the fit worker (``_fit_worker.py``) in other processes, alone or under torchrun,
for the integration tests."""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch.distributed as dist

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_fit_worker.py"
# One torch thread per process: two processes on a 2-core machine (CI).
ENV = dict(os.environ, OMP_NUM_THREADS="1")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            "--master_port=0", "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0"]

needs_gloo = [
    dist.is_available() and dist.is_gloo_available(),
    "torch.distributed with the gloo backend is not available in this torch build"]


def start(mode, out, checkpoint=None, processes=1):
    """Start the worker (``processes`` 1: plainly, 2: under torchrun); its output goes to
    ``out/log``."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("started*")) + list(out.glob("pid*")):
        stale.unlink()
    cmd = ([sys.executable] if processes == 1 else TORCHRUN) + [str(WORKER), mode, str(out)]
    cmd += [] if checkpoint is None else [str(checkpoint)]
    log = open(out / "log", "a")
    return subprocess.Popen(cmd, env=ENV, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def finish(proc, out, timeout=600):
    """Wait for the worker to end; fail with its log if it did not succeed."""
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"timed out; log:\n{log_tail(out)}") from None
    assert code == 0, f"exit {code}; log:\n{log_tail(out)}"


def log_tail(out, chars=4000):
    return (out / "log").read_text()[-chars:]


def wait_for(path, proc, timeout=300):
    """Wait until ``path`` exists (the worker wrote it) while the worker runs."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"worker ended early; log:\n{log_tail(path.parent)}"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.05)


def results(out, processes=1):
    """Each process's arrays (``rank<r>.npz``)."""
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(processes)]
