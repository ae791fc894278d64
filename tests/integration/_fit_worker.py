"""Worker of the integration tests that fit in other processes, on scikit-learn's digits as
8x8 images: run as ``python _fit_worker.py MODE OUT [CHECKPOINT]``, alone (one process)
or under ``torchrun --nproc_per_node=2``. Every process writes ``OUT/pid<rank>`` when it
starts, ``OUT/started<rank>`` just before ``fit``, and at the end ``OUT/rank<rank>.npz``
(labels, self-labels, history, weights); rank 0 also pickles the estimator.

MODE:

* ``default``: ``SelfLabelClusterer(n_clusters=10, random_state=0)``, the issue's fit.
  Under torchrun it first checks the team's collectives, BatchNorm over the shares of the
  two processes, and that the neighbour graph built by two processes is the one-process
  graph.
* ``local``: a short fit (5 epochs) with ``sync_batch_norm=False``, each process
  normalising its own share of the batches.
* ``checkpoint``: a short fit (4 epochs, ``prior="auto"``) with ``checkpoint=CHECKPOINT``,
  which the tests kill and interrupt; every self-label step writes a checkpoint, as on
  long epochs, so that kills also find checkpoints in the middle of epochs.
* ``raise``: a fit (4 epochs) in which process 1 fails to allocate in batch 3 of epoch 2
  (writing ``OUT/raised1``, the time, just before).
* ``disagree``: process 1 fits one sample fewer than process 0.

A fit that raises writes ``OUT/error<rank>`` (the time, the error's type and message) and
re-raises.
"""
import copy
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from sklearn.datasets import load_digits

from skselflabel import SelfLabelClusterer, SinkhornAssigner
from skselflabel._data.input_scaling import InputScaling
from skselflabel._data.sources import ArraySource, Feeder
from skselflabel._fit import resume, training
from skselflabel._fit.graph import NeighborGraph
from skselflabel._runtime.processes import join_team
from skselflabel._runtime.shared_norm import shared_batch_norm

CHECKPOINT_EPOCHS = 4
ALLOCATION_FAILURE = ("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't "
                      "allocate memory: you tried to allocate 2400000000 bytes. Error code 12 "
                      "(Cannot allocate memory)")


def fail_in_epoch_2(out):
    """Make this process's training fail to allocate at batch 3 of epoch 2."""
    step = training.Trainer._step

    def failing_step(self, xb, targets):
        if (self.epoch, self.batch) == (2, 3):
            (out / "raised1").write_text(repr(time.time()))
            raise RuntimeError(ALLOCATION_FAILURE)
        return step(self, xb, targets)

    training.Trainer._step = failing_step


def check_team(X):
    """The collectives every data-parallel fit relies on, between the two processes."""
    team = join_team(torch.device("cpu"))
    assert (team.rank, team.world) == (dist.get_rank(), 2)
    start, stop = team.shard(7)                       # shards of 3 and 4 rows
    gathered = team.gather_rows(torch.arange(start, stop)[:, None] * 10, 7)
    assert gathered.flatten().tolist() == [0, 10, 20, 30, 40, 50, 60], gathered
    assert team.share(torch.arange(5)).tolist() == ([0, 1] if team.rank == 0 else [2, 3, 4])
    assert team.share_bytes(b"abc" if team.leader else None) == b"abc"
    assert team.share_bytes(None) is None
    assert [int(t) for t in team.gather(torch.tensor(team.rank))] == [0, 1]
    assert team.any_process(team.rank == 1) and not team.any_process(False)
    assert team.sum_(torch.tensor([1.0, team.rank])).tolist() == [2.0, 1.0]
    assert team.max_(torch.tensor([team.rank])).tolist() == [1]
    assert team.broadcast_(torch.tensor([team.rank + 5]), src=1).tolist() == [6]
    check_shared_batch_norm(team)
    source = ArraySource(X[:, None])
    feeder = Feeder(source, InputScaling.fit(source), "cpu")
    for space in ("input", "gradients"):
        graph = NeighborGraph.build(feeder, space, 10, team).indices
        parts = team.gather(graph)
        assert torch.equal(parts[0], parts[1]), space
        if space == "input":                          # no projection: exactly one process's
            assert torch.equal(graph, NeighborGraph.build(feeder, space, 10).indices)
    team.close()


