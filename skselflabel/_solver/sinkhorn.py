"""Sinkhorn-Knopp for the SeLa self-label step: the public solver, its checks and set-up, the
subsample warm-up, and what one solve allocates."""
from dataclasses import dataclass

import numpy as np
import torch

from .._runtime.allocation import memory_call, memory_step, plan
from .._runtime.memory import FLOAT32, FLOAT64, Need
from .._runtime.threads import own_threads
from .checks import (as_tensor, check_iterations, check_lam, check_shape, check_tolerance,
                     log_prior, needs_copy)
from .iterations import Problem, Settle, anneal, finish, make_kernel, scaling_loop
from .rounding import round_to_sizes, rounding_needs, size_bounds
from .row_blocks import RowBlocks, block_rows
from .starts import STALL_WINDOW, from_start, given_potentials, plan_error

__all__ = ["SinkhornResult", "sinkhorn_knopp"]

# Number of kernel entries the subsample warm-up works on (two buffers of this size).
_WARMUP_ELEMENTS = 4_000_000
_WARMUP_ROWS_PER_CLUSTER = 8
# When the full matrix follows, the warm-up only needs potentials that are roughly right.
_WARM_TOL = 1e-2
_WARM_MAX_ITER = 300
# Labels rounded to sizes within a band of +-size_tolerance need marginals only roughly:
# on the full matrix, the solve stops once at most SETTLE_MASS of the mass is off target
# with no column off by more than SETTLE_BAND of its share (or the band, if wider), or in
# a slow tail below SETTLE_SHARE of the band that does not halve its error over
# SETTLE_WINDOW iterations (the user guide's "Many clusters").
SETTLE_MASS, SETTLE_BAND = 0.01, 1.0
SETTLE_SHARE, SETTLE_WINDOW = 0.1, 25
# The float64 and int64 vectors a solve keeps per row (scalings, shifts, maxima, labels).
_BYTES_PER_ROW = 6 * FLOAT64


@dataclass
class SinkhornResult:
    """Outcome of :func:`sinkhorn_knopp`.

    :func:`sinkhorn_knopp` gives numpy arrays; :meth:`SinkhornAssigner.assign_tensor`
    gives torch tensors on the device of the scores.

    Attributes
    ----------
    labels : ndarray of shape (n_samples,), dtype int64
        The hard assignment: ``argmax_k Q_ik``, or with ``size_tolerance`` the argmax
        moved into the allowed cluster sizes.
    log_u : ndarray of shape (n_samples,), dtype float64
        Row log-scalings: ``Q_ik = exp(lam * scores_ik + log_u_i + log_v_k)``.
    log_v : ndarray of shape (n_clusters,), dtype float64
        Column log-scalings (``-inf`` for clusters with zero prior).
    n_iter : int
        Scaling iterations over the full matrix, epsilon-scaling stages on it included; at
        most ``max_iter`` (warm-up iterations on a row subsample are not counted: they cost a
        small fraction of one iteration each).
    marginal_error : float
        Largest relative deviation of a row sum from ``1 / n_total`` or of a column sum from
        ``prior_k`` for the returned scalings.
    converged : bool
        Whether ``marginal_error <= tol``.
    prior : ndarray of shape (n_clusters,), dtype float64
        The column marginal solved for: ``prior`` normalised, or equal sizes.
    n_moved : int
        Labels that ``size_tolerance`` moved off the plan's argmax into the allowed sizes
        (0 without it).
    """

    labels: np.ndarray
    log_u: np.ndarray
    log_v: np.ndarray
    n_iter: int
    marginal_error: float
    converged: bool
    prior: np.ndarray = None
    n_moved: int = 0


