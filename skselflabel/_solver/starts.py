"""Where a solve starts: potentials given by the caller, how well potentials fit a matrix,
and a whole-matrix solve from given potentials."""
import math

import numpy as np
import torch

from .iterations import EXP_MIN, anneal, exponent_fn, make_kernel, scaling_loop

# On the full matrix, an error that has not halved in this many iterations means a stall
# (see iterations.scaling_loop); then lam is annealed on the full matrix.
STALL_WINDOW = 50


def given_potentials(init_log_v, problem, span):
    """Column potentials from the caller's ``init_log_v``, or a ValueError.

    Only differences between potentials matter, and no solution spreads them by more than
    ``lam * span + log(max prior / min prior)`` (``span`` the largest range of a row of
    scores; a wider gap would give a column less than its prior): so the start is shifted
    to a maximum of 0 and floored there (``-inf`` marks "no mass yet"). Clusters with zero
    prior stay at ``-inf``.
    """
    log_p = problem.log_p
    K, allowed = log_p.shape[0], torch.isfinite(log_p)
    try:
        # A tensor (the previous self-label step's log_v) stays on its device: no host copy.
        g = (init_log_v.detach().to(log_p.device, torch.float64) if torch.is_tensor(init_log_v)
             else torch.as_tensor(np.asarray(init_log_v, dtype=np.float64)).to(log_p.device))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"init_log_v must be a vector of numbers: {exc}") from None
    if g.shape != (K,):
        raise ValueError(f"init_log_v must have length n_clusters={K}, got shape "
                         f"{tuple(g.shape)}.")
    if torch.isnan(g[allowed]).any() or torch.isposinf(g[allowed]).any():
        raise ValueError("init_log_v must not hold NaN or +inf (for clusters with a "
                         "positive prior); pass the log_v of an earlier solve, or None.")
    if problem.reduce_fn is not None:   # every process must start from the same potentials
        span_t = torch.tensor([span], dtype=torch.float64, device=log_p.device)
        problem.reduce_fn(span_t)       # a sum over processes bounds their largest span
        span = float(span_t[0])
    spread = problem.lam * span + float(log_p[allowed].max() - log_p[allowed].min()) + 1.0
    top = float(g[allowed].max())
    g = g - top if math.isfinite(top) else torch.zeros_like(g)
    return torch.where(allowed, g.clamp_min(-spread), torch.full_like(g, -math.inf))


def plan_error(problem, src, row_max, g, dtype):
    """Marginal error on the whole matrix of the plan with column potentials ``g`` and exact
    row sums, in one read-only pass."""
    K = src.shape[1]
    exponent = exponent_fn(problem.lam, g, dtype)

    def column_sums(lo, hi, block):
        acc = torch.zeros(K, dtype=torch.float64, device=src.device)
        w = torch.empty((min(block, hi - lo), K), dtype=dtype, device=src.device)
        for s in range(lo, hi, block):
            e = min(hi, s + block)
            kernel = w[:e - s]
            exponent(src[s:e], row_max[s:e, None], kernel)
            kernel.clamp_min_(EXP_MIN).exp_()
            kernel /= kernel.sum(1, keepdim=True)
            acc += kernel.sum(0, dtype=torch.float64)
        return acc

    acc = torch.stack(problem.rows.map(column_sums)).sum(0) * problem.r
    if problem.reduce_fn is not None:
        problem.reduce_fn(acc)
    target = problem.log_p.exp()
    allowed = target > 0
    return float(((acc[allowed] - target[allowed]) / target[allowed]).abs().max())


def from_start(problem, src, row_max, dtype, max_iter, start):
    """The whole matrix solved from the potentials ``start``: ``(res, n_iter)``.

    Good potentials (the previous self-label step's) need no annealing: the kernel is built
    at the target lam from them, in a buffer of its own (the warm-up's memory), and rebuilt
    exactly from the scores as they are. A start that puts some column in a dead zone (see
    ``scaling_loop``) stops the error from halving; then epsilon-scaling from scratch takes
    the iterations left, so a bad start costs at most ``STALL_WINDOW`` iterations more
    than none.
    """
    W = torch.empty(src.shape, dtype=dtype, device=src.device)
    a = make_kernel(problem, src, W, start, row_max=row_max)
    res = scaling_loop(problem, W, a, start, max_iter, source=src, source_row_max=row_max,
                       stall_window=STALL_WINDOW)
    if not res.stalled:
        return res, res.n_iter
    done = res.n_iter
    _, res, more = anneal(problem, src, W, max(1, max_iter - done), row_max=row_max)
    return res, done + more
