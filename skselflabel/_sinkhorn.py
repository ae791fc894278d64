"""Sinkhorn-Knopp solver for the SeLa self-labelling step, safe and fast in float32.

The problem is an entropy-regularised optimal transport between the N samples (each with
mass 1/N) and the K clusters (mass ``prior_k``). Two things make the textbook loop unfit:
``exp(lam * scores)`` under- and overflows float32 for confident networks, and the loop reads
the N x K matrix twice per iteration. This module

* keeps the kernel in a *stabilised* form ``W_ik = exp(lam * (z_ik - max_j z_ij) + g_k - a_i)``
  whose row maxima are exactly 1, with the column potential ``g`` absorbed into it, so no row
  can vanish and nothing can overflow (Schmitzer's absorption);
* finds ``g`` first on a small row subsample with epsilon-scaling (``lam`` doubled from a
  gentle start up to its target, the potentials warm-started at every stage), where the
  kernel can be rebuilt exactly from the scores whenever the scalings grow; the full matrix
  is then turned into its kernel once, in place, and only the kernel entries that are
  negligible under nearly right potentials underflow;
* runs the scaling iterations over row blocks that stay in cache: a block's row scalings are
  updated and its contribution to the column sums accumulated in the same visit, so the matrix
  is read once per iteration, and the error of the current plan comes for free from those
  column sums.
"""
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
import math
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

try:    # the optional compiled sweep (setup.py); the pure-torch sweep gives the same results
    from . import _fused
except ImportError:
    _fused = None

__all__ = ["SinkhornResult", "sinkhorn_knopp"]

# Scalings are re-absorbed into the kernel once a log-scaling leaves [-_ABSORB, _ABSORB]:
# far inside float32's exp range (about +-87), so products of kernel entries, scalings and
# up to millions of summands stay finite.
_ABSORB = 30.0
# Between absorption checks a log-scaling is kept within [-_CLAMP, _CLAMP] (same reason).
_CLAMP = 60.0
# Kernel entries below exp(-87) (float32's smallest normal number is about exp(-87.3)) are
# stored as exact zeros: they carry no mass next to their row's maximum of 1.
_EXP_MIN = -87.0
_ZERO_BELOW = 2.0 * math.exp(_EXP_MIN)
# In place, entries dropped when the kernel was built stay negligible (below exp(-40) of their
# row's largest) while the potentials drift by less than 87 - 40.
_SAFE_DRIFT = 47.0
# Number of kernel entries the subsample warm-up works on (two buffers of this size).
_WARMUP_ELEMENTS = 4_000_000
_WARMUP_ROWS_PER_CLUSTER = 8
# CPU: row ranges per worker thread (see _Rows).
_RANGES_PER_WORKER = 4
# Bytes of one row block of the fused sweep: it should sit in a core's L2 cache.
_BLOCK_BYTES = 1 << 20
# At each epsilon-scaling stage below the target lam, iterate until this marginal error.
_STAGE_TOL = 1e-2
_STAGE_MAX_ITER = 200
# When the full matrix follows, the warm-up only needs potentials that are roughly right.
_WARM_TOL = 1e-2
_WARM_MAX_ITER = 300
# On the full matrix, an error that has not halved in this many iterations means a stall
# (see _scaling_loop); then lam is annealed on the full matrix.
_STALL_WINDOW = 50
# Over-relaxation of the column update (1 = plain Sinkhorn). Values in (1, 2) converge to
# the same fixed point in fewer iterations.
_OMEGA = 1.8


@dataclass
class SinkhornResult:
    """Outcome of :func:`sinkhorn_knopp`.

    Attributes
    ----------
    labels : ndarray of shape (n_samples,), dtype int64
        ``argmax_k Q_ik``, the balanced hard assignment.
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
    """

    labels: np.ndarray
    log_u: np.ndarray
    log_v: np.ndarray
    n_iter: int
    marginal_error: float
    converged: bool