def sinkhorn_knopp(scores, *, lam=25.0, prior=None, tol=1e-3, max_iter=1000, copy=True,
                   init_log_v=None, reduce_fn=None, n_total=None, size_tolerance=None):
    r"""Balanced soft assignment of samples to clusters by Sinkhorn-Knopp (SeLa's label step).

    Solves the entropy-regularised optimal transport problem

    .. math::
        \max_{Q \ge 0} \; \langle Q, \mathrm{scores} \rangle + \frac{1}{\lambda} H(Q)
        \quad \text{s.t.} \quad Q \mathbf{1}_K = \tfrac{1}{N} \mathbf{1}_N, \;
        Q^\top \mathbf{1}_N = p,

    with :math:`H(Q) = -\sum_{ik} Q_{ik} \log Q_{ik}`. Its solution has the form

    .. math::
        Q = \mathrm{diag}(u) \, \exp(\lambda \, \mathrm{scores}) \, \mathrm{diag}(v),

    and Sinkhorn-Knopp finds the scalings by alternating

    .. math::
        u \leftarrow \frac{1/N}{\exp(\lambda \, \mathrm{scores}) \, v}, \qquad
        v \leftarrow \frac{p}{\exp(\lambda \, \mathrm{scores})^\top u}.

    The hard label of sample :math:`i` is :math:`\arg\max_k Q_{ik} = \arg\max_k
    \lambda \, \mathrm{scores}_{ik} + \log v_k`. Adding a constant to a row of ``scores``
    changes only :math:`u_i`, so logits and log-probabilities give the same labels.

    Unlike the float64 loop of the SeLa reference code, this works in float32 for any finite
    input: the kernel is kept with its row maxima at 1 and the scalings absorbed into it
    whenever they grow (no row can vanish, nothing overflows), the column potentials are
    first estimated on a row subsample with :math:`\lambda` annealed up to its target
    (epsilon-scaling), and each iteration reads the matrix once: on CPU a compiled kernel
    updates each row's scaling and adds the row to the column sums while the row is in
    cache (a pure-torch fallback visits cache-sized row blocks; it gives the same results,
    more slowly: the benchmarks page compares them).

    Parameters
    ----------
    scores : ndarray or torch.Tensor of shape (n_samples, n_clusters)
        Logits or log-probabilities; higher means a better fit. float32 and float64 are
        worked on in their own precision; other dtypes (float16, bfloat16, integers) are
        converted to float32 block by block. Torch tensors stay on their device.
    lam : float, default=25.0
        Inverse entropic regularisation :math:`\lambda` (SeLa uses 25 on ImageNet, 10 on
        CIFAR). Larger values give harder assignments and slower convergence.
    prior : array-like of shape (n_clusters,), default=None
        Relative cluster sizes :math:`p`, normalised to sum 1; uniform when None. Clusters
        with a zero prior get no samples (their ``log_v`` is ``-inf``).
    tol : float, default=1e-3
        Stop once the largest relative error of a row or column sum is at most ``tol``.
    max_iter : int, default=1000
        Maximum number of scaling iterations over the full matrix; a
        :class:`~sklearn.exceptions.ConvergenceWarning` is raised when it is reached.
    copy : bool, default=True
        If False and ``scores`` is a contiguous float32 or float64 array or tensor, it is
        overwritten with the kernel and no other n_samples x n_clusters buffer is allocated
        (only blocks). Use this at ImageNet scale: 1.28 million x 3,000 float32 logits
        (15.4 GB) are solved within their own memory.
    init_log_v : array-like or torch.Tensor of shape (n_clusters,), default=None
        Column log-scalings to start from, such as ``log_v`` of the previous self-label
        step: the warm-up on a row subsample (or on the whole matrix, when it is small)
        starts from them at ``lam`` instead of annealing ``lam`` up from a small value,
        and anneals after all if the error then stops halving over 50 iterations. A larger
        matrix starts from the given potentials or the subsample's solution, whichever has
        the smaller marginal error on it. Only the starting point changes: the solve still
        stops at ``tol``.
    reduce_fn : callable, default=None
        Seam for data-parallel use, with the rows of ``scores`` split across processes:
        ``reduce_fn(t)`` must sum the float64 tensor ``t`` (column sums) over all processes
        in place, e.g. ``torch.distributed.all_reduce``. Every process calls
        ``sinkhorn_knopp`` with its own rows and the same ``n_total``; each gets the labels
        and ``log_u`` of its rows and the same ``log_v``.
    n_total : int, default=None
        Number of rows over all processes (row mass ``1 / n_total``); defaults to
        ``n_samples``.
    size_tolerance : float >= 0 or None, default=None
        None: the hard ``labels`` are the plan's row-wise argmax, whose cluster sizes match
        ``prior`` only while the plan is nearly deterministic. A number: every cluster
        gets between ``(1 - size_tolerance)`` and ``(1 + size_tolerance)`` times its share
        ``n_samples * prior_k``, moving as few samples off their argmax as needed, chosen
        by the plan's confidence :math:`Q_{ik} / \sum_j Q_{ij}` (0: exactly the shares,
        rounded; 1 or more: no lower bound). On a matrix larger than the warm-up
        subsample, the solve also ends early once the plan is good enough for that
        rounding: at most 1% of the mass off target, with no column sum off by more than
        its share (or ``size_tolerance`` times it, if larger), or a marginal error of at
        most ``size_tolerance / 10`` that has not halved over 25 iterations. The labels
        are then rounded there (``converged`` is False, without a warning). Not
        available with ``reduce_fn``.

    Returns
    -------
    result : SinkhornResult
        ``labels`` (int64), ``log_u`` and ``log_v`` (float64) with
        :math:`Q_{ik} = \exp(\lambda \, \mathrm{scores}_{ik} + \log u_i + \log v_k)` for the
        scores as given, ``n_iter``, ``marginal_error`` and ``converged``.

    Raises
    ------
    ValueError
        If ``scores`` is not 2-D, has an empty axis or holds NaN or inf, if ``lam <= 0``, or
        if ``prior`` has the wrong length, a negative entry or a zero sum.

    See Also
    --------
    SinkhornAssigner : Transformer that fits the cluster scalings and applies them to new rows.

    Notes
    -----
    Sinkhorn converges linearly, and slowly when :math:`\lambda` times the score gaps is
    large. The hardest inputs are exact ties: rows that are identical copies (say one-hot
    logits with a gap of 50) in groups of unequal size, where a cluster whose potential
    starts on the wrong side of a gap must climb by about :math:`\lambda \times
    \mathrm{gap}` before it gains any mass, creeping by ``log(1 + error)`` per iteration
    while its error sits on a plateau of a whole number of rows' mass. A cluster whose
    error keeps its sign without shrinking gets its update doubled until it responds, and
    once such a plateau was seen the solve ends only below ``0.9 * tol`` (a plateau can sit
    just under ``tol``: one row is 1% of a cluster of 100 rows). If the error still stops
    halving over 50 iterations on the full matrix, the solver anneals :math:`\lambda` on
    the full matrix (``copy=True`` only: it rebuilds the kernel from the scores). The
    "Errors and limits" page gives the iterations such scores take.

    On CPU the rows are split over ``torch.get_num_threads()`` Python threads, each of which
    (and the calling thread, for the length of the call) runs torch operations on one
    thread; the torch thread settings of other threads are never changed.

    With ``copy=False`` the kernel is built once in place; kernel entries below
    ``exp(-87)`` of their row's largest are stored as zeros. If the column potentials later
    move by more than 47 relative to each other, those entries might matter and a
    ``RuntimeWarning`` says so (``copy=True`` rebuilds the kernel from the scores instead).

    References
    ----------
    .. [1] Y. M. Asano, C. Rupprecht, A. Vedaldi. "Self-labelling via simultaneous clustering
       and representation learning", ICLR 2020.
    .. [2] M. Cuturi. "Sinkhorn distances: lightspeed computation of optimal transport",
       NeurIPS 2013.
    .. [3] B. Schmitzer. "Stabilized sparse scaling algorithms for entropy regularized
       transport problems", SIAM J. Sci. Comput. 2019.

    Examples
    --------
    >>> import numpy as np
    >>> from skselflabel import sinkhorn_knopp
    >>> rng = np.random.default_rng(0)
    >>> logits = rng.normal(size=(600, 3)).astype(np.float32)
    >>> logits[:, 0] += 2.0                      # nearly everyone prefers cluster 0
    >>> np.bincount(logits.argmax(1), minlength=3)
    array([507,  47,  46])
    >>> res = sinkhorn_knopp(logits, lam=10.0)
    >>> np.bincount(res.labels, minlength=3)     # balanced labels
    array([201, 198, 201])
    >>> res.converged, res.marginal_error <= 1e-3
    (True, True)
    >>> res = sinkhorn_knopp(logits, lam=10.0, prior=[2, 1, 1])
    >>> np.bincount(res.labels, minlength=3)
    array([302, 143, 155])
    """
    res = solve(scores, SolverSettings(lam=lam, prior=prior, tol=tol, max_iter=max_iter,
                                       copy=copy, init_log_v=init_log_v, reduce_fn=reduce_fn,
                                       n_total=n_total, size_tolerance=size_tolerance))
    res.labels, res.log_u, res.log_v, res.prior = (
        t.cpu().numpy() for t in (res.labels, res.log_u, res.log_v, res.prior))
    return res