def check_shared_batch_norm(team):
    """BatchNorm over the shares of two processes is BatchNorm over the whole batch: the
    output, the gradients and the running statistics."""
    x = torch.randn(10, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    upstream = torch.randn(x.shape, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(1))
    whole = torch.nn.BatchNorm2d(3).double()
    with torch.no_grad():
        whole.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(2))
    shared = copy.deepcopy(whole)
    x_whole = x.clone().requires_grad_()
    out_whole = whole(x_whole)
    (out_whole * upstream).sum().backward()
    start, stop = team.shard(10)
    x_part = x[start:stop].clone().requires_grad_()
    with shared_batch_norm(shared, team):
        out = shared(x_part)
        (out * upstream[start:stop]).sum().backward()
    torch.testing.assert_close(out, out_whole[start:stop])
    torch.testing.assert_close(x_part.grad, x_whole.grad[start:stop])
    torch.testing.assert_close(team.sum_(shared.weight.grad.clone()), whole.weight.grad)
    torch.testing.assert_close(shared.running_var, whole.running_var)
    assert "forward" not in vars(shared)                 # a plain BatchNorm2d again


def main(mode, out, checkpoint=None):
    out = Path(out)
    rank = int(os.environ.get("RANK", "0"))
    (out / f"pid{rank}").write_text(str(os.getpid()))
    X = load_digits().images
    if mode == "default":
        est = SelfLabelClusterer(n_clusters=10, random_state=0)
        if "RANK" in os.environ:
            dist.init_process_group("gloo")
            check_team(X)
    elif mode == "raise":
        est = SelfLabelClusterer(n_clusters=10, random_state=0, max_epochs=4)
        if rank == 1:
            fail_in_epoch_2(out)
    elif mode == "disagree":
        est = SelfLabelClusterer(n_clusters=10, random_state=0, max_epochs=1)
        X = X[:-1] if rank == 1 else X
    elif mode == "local":
        est = SelfLabelClusterer(n_clusters=10, random_state=0, max_epochs=5,
                                 sync_batch_norm=False)
    else:
        resume.LABEL_UPDATE_SECONDS = 0.0
        # The default assigner with prior="auto", whose proportions carry over steps.
        auto = SinkhornAssigner(lam=10.0, tol=0.01, size_tolerance=0.5, prior="auto")
        # Ten self-label steps per epoch (the default caps them at three), each writing a
        # checkpoint, so that the kills find checkpoints early and in mid-epoch.
        est = SelfLabelClusterer(n_clusters=10, random_state=0, max_epochs=CHECKPOINT_EPOCHS,
                                 n_label_updates=10 * CHECKPOINT_EPOCHS, assigner=auto,
                                 checkpoint=checkpoint)
    (out / f"started{rank}").write_text("")
    try:
        est.fit(X)
    except Exception as exc:
        (out / f"error{rank}").write_text(f"{time.time()!r}\n{type(exc).__name__}\n{exc}")
        raise
    weights = torch.cat([t.flatten().double() for module in (est.backbone_, est.heads_)
                         for t in module.state_dict().values()])
    np.savez(out / f"rank{rank}.npz", labels=est.labels_, self_labels=est.self_labels_,
             history=est.history_.to_numpy(dtype=float), weights=weights.numpy(),
             n_iter=est.n_iter_, cluster_sizes=est.cluster_sizes_)
    if rank == 0:
        (out / "estimator.pkl").write_bytes(pickle.dumps(est))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:])
