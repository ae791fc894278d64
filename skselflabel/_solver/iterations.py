"""The scaling iterations of Sinkhorn-Knopp on a stabilised kernel (row maxima 1, potentials
absorbed as they grow), epsilon-scaling, and the labels of the final plan."""
from dataclasses import dataclass, replace
import math
import warnings

import torch
from sklearn.exceptions import ConvergenceWarning

from .._runtime.interrupt import check_interrupt
from .plateaus import PLATEAU_MARGIN, Plateaus, warn_if_tied_rows

try:    # the optional compiled sweep (setup.py); the pure-torch sweep gives the same results
    from . import _fused
except ImportError:
    _fused = None

# Scalings are re-absorbed into the kernel once a log-scaling leaves [-ABSORB, ABSORB]:
# far inside float32's exp range (about +-87), so products of kernel entries, scalings and
# up to millions of summands stay finite.
ABSORB = 30.0
# Between absorption checks a log-scaling is kept within [-CLAMP, CLAMP] (same reason).
CLAMP = 60.0
# Kernel entries below exp(-87) (float32's smallest normal number is about exp(-87.3)) are
# stored as exact zeros: they carry no mass next to their row's maximum of 1.
EXP_MIN = -87.0
ZERO_BELOW = 2.0 * math.exp(EXP_MIN)
# In place, entries dropped when the kernel was built stay negligible (below exp(-40) of their
# row's largest) while the potentials drift by less than 87 - 40.
SAFE_DRIFT = 47.0
# Potentials spreading over more than this are added to the scores in float64 (make_kernel).
PRECISE_SPREAD = 64.0
# At each epsilon-scaling stage below the target lam, iterate until this marginal error.
STAGE_TOL = 1e-2
STAGE_MAX_ITER = 200
# Over-relaxation of the column update (1 = plain Sinkhorn). Values in (1, 2) converge to
# the same fixed point in fewer iterations.
OMEGA = 1.8


def use_fused(W):
    """Whether the compiled single-read sweep (``_fused.c``) can run on the kernel ``W``."""
    return (_fused is not None and W.device.type == "cpu" and W.dtype == torch.float32
            and W.is_contiguous())


@dataclass(frozen=True)
class Problem:
    """What every sweep of one solve (or one annealing stage) shares."""

    lam: float                # inverse temperature of this stage
    log_p: torch.Tensor       # log column marginal (float64, -inf where the prior is 0)
    r: float                  # mass of one row
    tol: float                # stop at this largest relative marginal error
    rows: object              # how the rows are visited (a RowBlocks)
    reduce_fn: object = None  # sums column sums over processes (data-parallel), or None
    final_tol: float = None   # tol of the whole solve, when a stage's tol is looser
    settle: object = None     # when a solve rounded to sizes may stop early (a Settle)

    @property
    def target_tol(self):
        """The tolerance the solve must reach in the end."""
        return self.tol if self.final_tol is None else self.final_tol

    @property
    def plateau_level(self):
        """Error plateaus at or above this must be left (see :class:`~.plateaus.Plateaus`)."""
        return PLATEAU_MARGIN * self.target_tol

    def stage(self, **changes):
        """The same problem with some fields changed (an annealing stage, a subsample)."""
        return replace(self, **changes)


@dataclass
class LoopResult:
    W: torch.Tensor
    u: torch.Tensor           # row scalings of the returned plan (float64)
    a: torch.Tensor           # row shifts of the kernel
    g: torch.Tensor           # column potentials absorbed in the kernel
    log_v: torch.Tensor       # column log-scalings of the returned plan, relative to g
    n_iter: int
    error: float
    drift: float = 0.0        # bound on relative potential changes since W was built
    stalled: bool = False     # stopped early: the error stopped falling (see scaling_loop)
    settled: bool = False     # stopped in a slow tail below the settle level (scaling_loop)


def make_kernel(problem, D, W, g, row_max=None):
    """W = exp(lam * (D - row_max) + g - a) with a_i the row maximum of the exponent.

    ``D`` may be the scores themselves (``row_max`` given) and ``W`` may be ``D``: every
    block is read before it is written. Returns ``a`` (float64) with ``row_max`` folded out.
    """
    a = torch.empty(D.shape[0], dtype=torch.float64, device=D.device)
    exponent = exponent_fn(problem.lam, g, W.dtype)

    def build(lo, hi, block):
        for s in range(lo, hi, block):
            e = min(hi, s + block)
            w = W[s:e]
            m = exponent(D[s:e], None if row_max is None else row_max[s:e, None], w)
            # exp of arguments below float32's normal range is slow and gives denormals:
            # clamp, then flush the floor to an exact zero.
            w.clamp_min_(EXP_MIN).exp_()
            torch.nn.functional.threshold_(w, ZERO_BELOW, 0.0)
            a[s:e] = m.squeeze(1)

    problem.rows.map(build)
    return a