@dataclass(frozen=True)
class SolverSettings:
    """The parameters of :func:`sinkhorn_knopp` but the scores (its defaults too)."""

    lam: float = 25.0
    prior: object = None
    tol: float = 1e-3
    max_iter: int = 1000
    copy: bool = True
    init_log_v: object = None
    reduce_fn: object = None
    n_total: int = None
    size_tolerance: float = None


def solve(scores, settings=SolverSettings()):
    """:func:`sinkhorn_knopp` with its arrays as tensors on the device of ``scores``.

    The tensor-level entry point for callers that stay on the device (the self-label step,
    :meth:`SinkhornAssigner.assign_tensor`): labels are never copied to the host.
    Returns a :class:`SinkhornResult` whose ``labels``, ``log_u`` and ``log_v`` are tensors.
    """
    with memory_call("sinkhorn_knopp"):
        return _solve(scores, settings)


def _solve(scores, settings):
    lam = check_lam(settings.lam)
    size_tolerance = check_tolerance(settings.size_tolerance)
    if size_tolerance is not None and settings.reduce_fn is not None:
        raise ValueError("size_tolerance needs all rows in one process; leave it None "
                         "with reduce_fn.")
    max_iter, tol = check_iterations(settings.max_iter, settings.tol)
    src, writeable = as_tensor(scores)
    n_total = check_shape(src, settings.n_total)
    N, K = src.shape
    device = src.device
    log_p = log_prior(settings.prior, K, device)
    dtype = src.dtype if src.dtype in (torch.float32, torch.float64) else torch.float32
    copy = needs_copy(src, settings.copy, writeable, dtype)
    itemsize = torch.finfo(dtype).bits // 8
    needs = solver_needs(N, K, itemsize, copies=copy)
    plan([needs], device, "sinkhorn_knopp")
    # Our row-block workers, and this thread, run torch ops one thread each (see RowBlocks).
    with torch.no_grad(), own_threads(1 if device.type == "cpu" else None) as n_threads:
        rows = RowBlocks(N, block_rows(K, itemsize, device), device, n_threads)
        problem = Problem(lam=lam, log_p=log_p, r=1.0 / n_total, tol=tol, rows=rows,
                          reduce_fn=settings.reduce_fn)
        try:
            with memory_step("the Sinkhorn-Knopp iterations", needs):
                settle = (None if size_tolerance is None
                          else Settle(band=max(SETTLE_BAND, size_tolerance),
                                      mass=SETTLE_MASS,
                                      level=SETTLE_SHARE * size_tolerance,
                                      window=SETTLE_WINDOW))
                res, row_max = _solve_blocks(problem, src, max_iter, copy,
                                             settings.init_log_v, dtype, settle)
                sol = finish(problem, res, row_max, max_iter,
                             check_ties=size_tolerance is None)
            n_moved = 0
            if size_tolerance is not None:
                with memory_step("rounding to cluster sizes", rounding_needs(N)):
                    argmax = sol.labels.clone()
                    sol.labels = round_to_sizes(
                        res.W, res.log_v.exp().to(res.W.dtype), sol.labels,
                        size_bounds(log_p.exp(), N, size_tolerance), rows)
                    n_moved = int((sol.labels != argmax).sum())
        finally:
            rows.close()
    return SinkhornResult(labels=sol.labels, log_u=sol.log_u, log_v=sol.log_v,
                          n_iter=sol.n_iter, marginal_error=sol.marginal_error,
                          converged=sol.converged, prior=log_p.exp(), n_moved=n_moved)


