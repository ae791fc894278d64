"""Data-parallel work under real torch.distributed: two processes (gloo) started by
torchrun, one thread each. The solver's seam (sinkhorn_knopp with reduce_fn, rows split
unequally), the estimator's data-parallel fit, a process that fails and processes given
different data."""
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from skselflabel import sinkhorn_knopp
from skselflabel.metrics import cluster_accuracy

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _distributed_worker as worker  # noqa: E402
import _launch  # noqa: E402

pytestmark = [pytest.mark.slow,  # integration: `make test-fast` leaves it out
              pytest.mark.skipif(not _launch.needs_gloo[0], reason=_launch.needs_gloo[1])]

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


def test_a_fit_in_two_processes_ends_alike_in_both_and_clusters_as_one(tmp_path):
    # The worker also checks the team's collectives and the two-process neighbour graph.
    two, one = tmp_path / "two", tmp_path / "one"
    _launch.finish(_launch.start("default", two, processes=2), two)
    ranks = _launch.results(two, processes=2)
    for name in ("labels", "self_labels", "history", "weights", "n_iter", "cluster_sizes"):
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)
    assert len(ranks[0]["history"]) == 40 and np.isfinite(ranks[0]["history"]).all()
    _launch.finish(_launch.start("default", one), one)
    y = load_digits().target
    acc_two = cluster_accuracy(y, ranks[0]["labels"])
    acc_one = cluster_accuracy(y, _launch.results(one)[0]["labels"])
    assert abs(acc_two - acc_one) <= 0.03, (acc_two, acc_one)
    # The fitted estimator of the data-parallel fit loads and predicts in a plain process.
    est = pickle.loads((two / "estimator.pkl").read_bytes())
    np.testing.assert_array_equal(est.predict(load_digits().images), ranks[0]["labels"])


def test_batch_norm_per_share_still_ends_alike_in_both_processes(tmp_path):
    # sync_batch_norm=False: the BatchNorm statistics of the two processes differ during
    # training; the self-label steps and the end still see the same network in both.
    _launch.finish(_launch.start("local", tmp_path, processes=2), tmp_path)
    ranks = _launch.results(tmp_path, processes=2)
    for name in ("labels", "self_labels", "history", "weights", "cluster_sizes"):
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)
    assert cluster_accuracy(load_digits().target, ranks[0]["labels"]) > 0.5


def _errors(out):
    """Each process's error: (time, type, message)."""
    found = {}
    for rank in range(2):
        when, kind, message = (out / f"error{rank}").read_text().split("\n", 2)
        found[rank] = (float(when), kind, message)
    return found


def test_a_process_that_raises_stops_the_other_which_names_it(tmp_path):
    # Process 1 fails to allocate in batch 3 of epoch 2, while process 0 waits for its
    # gradients: process 0 stops within seconds (not the collective's 30-minute timeout),
    # and both say what process 1 raised.
    began = time.monotonic()
    proc = _launch.start("raise", tmp_path, processes=2)
    assert proc.wait(timeout=300) != 0, _launch.log_tail(tmp_path)
    raised = float((tmp_path / "raised1").read_text())
    errors = _errors(tmp_path)
    when, kind, message = errors[1]
    assert kind == "OutOfMemory"
    assert message.startswith("SelfLabelClusterer.fit ran out of cpu memory in training "
                              "batch 3 of epoch 2 (RuntimeError: [enforce fail at "
                              "alloc_cpu.cpp:127]")
    when0, kind0, message0 = errors[0]
    assert kind0 == "ProcessFailedError"
    assert message0.startswith("Process 1 of this data-parallel fit of 2 processes failed "
                               "with OutOfMemory: " + message[:200])
    assert "Process 0 stopped with it" in message0
    assert when0 - raised < 60 and when - raised < 60, (when0 - raised, when - raised)
    print(f"process 0 stopped {when0 - raised:.2f} s after process 1 raised; process 1 "
          f"re-raised after {when - raised:.2f} s; torchrun ended after "
          f"{time.monotonic() - began:.1f} s in all")


def test_processes_given_different_data_are_refused_in_every_process(tmp_path):
    proc = _launch.start("disagree", tmp_path, processes=2)
    assert proc.wait(timeout=300) != 0, _launch.log_tail(tmp_path)
    errors = _errors(tmp_path)
    for rank in (0, 1):
        kind, message = errors[rank][1:]
        assert kind == "ValueError"
        assert message.startswith(
            "The 2 processes of this data-parallel fit were given different data or "
            "parameters: data shape: (1797, 1, 8, 8) in process 0, (1796, 1, 8, 8) in "
            "process 1; data sample: "), message
    assert not list(tmp_path.glob("raised*")) and not list(tmp_path.glob("rank*.npz"))
