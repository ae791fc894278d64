"""Worker for tests/test_distributed.py, run as ``torchrun --nproc_per_node=2 <this> OUT``.

Every process builds the same scores, keeps its own share of the rows (unequal shares, so
that one process's share fits the solver's warm-up subsample and the other's does not),
and solves with ``reduce_fn=torch.distributed.all_reduce`` over the gloo backend. Each
writes its labels and log-scalings to ``OUT/rank<r>.npz``.
"""
import sys

import numpy as np
import torch
import torch.distributed as dist

from skselflabel import sinkhorn_knopp
from skselflabel._solver import sinkhorn

N, K, SPLIT, LAM = 6_000, 50, 2_000, 10.0


def scores():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((N, K)).astype(np.float32)
    home = rng.choice(K, size=N, p=rng.dirichlet(np.ones(K)))
    z[np.arange(N), home] += 3.0
    return z


def main(out):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    # Rank 0 (2,000 rows) solves its whole share in the warm-up; rank 1 (4,000) would not.
    sinkhorn._WARMUP_ELEMENTS = 2_500 * K
    z = scores()
    rows = z[:SPLIT] if rank == 0 else z[SPLIT:]
    res = sinkhorn_knopp(rows, lam=LAM, tol=1e-5, reduce_fn=dist.all_reduce, n_total=N)
    np.savez(f"{out}/rank{rank}.npz", labels=res.labels, log_u=res.log_u, log_v=res.log_v,
             n_iter=res.n_iter)
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
