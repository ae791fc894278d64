"""The scaling iterations: compiled and pure-torch sweeps, absorption, the problem object."""
import warnings

import numpy as np
import pytest
import torch

from skselflabel import sinkhorn_knopp
from skselflabel._solver import iterations
from skselflabel._solver import sinkhorn as sinkhorn_module
from skselflabel._solver.row_blocks import RowBlocks
from solver_cases import head_logits, marginal_error, peaked, plan


def test_compiled_sweep_is_built():
    # setup.py builds it wherever a C compiler exists (it does in every dev install); without
    # it the solver silently falls back to the slower pure-torch sweep.
    assert iterations._fused is not None, (
        "skselflabel._solver._fused is missing: reinstall with a C compiler (pip install -e .)")


@pytest.mark.parametrize("case", ["skewed", "peaked", "prior", "float64"])
def test_compiled_and_torch_sweeps_agree(case, monkeypatch, small_warmup):
    rng = np.random.default_rng(11)
    z, prior, lam = head_logits(4_000, 150, seed=12), None, 25.0
    if case == "peaked":
        z, lam = peaked(4_000, 150, 50.0, 13), 100.0
    elif case == "prior":
        prior = rng.dirichlet(np.ones(150))
    elif case == "float64":          # float64 kernels always take the torch sweep
        z = z.astype(np.float64)
    fused = sinkhorn_knopp(z, lam=lam, prior=prior, tol=1e-4, max_iter=5000)
    monkeypatch.setattr(iterations, "_fused", None)
    plain = sinkhorn_knopp(z, lam=lam, prior=prior, tol=1e-4, max_iter=5000)
    assert fused.converged and plain.converged
    assert np.mean(fused.labels == plain.labels) > 0.999
    # log_v is defined up to a constant (log_u takes the opposite one): compare it centred.
    np.testing.assert_allclose(fused.log_v - fused.log_v.mean(),
                               plain.log_v - plain.log_v.mean(), atol=1e-3)
    # Rebuilt in float64 from the scores: float32 rounding of lam * z (up to 5e3 here) adds
    # a few 1e-4 to the 1e-4 the solver reached on its float32 kernel.
    assert marginal_error(plan(z, fused, lam), prior) <= 1e-3
    assert abs(fused.n_iter - plain.n_iter) <= max(2, plain.n_iter // 10)


def test_frequent_absorption_keeps_the_solution(monkeypatch, small_warmup):
    # Absorb after nearly every iteration: copy=True rebuilds the kernel exactly from the
    # scores; copy=False multiplies the scalings into the kernel in place.
    z = head_logits(4_000, 200, seed=9, scale=4.0)
    ref = sinkhorn_knopp(z, lam=25.0, tol=1e-3)
    calls = []
    absorb = iterations.absorb_in_place
    monkeypatch.setattr(iterations, "absorb_in_place", lambda *a: calls.append(1) or absorb(*a))
    monkeypatch.setattr(iterations, "ABSORB", 0.05)
    exact = sinkhorn_knopp(z, lam=25.0, tol=1e-3)
    assert calls == [] and exact.converged
    assert marginal_error(plan(z, exact, 25.0)) <= 1.1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)    # the drift bound is conservative
        inplace = sinkhorn_knopp(z.copy(), lam=25.0, tol=1e-3, copy=False)
    assert len(calls) > 10 and inplace.converged
    for res in (exact, inplace):
        assert np.mean(res.labels == ref.labels) > 0.999
    assert marginal_error(plan(z, inplace, 25.0)) <= 1.1e-3


def test_problem_stages_share_everything_but_what_changes():
    rows = RowBlocks(100, 10, torch.device("cpu"), 2)
    try:
        problem = iterations.Problem(lam=25.0, log_p=torch.zeros(3), r=0.01, tol=1e-3, rows=rows)
        stage = problem.stage(lam=12.5, tol=1e-2)
        assert (stage.lam, stage.tol, problem.lam, problem.tol) == (12.5, 1e-2, 25.0, 1e-3)
        assert stage.rows is rows and stage.log_p is problem.log_p and stage.r == 0.01
        # Row ranges cover every row once, in order.
        covered = [i for lo, hi in rows.ranges for i in range(lo, hi)]
        assert covered == list(range(100))
    finally:
        rows.close()