def exponent_fn(lam, g, dtype):
    """``exponent(d, row_max, out)``: ``out = x - max_k x`` for ``x = lam * (d - row_max) + g``,
    returning the row maxima.

    An entry that survives in the kernel has ``lam * (d - row_max) >= -87 - spread(g)``, so
    formed in the kernel's precision its exponent is off by about ``eps * (87 + spread(g))``.
    When the potentials spread over more than ``PRECISE_SPREAD`` (thousands, for lam = 100
    and a logit gap of 50) that would show as ~1e-4 in the marginals: the exponent is then
    formed and shifted in float64 (slower, so only then).
    """
    finite = g[torch.isfinite(g)]
    spread = float(finite.max() - finite.min()) if finite.numel() else 0.0
    if dtype == torch.float64 or spread <= PRECISE_SPREAD:
        gw = g.to(dtype)

        def exponent(d, row_max, out):
            if row_max is not None:
                d = d.to(dtype) - row_max.to(dtype)
            torch.add(gw, d, alpha=lam, out=out)
            m = out.amax(1, keepdim=True)
            out -= m
            return m
        return exponent

    def precise_exponent(d, row_max, out):
        x = d.to(torch.float64, copy=True)
        if row_max is not None:
            x -= row_max
        x.mul_(lam).add_(g)
        m = x.amax(1, keepdim=True)
        out.copy_(x.sub_(m))
        return m
    return precise_exponent


def absorb_in_place(W, rows, a, log_v):
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


def _sweep_fn(W, v, u, r):
    """One visit of a row range: ``u_b = r / (W_b v)``, then returns ``W_b^T u_b``."""
    K = W.shape[1]
    if use_fused(W):
        def sweep(lo, hi, block):
            acc = torch.zeros(K, dtype=torch.float64)
            _fused.sweep(W.data_ptr(), K, lo, hi, v.data_ptr(), r, u.data_ptr(),
                         acc.data_ptr())
            return acc
        return sweep

    def sweep(lo, hi, block):
        acc = torch.zeros(K, dtype=torch.float64, device=W.device)
        for s in range(lo, hi, block):
            e = min(hi, s + block)
            w, ub = W[s:e], u[s:e]
            torch.mv(w, v, out=ub)
            torch.div(r, ub, out=ub)
            acc += torch.mv(w.T, ub)
        return acc
    return sweep


@dataclass(frozen=True)
class Settle:
    """When a solve whose labels are rounded to sizes may stop before ``tol``: its plan
    already has at most ``mass`` of all mass off target with no column's relative error
    above ``band`` (the rounding then moves about as many labels as at ``tol``), or its
    error is at most ``level`` and has not halved over ``window`` iterations (a slow
    tail)."""

    band: float
    mass: float
    level: float
    window: int


class _Errors:
    """Marginal error of the plan after each sweep, and the rules that stop on it."""

    def __init__(self, log_p, stall_window, level, floor, settle=None):
        self.settle = settle              # a Settle, or None
        self.off_target = math.inf        # share of the mass in the wrong columns
        self.settle_err = math.inf
        self.settled = False
        self.target = log_p.exp()
        self.allowed = self.target > 0
        self.safe_target = torch.where(self.allowed, self.target, torch.ones_like(self.target))
        self.stall_window = stall_window
        self.err = self.best = self.window_err = math.inf
        self.omega = OMEGA
        self.stalled = False
        self.plateaus = Plateaus(self.allowed, level, floor)

    def measure(self, acc, log_v):
        col = acc * log_v.exp()
        deviation = torch.where(self.allowed, (col - self.target) / self.safe_target,
                                torch.zeros_like(col))
        size = deviation.abs()
        err = float(size.max())
        self.err = err if math.isfinite(err) else math.inf
        if self.settle is not None:
            self.off_target = float(0.5 * ((col - self.target).abs() * self.allowed).sum())
        self.plateaus.update(deviation, size, self.err)
        return self.err

    def keep_going(self, it, tol):
        """After measuring at iteration ``it``: whether to iterate on (may set ``stalled``)."""
        if self.err <= (min(tol, self.plateaus.level) if self.plateaus.seen else tol):
            return False
        if self.err > 2.0 * self.best:    # over-relaxation is not always monotone: fall back
            self.omega = 1.0
        self.best = min(self.best, self.err)
        if self.stall_window is not None and it % self.stall_window == 0:
            if self.err > 0.5 * self.window_err:
                self.stalled = True
                return False
            self.window_err = self.err
        if self.settle is not None:
            if self.err <= self.settle.band and self.off_target <= self.settle.mass:
                self.settled = True
                return False
            if it % self.settle.window == 0:
                if self.err <= self.settle.level and self.err > 0.5 * self.settle_err:
                    self.settled = True
                    return False
                self.settle_err = self.err
        return True