def sinkhorn_knopp(scores, *, lam=25.0, prior=None, tol=1e-3, max_iter=1000, copy=True,
                   init_log_v=None, reduce_fn=None, n_total=None):
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
    about twice as slowly).

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
    init_log_v : array-like of shape (n_clusters,), default=None
        Column log-scalings to start from, such as ``log_v`` of the previous self-label
        step; they replace the subsample warm-up.
    reduce_fn : callable, default=None
        Seam for data-parallel use, with the rows of ``scores`` split across processes:
        ``reduce_fn(t)`` must sum the float64 tensor ``t`` (column sums) over all processes
        in place, e.g. ``torch.distributed.all_reduce``. Every process calls
        ``sinkhorn_knopp`` with its own rows and the same ``n_total``; each gets the labels
        and ``log_u`` of its rows and the same ``log_v``.
    n_total : int, default=None
        Number of rows over all processes (row mass ``1 / n_total``); defaults to
        ``n_samples``.

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
    \mathrm{gap}` before it gains any mass, creeping by ``log(1 + error)`` per iteration.
    When the error stops halving over 50 iterations on the full matrix, the solver anneals
    :math:`\lambda` on the full matrix (``copy=True`` only: it rebuilds the kernel from the
    scores), which fixes such inputs: 100,000 x 100 tied one-hot scores reach 1e-2 in about
    1,000 iterations at :math:`\lambda` = 25 and 100. With about 30 rows per cluster and
    many clusters nobody prefers (30,000 x 1,000 at :math:`\lambda = 100`) it still stalls
    at an error of one row's mass (0.033). Any noise in the scores removes the plateaus.

    On CPU the rows are split over ``torch.get_num_threads()`` Python threads, and torch's
    intra-op thread count is set to 1 for the duration of the call (then restored).

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
    lam = _check_lam(lam)
    if not (isinstance(max_iter, (int, np.integer)) and max_iter >= 1):
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}.")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}.")
    src, writeable = _as_tensor(scores)
    with torch.no_grad(), _single_threaded_ops(src.device) as n_threads:
        return _solve(src, lam=lam, prior=prior, tol=float(tol), max_iter=int(max_iter),
                      copy=copy or not writeable, init_log_v=init_log_v, reduce_fn=reduce_fn,
                      n_total=n_total, n_threads=n_threads)


# ---------------------------------------------------------------------------- validation
def _check_lam(lam):
    try:
        lam = float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"lam must be a positive number, got {lam!r}.") from None
    if not (lam > 0 and math.isfinite(lam)):
        raise ValueError(f"lam must be a positive finite number, got {lam!r}.")
    return lam


def _as_tensor(scores):
    """(tensor sharing memory with ``scores`` where possible, whether it may be written)."""
    if isinstance(scores, torch.Tensor):
        return scores.detach(), True
    arr = np.asarray(scores)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                   or arr.dtype == np.bool_):
        raise ValueError(f"scores must hold real numbers, got dtype {arr.dtype}.")
    if np.iscomplexobj(arr):
        raise ValueError("scores must hold real numbers, got complex values.")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.flags.writeable:
        return torch.from_numpy(arr), True
    with warnings.catch_warnings():
        # Read-only memory is only ever read here (copy=False then falls back to a copy).
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr), False


def _check_prior(prior, K, device):
    if prior is None:
        return torch.full((K,), 1.0 / K, dtype=torch.float64, device=device)
    p = torch.as_tensor(np.asarray(prior, dtype=np.float64) if not isinstance(prior, torch.Tensor)
                        else prior.detach().to("cpu", torch.float64))
    if p.ndim != 1 or p.shape[0] != K:
        raise ValueError(f"prior must be a vector of length n_clusters={K}, got shape "
                         f"{tuple(p.shape)}.")
    if not torch.isfinite(p).all():
        raise ValueError("prior must be finite.")
    if (p < 0).any():
        raise ValueError(f"prior must be non-negative; it has {int((p < 0).sum())} negative "
                         "entries.")
    if p.sum() <= 0:
        raise ValueError("prior must have a positive sum; it is all zeros.")
    return (p / p.sum()).to(device)


def _block_rows(K, itemsize, device):
    # GPUs want few, large launches; CPUs want blocks that stay in a core's L2 cache.
    budget = _BLOCK_BYTES if device.type == "cpu" else 256 * _BLOCK_BYTES
    return max(8, budget // max(1, K * itemsize))


def _use_fused(W):
    """Whether the compiled single-read sweep (``_fused.c``) can run on the kernel ``W``."""
    return (_fused is not None and W.device.type == "cpu" and W.dtype == torch.float32
            and W.is_contiguous())


# ---------------------------------------------------------------------------- row blocks
class _Rows:
    """Visits the rows of an N-row matrix in cache-sized blocks.

    On CPU, each of ``torch.get_num_threads()`` Python threads takes one contiguous range of
    rows, and torch's own intra-op threads are set to 1 for the duration of the solve: the
    per-block ops are small, and an OpenMP barrier per op costs more than the op when the
    cores are shared. On other devices the blocks are visited in order (each op is one kernel
    launch, asynchronous).
    """

    def __init__(self, N, block, device, n_workers):
        self.N, self.block = N, block
        n_blocks = -(-N // block)
        self.n_workers = max(1, min(n_workers, n_blocks)) if device.type == "cpu" else 1
        # A few ranges per worker, handed out as workers free up, so that a core slowed by
        # other processes does not hold up the whole sweep.
        n_ranges = min(n_blocks, self.n_workers * _RANGES_PER_WORKER)
        per = -(-n_blocks // n_ranges) * block
        self.ranges = [(lo, min(N, lo + per)) for lo in range(0, N, per)]
        self._pool = (ThreadPoolExecutor(self.n_workers) if self.n_workers > 1 else None)

    def map(self, fn):
        """``[fn(lo, hi, block) for each range]``, the ranges spread over the workers."""
        if self._pool is None:
            return [fn(lo, hi, self.block) for lo, hi in self.ranges]
        return list(self._pool.map(lambda r: fn(r[0], r[1], self.block), self.ranges))

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()


@contextmanager
def _single_threaded_ops(device):
    """Set torch's intra-op threads to 1 on CPU (see _Rows); yields the previous count."""
    n = torch.get_num_threads()
    if device.type != "cpu" or n == 1:
        yield n
        return
    torch.set_num_threads(1)
    try:
        yield n
    finally:
        torch.set_num_threads(n)


# ---------------------------------------------------------------------------- solver
def _solve(src, *, lam, prior, tol, max_iter, copy, init_log_v, reduce_fn, n_total, n_threads):
    if src.ndim != 2:
        raise ValueError(f"scores must be 2-D (n_samples, n_clusters), got ndim={src.ndim}.")
    N, K = src.shape
    if N == 0 or K == 0:
        raise ValueError(f"scores has an empty axis: shape {tuple(src.shape)}; it needs at "
                         "least one sample and one cluster.")
    device = src.device
    n_total = N if n_total is None else int(n_total)
    if n_total < N:
        raise ValueError(f"n_total={n_total} is smaller than the number of rows {N}.")
    p = _check_prior(prior, K, device)
    dtype = src.dtype if src.dtype in (torch.float32, torch.float64) else torch.float32
    block = _block_rows(K, torch.finfo(dtype).bits // 8, device)
    rows = _Rows(N, block, device, n_threads)
    try:
        return _solve_blocks(src, rows, lam, p, tol, max_iter, copy, init_log_v, reduce_fn,
                             n_total, dtype)
    finally:
        rows.close()


def _solve_blocks(src, rows, lam, p, tol, max_iter, copy, init_log_v, reduce_fn, n_total,
                  dtype):
    N, K = src.shape
    device = src.device

    # Pass 1 (read only, so bad input leaves the caller's array untouched): row maxima, and
    # a NaN/inf flag from the row extremes (both propagate NaN); counted only on error.
    row_max = torch.empty(N, dtype=torch.float64, device=device)

    def extremes(lo, hi, block):
        ok = torch.ones((), dtype=torch.bool, device=device)
        for s in range(lo, hi, block):
            b = src[s:min(hi, s + block)].to(dtype)
            mx = b.amax(1)
            ok &= torch.isfinite(mx).all() & torch.isfinite(b.amin(1)).all()
            row_max[s:s + mx.shape[0]] = mx
        return ok

    if not all(bool(ok) for ok in rows.map(extremes)):
        n_bad = sum(int((~torch.isfinite(src[lo:lo + rows.block])).sum())
                    for lo in range(0, N, rows.block))
        raise ValueError(f"scores contains {n_bad} NaN or inf values; remove or replace them "
                         "(e.g. with numpy.nan_to_num) before solving.")

    allowed = p > 0
    log_p = torch.where(allowed, p.log(), torch.full_like(p, -math.inf))
    r_full = 1.0 / n_total

    # Column potentials g (float64): from the caller, or from a row subsample with
    # epsilon-scaling, where the kernel can be rebuilt exactly whenever it is needed.
    # At least _WARMUP_ROWS_PER_CLUSTER rows per cluster, so every potential is estimated.
    n_sub = max(1, min(N, max(_WARMUP_ELEMENTS // K, _WARMUP_ROWS_PER_CLUSTER * K)))
    if init_log_v is not None:
        g = torch.as_tensor(np.asarray(init_log_v, dtype=np.float64)).to(device)
        if g.shape != (K,):
            raise ValueError(f"init_log_v must have length n_clusters={K}, got shape "
                             f"{tuple(g.shape)}.")
        g = torch.where(allowed, torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0),
                        torch.full_like(g, -math.inf))
    else:
        whole = n_sub == N
        if reduce_fn is not None:
            # Every process must take the same path (the reductions must pair up), so the
            # subsample is the whole matrix only if it is so in every process.
            flag = torch.tensor([0.0 if whole else 1.0], dtype=torch.float64, device=device)
            reduce_fn(flag)
            whole = bool(flag[0] == 0)
        idx = None if whole else torch.linspace(0, N - 1, n_sub, device=device).round().long()
        sub = src if whole else src.index_select(0, idx)
        sub = sub.to(dtype) - (row_max if whole else row_max[idx])[:, None].to(dtype)
        sub_rows = rows if whole else _Rows(n_sub, rows.block, device, rows.n_workers)
        try:
            # Each subsample row stands for N / n_sub rows of this process.
            g, sub_res, sub_iter = _anneal(sub, torch.empty_like(sub), sub_rows, lam, log_p,
                                    (N / n_sub) * r_full,
                                    tol if whole else max(tol, _WARM_TOL),
                                    max_iter if whole else min(max_iter, _WARM_MAX_ITER),
                                    reduce_fn)
        finally:
            if not whole:
                sub_rows.close()
        if whole:
            # The subsample was the whole matrix: its solution is the answer.
            sub_res.n_iter = sub_iter
            return _finish(sub_res, rows, row_max, lam, max_iter, tol)
        del sub, sub_res

    # The full matrix becomes its stabilised kernel: in place when allowed.
    in_place = not copy and src.dtype == dtype and src.is_contiguous()
    W = src if in_place else torch.empty((N, K), dtype=dtype, device=device)
    a = _make_kernel(src, W, rows, lam, g, row_max=row_max)
    # With a separate kernel buffer the scores are still there for exact rebuilds.
    res = _scaling_loop(W, rows, a, g, lam, log_p, r_full, tol, max_iter, reduce_fn,
                        source=None if in_place else src,
                        source_row_max=None if in_place else row_max,
                        stall_window=None if in_place else _STALL_WINDOW)
    if res.stalled:
        # The subsample's potentials left some cluster in a dead zone (its rows are not the
        # subsample's; see _scaling_loop): anneal lam on the full matrix instead.
        done = res.n_iter
        _, res, more = _anneal(src, W, rows, lam, log_p, r_full, tol, max_iter - done,
                               reduce_fn, row_max=row_max)
        res.n_iter = done + more
    return _finish(res, rows, row_max, lam, max_iter, tol)


def _make_kernel(D, W, rows, lam, g, row_max=None):
    """W = exp(lam * (D - row_max) + g - a) with a_i the row maximum of the exponent.

    ``D`` may be the scores themselves (``row_max`` given) and ``W`` may be ``D``: every
    block is read before it is written. Returns ``a`` (float64) with ``row_max`` folded out.
    """
    a = torch.empty(D.shape[0], dtype=torch.float64, device=D.device)
    gw = g.to(W.dtype)

    def build(lo, hi, block):
        for s in range(lo, hi, block):
            e = min(hi, s + block)
            w, d = W[s:e], D[s:e]
            if row_max is not None:
                d = d.to(W.dtype) - row_max[s:e, None].to(W.dtype)
            torch.add(gw, d, alpha=lam, out=w)
            m = w.amax(1, keepdim=True)
            w -= m
            # exp of arguments below float32's normal range is ~15x slower and gives
            # denormals: clamp, then flush the floor to an exact zero.
            w.clamp_min_(_EXP_MIN).exp_()
            torch.nn.functional.threshold_(w, _ZERO_BELOW, 0.0)
            a[s:e] = m.squeeze(1)

    rows.map(build)
    return a


def _absorb_in_place(W, rows, a, log_v):
    """Multiply the column scalings into W and renormalise its rows to max 1 (in place).

    Entries that underflow are lost; they are below exp(-87) of their row's largest entry
    under potentials that are nearly right, so they carry no mass worth keeping.
    """
    v = log_v.exp().to(W.dtype)
    a = a.clone()

    def absorb(lo, hi, block):
        for s in range(lo, hi, block):
            e = min(hi, s + block)
            w = W[s:e]
            w *= v
            m = w.amax(1, keepdim=True)
            w /= m
            a[s:e] += m.squeeze(1).to(torch.float64).log()

    rows.map(absorb)
    return a


@dataclass
class _LoopResult:
    W: torch.Tensor
    u: torch.Tensor           # row scalings of the returned plan (float64)
    a: torch.Tensor           # row shifts of the kernel
    g: torch.Tensor           # column potentials absorbed in the kernel
    log_v: torch.Tensor       # column log-scalings of the returned plan, relative to g
    n_iter: int
    error: float
    drift: float = 0.0        # bound on relative potential changes since W was built
    stalled: bool = False     # stopped early: the error stopped falling (see _scaling_loop)


def _scaling_loop(W, rows, a, g, lam, log_p, r, tol, max_iter, reduce_fn, source,
                  source_row_max=None, stall_window=None):
    """Fused Sinkhorn sweeps over the stabilised kernel W (modified in place on absorption).

    One sweep visits each row block once: ``u_b = r / (W_b v)`` (so every row sum of the
    plan ``(u, v)`` is exact), then ``acc += W_b^T u_b``; after the sweep the column sums of
    that plan are ``v * acc``, which gives its marginal error without another pass, and the
    column update is ``v <- p / acc`` (over-relaxed in the log domain). ``source`` (the
    scores, shifted by ``source_row_max``) lets the kernel be rebuilt exactly on
    absorption; without it the scalings are multiplied into W, entries that underflow are
    dropped, and the drift of the potentials since the kernel was built is tracked: while
    it stays below ``_SAFE_DRIFT`` the dropped entries are still below exp(-40) of their
    row's largest.

    With ``stall_window``, the loop also stops (``stalled=True``) when the error has not
    halved over that many iterations. That happens when the potentials it started from put
    some column in a "dead zone": the rows that should move to it have kernel entries of
    about ``exp(-lam * gap)`` there, so its sum barely responds to its scaling, and plain
    iterations creep towards the solution by ``log(1 + error)`` per iteration (thousands of
    iterations for tied one-hot scores). The caller then anneals ``lam`` instead.
    """
    built = [g.clone()]               # potentials at which W was built or last absorbed
    N, K = W.shape
    device = W.device
    log_v = torch.zeros(K, dtype=torch.float64, device=device)
    log_v[~torch.isfinite(g)] = -math.inf
    u = torch.empty(N, dtype=W.dtype, device=device)
    target = log_p.exp()
    allowed = target > 0
    safe_target = torch.where(allowed, target, torch.ones_like(target))
    check_every = 1 if device.type == "cpu" else 10
    fused = _use_fused(W)
    err = best = math.inf
    omega = _OMEGA
    it = 0
    window_err = math.inf             # error at the start of the current stall window
    stalled = False
    while True:
        v = log_v.exp().to(W.dtype)

        if fused:
            def sweep(lo, hi, block):
                acc = torch.zeros(K, dtype=torch.float64)
                _fused.sweep(W.data_ptr(), K, lo, hi, v.data_ptr(), r, u.data_ptr(),
                             acc.data_ptr())
                return acc
        else:
            def sweep(lo, hi, block):
                acc = torch.zeros(K, dtype=torch.float64, device=device)
                for s in range(lo, hi, block):
                    e = min(hi, s + block)
                    w, ub = W[s:e], u[s:e]
                    torch.mv(w, v, out=ub)
                    torch.div(r, ub, out=ub)
                    acc += torch.mv(w.T, ub)
                return acc

        acc = torch.stack(rows.map(sweep)).sum(0)
        if reduce_fn is not None:
            reduce_fn(acc)
        it += 1
        if it % check_every == 0 or it >= max_iter:
            col = acc * log_v.exp()
            rel = torch.where(allowed, (col - target).abs() / safe_target, torch.zeros_like(col))
            err = float(rel.max())
            if not math.isfinite(err):
                err = math.inf
            if err <= tol or it >= max_iter:
                break
            if err > 2.0 * best:      # over-relaxation is not always monotone: fall back
                omega = 1.0
            best = min(best, err)
            if stall_window is not None and it % stall_window == 0:
                if err > 0.5 * window_err:
                    stalled = True
                    break
                window_err = err
        new = log_p - acc.clamp_min(1e-300).log()
        # Clamped so that exp(log_v) stays far inside float32 between absorption checks.
        log_v = torch.where(allowed, ((1 - omega) * log_v + omega * new).clamp(-_CLAMP, _CLAMP),
                            log_v)
        if it % check_every == 0 and float(log_v[allowed].abs().max()) > _ABSORB:
            if source is not None:
                g = g + log_v
                a = _make_kernel(source, W, rows, lam, g, row_max=source_row_max)
            else:
                a = _absorb_in_place(W, rows, a, log_v)
                g = g + log_v
                built.append(g.clone())
            log_v = torch.where(allowed, torch.zeros_like(log_v), log_v)
    drift = 0.0
    if source is None:
        # An entry dropped at potentials g_t changed, relative to its row's largest entry,
        # by at most the spread of g_end - g_t over the clusters.
        g_end = g + log_v
        for g_t in built:
            delta = (g_end - g_t)[allowed]
            drift = max(drift, float(delta.max() - delta.min()))
    return _LoopResult(W, u.to(torch.float64), a, g, log_v, it, err, drift, stalled)


def _anneal(source, W, rows, lam, log_p, r, tol, max_iter, reduce_fn, row_max=None):
    """Column potentials at the target lam by epsilon-scaling on the rows of ``source``.

    ``lam`` starts where ``lam * (typical row range)`` is mild, so that the kernel has no
    negligible entries and the potentials settle fast, and doubles up to the target; the
    potentials (which scale with lam) are carried from stage to stage, so each stage starts
    close to its solution. ``W`` is the kernel buffer (rebuilt at each stage from
    ``source``, shifted by ``row_max`` when given). Returns ``(g, res, n_iter)``: ``res`` is
    the last stage's loop result and ``n_iter`` the iterations of all stages.
    """
    device = source.device
    ranges = torch.empty(source.shape[0], dtype=torch.float64, device=device)

    def row_ranges(lo, hi, block):
        for s in range(lo, hi, block):
            e = min(hi, s + block)
            top = 0.0 if row_max is None else row_max[s:e]
            ranges[s:e] = top - source[s:e].amin(1).to(torch.float64)

    rows.map(row_ranges)
    spread = torch.stack([ranges.median(), torch.ones((), dtype=torch.float64, device=device)])
    if reduce_fn is not None:        # every process must run the same stages
        reduce_fn(spread)
    spread = float(spread[0] / spread[1])
    n_stages = max(0, math.ceil(math.log2(max(1.0, lam * spread / 8.0))))
    g = torch.where(torch.isfinite(log_p), torch.zeros_like(log_p), log_p)
    res, n_iter = None, 0
    for stage in range(n_stages, -1, -1):
        lam_s = lam / 2 ** stage
        last = stage == 0
        # All stages share max_iter; the target stage always gets at least one iteration.
        budget = (max(1, max_iter - n_iter) if last
                  else min(_STAGE_MAX_ITER, max_iter - n_iter - 1))
        if budget > 0:
            a = _make_kernel(source, W, rows, lam_s, g, row_max=row_max)
            res = _scaling_loop(W, rows, a, g, lam_s, log_p, r,
                                tol if last else max(tol, _STAGE_TOL), budget, reduce_fn,
                                source=source, source_row_max=row_max)
            n_iter += res.n_iter
            g = res.g + res.log_v
        if not last:
            g = g * 2.0                       # potentials scale with lam
    return g, res, n_iter


def _finish(res, rows, row_max, lam, max_iter, tol):
    W = res.W
    v = res.log_v.exp().to(W.dtype)
    labels = torch.empty(W.shape[0], dtype=torch.int64, device=W.device)

    def argmax(lo, hi, block):
        for s in range(lo, hi, block):
            e = min(hi, s + block)
            labels[s:e] = (W[s:e] * v).argmax(1)

    rows.map(argmax)
    log_u = res.u.log() - res.a - lam * row_max
    converged = res.error <= tol
    if res.drift > _SAFE_DRIFT:
        warnings.warn(f"sinkhorn_knopp(copy=False): the column potentials moved by up to "
                      f"{res.drift:.0f} since the in-place kernel was built, so kernel entries "
                      "that underflowed then may carry mass now and log_u may not reproduce "
                      "the row sums exactly; use copy=True for an exact rebuild.",
                      RuntimeWarning, stacklevel=3)
    if not converged:
        warnings.warn(f"sinkhorn_knopp did not converge in {max_iter} iterations (marginal "
                      f"error {res.error:.3g} > tol {tol}); increase max_iter or tol, or "
                      "lower lam.", ConvergenceWarning, stacklevel=3)
    return SinkhornResult(labels=labels.cpu().numpy(), log_u=log_u.cpu().numpy(),
                          log_v=(res.g + res.log_v).cpu().numpy(), n_iter=res.n_iter,
                          marginal_error=float(res.error), converged=converged)