def _stops_at(errors, sequence, tol):
    """The iteration at which ``errors`` stops when it measures ``sequence`` one by one."""
    for it, err in enumerate(sequence, start=1):
        errors.err = err
        if not errors.keep_going(it, tol):
            return it
    return None


def test_a_slow_tail_below_the_settle_level_stops():
    log_p = torch.full((4,), -np.log(4.0), dtype=torch.float64)

    def errors(settle):
        return iterations._Errors(log_p, None, level=0.0, floor=0.0, settle=settle)

    slow = np.geomspace(0.04, 0.03, 200)         # below 0.05, far from halving in 25
    fast = 0.04 * 0.5 ** (np.arange(200) / 10)   # halving every 10 iterations
    high = np.geomspace(0.4, 0.3, 200)           # a slow tail, but above the level
    def tail(level, window):          # the band rule never fires: off_target stays inf
        return iterations.Settle(band=0.5, mass=0.01, level=level, window=window)

    stopped = errors(tail(0.05, 25))
    assert _stops_at(stopped, slow, tol=1e-3) == 50 and stopped.settled
    reaches_tol = int(np.argmax(fast <= 1e-3)) + 1
    assert _stops_at(errors(tail(0.05, 25)), fast, tol=1e-3) == reaches_tol
    assert _stops_at(errors(tail(0.05, 25)), high, tol=1e-3) is None
    assert _stops_at(errors(None), slow, tol=1e-3) is None


def test_a_plan_with_little_mass_off_target_and_no_far_column_stops():
    log_p = torch.full((4,), -np.log(4.0), dtype=torch.float64)
    settle = iterations.Settle(band=1.0, mass=0.01, level=0.05, window=25)
    zero = torch.zeros(4, dtype=torch.float64)

    def keeps_going(column_sums):
        errors = iterations._Errors(log_p, None, level=0.0, floor=0.0, settle=settle)
        errors.measure(torch.tensor(column_sums, dtype=torch.float64), zero)
        return errors.keep_going(1, tol=1e-6), errors

    going, errors = keeps_going([0.255, 0.25, 0.25, 0.245])  # 0.5% of the mass off target
    assert not going and errors.settled and errors.off_target == pytest.approx(0.005)
    assert keeps_going([0.30, 0.25, 0.25, 0.20])[0]          # 5% off target
    # Little mass off target, but one of 200 columns at 2.5 times its share: on.
    many = torch.full((200,), -np.log(200.0), dtype=torch.float64)
    sums = torch.full((200,), (1 - 0.0125) / 199, dtype=torch.float64)
    sums[0] = 0.0125
    far = iterations._Errors(many, None, level=0.0, floor=0.0, settle=settle)
    far.measure(sums, torch.zeros(200, dtype=torch.float64))
    assert far.off_target <= 0.01 and far.err > 1.0 and far.keep_going(1, tol=1e-6)
    no_sizes = iterations._Errors(log_p, None, level=0.0, floor=0.0)
    no_sizes.measure(torch.tensor([0.26, 0.25, 0.25, 0.24], dtype=torch.float64), zero)
    assert no_sizes.keep_going(1, tol=1e-6)                   # without sizes: on to tol


def test_a_settled_solve_keeps_its_sizes_and_does_not_warn(small_warmup, monkeypatch):
    # Peaked logits at a high lam have a slow tail: the error creeps below 1e-3.
    z = peaked(6_000, 150, 50.0, 13)
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # no ConvergenceWarning for a settled tail
        res = sinkhorn_knopp(z, lam=100.0, tol=1e-9, size_tolerance=0.5, max_iter=1000)
    assert res.marginal_error <= 1.0 and not res.converged and res.n_iter < 1000
    sizes = np.bincount(res.labels, minlength=150)
    assert sizes.min() >= 0.5 * 40 and sizes.max() <= 1.5 * 40
    # Stopped inside the band, the rounded labels are those of a plan solved much further.
    monkeypatch.setattr(sinkhorn_module, "SETTLE_MASS", 0.0)   # only the slow-tail rule
    further = sinkhorn_knopp(z, lam=100.0, tol=1e-9, size_tolerance=0.5, max_iter=1000)
    assert further.marginal_error < res.marginal_error
    assert np.mean(further.labels == res.labels) >= 0.95
    with pytest.warns(Warning, match="did not converge"):   # without sizes, no settling
        sinkhorn_knopp(z, lam=100.0, tol=1e-9, max_iter=300)
