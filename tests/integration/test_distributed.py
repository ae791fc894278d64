"""sinkhorn_knopp under real torch.distributed: two processes (gloo), rows split unequally."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from skselflabel import sinkhorn_knopp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _distributed_worker as worker  # noqa: E402

pytestmark = pytest.mark.slow  # integration: `make test-fast` leaves it out

HERE = Path(__file__).resolve().parent


def test_two_processes_match_one(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port=0", "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0",
           str(HERE / "_distributed_worker.py"), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    parts = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    # Both processes agree on the column scalings and the iteration count.
    np.testing.assert_allclose(parts[0]["log_v"], parts[1]["log_v"])
    assert int(parts[0]["n_iter"]) == int(parts[1]["n_iter"])
    z = worker.scores()
    one = sinkhorn_knopp(z, lam=worker.LAM, tol=1e-5)
    labels = np.concatenate([p["labels"] for p in parts])
    assert np.mean(labels == one.labels) > 0.999
    # The plan assembled from the two processes has the right marginals.
    log_u = np.concatenate([p["log_u"] for p in parts])
    Q = np.exp(worker.LAM * z.astype(np.float64) + log_u[:, None] + parts[0]["log_v"][None])
    assert np.abs(Q.sum(1) * len(z) - 1).max() <= 1e-4
    assert np.abs(Q.sum(0) * z.shape[1] - 1).max() <= 1e-4