def warmup_rows(n, k):
    """Rows of the subsample the warm-up solves on (all ``n`` when the matrix is small)."""
    return max(1, min(n, max(_WARMUP_ELEMENTS // k, _WARMUP_ROWS_PER_CLUSTER * k)))


def solver_needs(n, k, itemsize=FLOAT32, copies=False):
    """What one solve on ``n`` x ``k`` scores of ``itemsize`` bytes allocates: the warm-up's
    two subsample buffers, the row vectors, and a kernel buffer unless the scores are
    overwritten in place (a whole-matrix warm-up already is that buffer)."""
    n_sub = warmup_rows(n, k)
    needs = [Need("solver warm-up", 2 * n_sub * k * itemsize, "n_clusters"),
             Need("solver row vectors", n * _BYTES_PER_ROW, "n_samples")]
    if copies and n_sub < n:
        needs.append(Need("solver kernel (a copy of the scores)", n * k * itemsize,
                          "copy=False on writable float32 scores"))
    return needs


# ---------------------------------------------------------------------------- solver
def _row_maxima(src, rows, dtype):
    """Row maxima (float64) and the largest row range, in a read-only pass, or a ValueError
    naming NaN/inf entries.

    Read only, so bad input leaves the caller's array untouched. The NaN/inf flag comes
    from the row extremes (both propagate NaN); the bad entries are counted only on error.
    """
    N, device = src.shape[0], src.device
    row_max = torch.empty(N, dtype=torch.float64, device=device)

    def extremes(lo, hi, block):
        ok = torch.ones((), dtype=torch.bool, device=device)
        span = torch.zeros((), dtype=torch.float64, device=device)
        for s in range(lo, hi, block):
            b = src[s:min(hi, s + block)].to(dtype)
            mx, mn = b.amax(1), b.amin(1)
            ok &= torch.isfinite(mx).all() & torch.isfinite(mn).all()
            span = torch.maximum(span, (mx.double() - mn.double()).max())
            row_max[s:s + mx.shape[0]] = mx
        return ok, span

    found = rows.map(extremes)
    if not all(bool(ok) for ok, _ in found):
        n_bad = sum(int((~torch.isfinite(src[lo:lo + rows.block])).sum())
                    for lo in range(0, N, rows.block))
        raise ValueError(f"scores contains {n_bad} NaN or inf values; remove or replace them "
                         "(e.g. with numpy.nan_to_num) before solving.")
    return row_max, max(float(span) for _, span in found)


def _subsample_is_whole(problem, N, n_sub):
    whole = n_sub == N
    if problem.reduce_fn is not None:
        # Every process must take the same path (the reductions must pair up), so the
        # subsample is the whole matrix only if it is so in every process.
        flag = torch.tensor([0.0 if whole else 1.0], dtype=torch.float64,
                            device=problem.log_p.device)
        problem.reduce_fn(flag)
        whole = bool(flag[0] == 0)
    return whole


def _warm_up(problem, src, row_max, dtype, max_iter, start=None):
    """Column potentials from a row subsample, by epsilon-scaling or from the caller's
    potentials ``start`` at the target lam.

    At least ``_WARMUP_ROWS_PER_CLUSTER`` rows per cluster, so every potential is
    estimated; there the kernel can be rebuilt exactly whenever it is needed. Returns
    ``(g, None)``, or ``(None, (res, n_iter))`` when the subsample was the whole matrix
    and its solution is the answer (from ``start`` at the target lam, when given: see
    :func:`~.starts.from_start`).
    """
    N, K = src.shape
    n_sub = warmup_rows(N, K)
    whole = _subsample_is_whole(problem, N, n_sub)
    if start is not None and whole:
        return None, from_start(problem, src, row_max, dtype, max_iter, start)
    idx = None if whole else torch.linspace(0, N - 1, n_sub, device=src.device).round().long()
    sub = src if whole else src.index_select(0, idx)
    sub = sub.to(dtype) - (row_max if whole else row_max[idx])[:, None].to(dtype)
    rows = problem.rows if whole else RowBlocks(n_sub, problem.rows.block, src.device,
                                                problem.rows.n_workers)
    # Each subsample row stands for N / n_sub rows of this process.
    at = problem if whole else problem.stage(rows=rows, r=(N / n_sub) * problem.r,
                                             tol=max(problem.tol, _WARM_TOL))
    budget = max_iter if whole else min(max_iter, _WARM_MAX_ITER)
    try:
        if start is None:
            g, res, n_iter = anneal(at, sub, torch.empty_like(sub), budget)
        else:
            # The caller's start seeds the subsample, never the full kernel directly: a start
            # far from this matrix's solution (scores that changed a lot since) would leave
            # columns in a dead zone of an in-place kernel, which cannot be rebuilt.
            res, n_iter = from_start(at, sub, None, dtype, budget, start)
            g = res.g + res.log_v
    finally:
        if not whole:
            rows.close()
    if whole:
        return None, (res, n_iter)
    # The whole matrix is solved in place, where a column that starts far from its solution
    # cannot be rebuilt: start from the subsample's potentials unless the caller's fit
    # this matrix better (the previous step's do, unless the scores changed a lot since).
    if start is not None and (plan_error(problem, src, row_max, start, dtype)
                              < plan_error(problem, src, row_max, g, dtype)):
        g = start
    return g, None


def _solve_blocks(problem, src, max_iter, copy, init_log_v, dtype, settle=None):
    N, K = src.shape
    row_max, span = _row_maxima(src, problem.rows, dtype)
    # Column potentials g (float64) from a row subsample, starting from the caller's.
    start = None if init_log_v is None else given_potentials(init_log_v, problem, span)
    g, whole = _warm_up(problem, src, row_max, dtype, max_iter, start)
    if whole is not None:
        res, n_iter = whole
        res.n_iter = n_iter
        return res, row_max

    # The full matrix becomes its stabilised kernel: in place when allowed.
    in_place = not copy
    W = src if in_place else torch.empty((N, K), dtype=dtype, device=src.device)
    a = make_kernel(problem, src, W, g, row_max=row_max)
    # With a separate kernel buffer the scores are still there for exact rebuilds.
    res = scaling_loop(problem.stage(settle=settle), W, a, g, max_iter,
                       source=None if in_place else src,
                       source_row_max=None if in_place else row_max,
                       stall_window=None if in_place else STALL_WINDOW)
    if res.stalled:
        # The subsample's potentials left some cluster in a dead zone (its rows are not the
        # subsample's; see scaling_loop): anneal lam on the full matrix instead.
        done = res.n_iter
        _, res, more = anneal(problem, src, W, max_iter - done, row_max=row_max)
        res.n_iter = done + more
    return res, row_max