def scaling_loop(problem, W, a, g, max_iter, source=None, source_row_max=None,
                 stall_window=None):
    """Fused Sinkhorn sweeps over the stabilised kernel W (modified in place on absorption).

    One sweep visits each row block once: ``u_b = r / (W_b v)`` (so every row sum of the
    plan ``(u, v)`` is exact), then ``acc += W_b^T u_b``; after the sweep the column sums of
    that plan are ``v * acc``, which gives its marginal error without another pass, and the
    column update is ``v <- p / acc`` (over-relaxed in the log domain). ``source`` (the
    scores, shifted by ``source_row_max``) lets the kernel be rebuilt exactly on
    absorption; without it the scalings are multiplied into W, entries that underflow are
    dropped, and the drift of the potentials since the kernel was built is tracked: while
    it stays below ``SAFE_DRIFT`` the dropped entries are still below exp(-40) of their
    row's largest.

    With ``stall_window``, the loop also stops (``stalled=True``) when the error has not
    halved over that many iterations. That happens when the potentials it started from put
    some column in a "dead zone": the rows that should move to it have kernel entries of
    about ``exp(-lam * gap)`` there, so its sum barely responds to its scaling, and plain
    iterations creep towards the solution by ``log(1 + error)`` per iteration (thousands of
    iterations for tied one-hot scores). Wider steps for stuck columns (``plateaus.Plateaus``)
    shorten the climb; if the error still does not halve, the caller anneals ``lam``.

    With ``problem.settle`` (a :class:`Settle`), the loop also stops (``settled=True``) once
    little mass is off target and no column is far off, or once the error
    is at most ``level`` and has not halved over ``window`` iterations: a slow tail that
    the caller's rounding to sizes makes moot.
    """
    built = [g.clone()]               # potentials at which W was built or last absorbed
    N, K = W.shape
    # Relative errors below 100 eps are float rounding of the kernel, not plateaus.
    errors = _Errors(problem.log_p, stall_window, level=problem.plateau_level,
                     floor=100 * torch.finfo(W.dtype).eps, settle=problem.settle)
    allowed = errors.allowed
    log_v = torch.zeros(K, dtype=torch.float64, device=W.device)
    log_v[~torch.isfinite(g)] = -math.inf
    u = torch.empty(N, dtype=W.dtype, device=W.device)
    check_every = 1 if W.device.type == "cpu" else 10
    it = 0
    while True:
        check_interrupt()     # a Ctrl-C during a fit stops between iterations
        v = log_v.exp().to(W.dtype)
        acc = torch.stack(problem.rows.map(_sweep_fn(W, v, u, problem.r))).sum(0)
        if problem.reduce_fn is not None:
            problem.reduce_fn(acc)
        it += 1
        measured = it % check_every == 0 or it >= max_iter
        if measured:
            errors.measure(acc, log_v)
            if it >= max_iter or not errors.keep_going(it, problem.tol):
                break
        new = problem.log_p - acc.clamp_min(1e-300).log()
        step = errors.omega * (new - log_v)
        if measured:
            step = errors.plateaus.widen(step)
        # Clamped so that exp(log_v) stays far inside float32 between absorption checks.
        log_v = torch.where(allowed, (log_v + step).clamp(-CLAMP, CLAMP), log_v)
        if it % check_every == 0 and float(log_v[allowed].abs().max()) > ABSORB:
            if source is not None:
                g = g + log_v
                a = make_kernel(problem, source, W, g, row_max=source_row_max)
            else:
                a = absorb_in_place(W, problem.rows, a, log_v)
                g = g + log_v
                built.append(g.clone())
            log_v = torch.where(allowed, torch.zeros_like(log_v), log_v)
    drift = 0.0 if source is not None else _drift(built, g + log_v, allowed)
    return LoopResult(W, u.to(torch.float64), a, g, log_v, it, errors.err, drift,
                      errors.stalled, errors.settled)


def _drift(built, g_end, allowed):
    """Largest change, relative to its row's largest entry, of an entry dropped at ``built``.

    An entry dropped at potentials g_t changed by at most the spread of g_end - g_t over
    the clusters.
    """
    drift = 0.0
    for g_t in built:
        delta = (g_end - g_t)[allowed]
        drift = max(drift, float(delta.max() - delta.min()))
    return drift


def _row_ranges(problem, source, row_max):
    """Each row's range of scores (its maximum minus its minimum), float64."""
    ranges = torch.empty(source.shape[0], dtype=torch.float64, device=source.device)

    def row_ranges(s, e):
        top = 0.0 if row_max is None else row_max[s:e]
        ranges[s:e] = top - source[s:e].amin(1).to(torch.float64)

    problem.rows.per_block(row_ranges)
    return ranges


def anneal(problem, source, W, max_iter, row_max=None):
    """Column potentials at the target lam by epsilon-scaling on the rows of ``source``.

    ``lam`` starts where ``lam * (typical row range)`` is mild, so that the kernel has no
    negligible entries and the potentials settle fast, and doubles up to the target; the
    potentials (which scale with lam) are carried from stage to stage, so each stage starts
    close to its solution. ``W`` is the kernel buffer (rebuilt at each stage from
    ``source``, shifted by ``row_max`` when given). Returns ``(g, res, n_iter)``: ``res`` is
    the last stage's loop result and ``n_iter`` the iterations of all stages.
    """
    device = source.device
    ranges = _row_ranges(problem, source, row_max)
    spread = torch.stack([ranges.median(), torch.ones((), dtype=torch.float64, device=device)])
    if problem.reduce_fn is not None:        # every process must run the same stages
        problem.reduce_fn(spread)
    spread = float(spread[0] / spread[1])
    lam, log_p, tol = problem.lam, problem.log_p, problem.tol
    n_stages = max(0, math.ceil(math.log2(max(1.0, lam * spread / 8.0))))
    g = torch.where(torch.isfinite(log_p), torch.zeros_like(log_p), log_p)
    res, n_iter = None, 0
    for stage in range(n_stages, -1, -1):
        last = stage == 0
        # All stages share max_iter; the target stage always gets at least one iteration.
        budget = (max(1, max_iter - n_iter) if last
                  else min(STAGE_MAX_ITER, max_iter - n_iter - 1))
        if budget > 0:
            at = problem.stage(lam=lam / 2 ** stage, tol=tol if last else max(tol, STAGE_TOL),
                               final_tol=problem.target_tol)
            a = make_kernel(at, source, W, g, row_max=row_max)
            res = scaling_loop(at, W, a, g, budget, source=source, source_row_max=row_max)
            n_iter += res.n_iter
            g = res.g + res.log_v
        if not last:
            g = g * 2.0                       # potentials scale with lam
    return g, res, n_iter


@dataclass
class Solution:
    """A solve's outcome as tensors on the scores' device (see ``SinkhornResult``)."""

    labels: torch.Tensor
    log_u: torch.Tensor
    log_v: torch.Tensor
    n_iter: int
    marginal_error: float
    converged: bool


def finish(problem, res, row_max, max_iter, check_ties=True):
    """Labels and log-scalings of the final plan, with the warnings the caller must see
    (``check_ties=False`` when the labels will be sized, which spreads tied rows)."""
    W = res.W
    v = res.log_v.exp().to(W.dtype)
    labels = torch.empty(W.shape[0], dtype=torch.int64, device=W.device)

    def argmax(lo, hi, block):
        for s in range(lo, hi, block):
            e = min(hi, s + block)
            labels[s:e] = (W[s:e] * v).argmax(1)

    problem.rows.map(argmax)
    if check_ties and problem.reduce_fn is None:   # other processes' rows are not here
        warn_if_tied_rows(W, labels, problem)
    log_u = res.u.log() - res.a - problem.lam * row_max
    converged = res.error <= problem.tol
    if res.drift > SAFE_DRIFT:
        warnings.warn(f"sinkhorn_knopp(copy=False): the column potentials moved by up to "
                      f"{res.drift:.0f} since the in-place kernel was built, so kernel entries "
                      "that underflowed then may carry mass now and log_u may not reproduce "
                      "the row sums exactly; use copy=True for an exact rebuild.",
                      RuntimeWarning, stacklevel=4)
    if not converged and not res.settled:
        warnings.warn(f"sinkhorn_knopp did not converge in {max_iter} iterations (marginal "
                      f"error {res.error:.3g} > tol {problem.tol}); increase max_iter or tol, "
                      "or lower lam.", ConvergenceWarning, stacklevel=4)
    return Solution(labels=labels, log_u=log_u, log_v=res.g + res.log_v, n_iter=res.n_iter,
                    marginal_error=float(res.error), converged=converged)
