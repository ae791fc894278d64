"""sinkhorn_knopp: marginals, float32 safety, invariances, in-place work, errors."""
import subprocess
import sys
import textwrap
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.exceptions import ConvergenceWarning

from skselflabel import sinkhorn_knopp
from skselflabel._solver import sinkhorn
from solver_cases import head_logits, marginal_error, peaked, plan


def test_balances_skewed_logits():
    z = head_logits(3000, 10, scale=4.0)
    assert np.bincount(z.argmax(1), minlength=10).max() > 2 * 300
    res = sinkhorn_knopp(z, lam=10.0, tol=1e-4)
    assert res.converged and res.marginal_error <= 1e-4
    assert res.labels.dtype == np.int64 and res.labels.shape == (3000,)
    assert res.log_u.dtype == np.float64 and res.log_v.dtype == np.float64
    Q = plan(z, res, 10.0)
    assert marginal_error(Q) <= 1.1e-4
    assert np.array_equal(res.labels, Q.argmax(1))
    counts = np.bincount(res.labels, minlength=10)
    assert counts.min() >= 250 and counts.max() <= 350


def test_prior_sets_cluster_sizes():
    z = head_logits(4000, 4, scale=2.0)
    prior = np.array([4.0, 2.0, 1.0, 1.0])
    res = sinkhorn_knopp(z, lam=10.0, prior=prior, tol=1e-4)
    Q = plan(z, res, 10.0)
    np.testing.assert_allclose(Q.sum(0), prior / prior.sum(), rtol=2e-4)
    counts = np.bincount(res.labels, minlength=4) / 4000
    np.testing.assert_allclose(counts, prior / prior.sum(), atol=0.03)


def test_zero_prior_cluster_gets_nothing():
    z = head_logits(500, 3)
    res = sinkhorn_knopp(z, lam=10.0, prior=[1, 0, 1])
    assert res.log_v[1] == -np.inf
    assert not np.any(res.labels == 1)
    assert marginal_error(plan(z, res, 10.0), [1, 0, 1]) <= 1.1e-3


# ------------------------------------------------------------------ float32 safety
@pytest.mark.parametrize("lam", [25.0, 100.0])
@pytest.mark.parametrize("case", ["peaked", "all_equal", "unwanted_cluster", "k1", "n1",
                                  "offset"])
def test_float32_safe_edge_cases(case, lam):
    rng = np.random.default_rng(1)
    z = {
        "peaked": lambda: peaked(1500, 20, 50.0, 0),
        "all_equal": lambda: np.full((300, 7), 3.0, np.float32),
        "unwanted_cluster": lambda: np.concatenate(
            [rng.standard_normal((800, 5)), np.full((800, 1), -50.0)], 1).astype(np.float32),
        "k1": lambda: rng.standard_normal((50, 1)).astype(np.float32),
        "n1": lambda: rng.standard_normal((1, 6)).astype(np.float32) * 50,
        "offset": lambda: (peaked(400, 8, 5.0, 2) + np.float32(1e4)),
    }[case]()
    res = sinkhorn_knopp(z, lam=lam, tol=1e-2, max_iter=5000)
    assert res.converged and res.n_iter <= 5000
    for field in (res.log_u, res.log_v):
        assert not np.isnan(field).any() and not np.isposinf(field).any()
    Q = plan(z, res, lam)
    assert np.isfinite(Q).all() and (Q.sum(1) > 0).all()
    assert marginal_error(Q) <= 1.05e-2


@pytest.mark.parametrize("lam", [25.0, 100.0])
def test_exactly_tied_one_hot_scores_converge(lam, monkeypatch, small_warmup):
    # One-hot scores (gap 50, all other entries tied) over unequally popular clusters: the
    # subsample's potentials leave some clusters in a "dead zone" where plain iterations
    # creep; the solver must notice the stall and anneal lam on the full matrix.
    rng = np.random.default_rng(0)
    N, K = 20_000, 100
    home = rng.choice(K, size=N, p=rng.dirichlet(np.ones(K) * 2))
    z = np.zeros((N, K), np.float32)
    z[np.arange(N), home] = 50.0
    calls = []
    anneal = sinkhorn.anneal
    monkeypatch.setattr(sinkhorn, "anneal", lambda *a, **k: calls.append(1) or anneal(*a, **k))
    res = sinkhorn_knopp(z, lam=lam, tol=1e-2, max_iter=5000)
    assert len(calls) == 2                       # the subsample, then the full matrix
    assert res.converged and res.n_iter <= 5000
    assert marginal_error(plan(z, res, lam)) <= 1.05e-2


@pytest.mark.parametrize("lam", [25.0, 100.0])
@pytest.mark.parametrize("seed", [1, 5])
def test_tied_scores_with_a_plateau_at_the_tolerance_converge_with_margin(lam, seed):
    # Issue #10, item 7: one-hot scores (gap 50) on 3,000 x 30, groups of unequal sizes.
    # With 100 rows per cluster one row's mass is 1% of a cluster, so a cluster holding one
    # row too many sits on an error plateau of exactly 0.01 = tol; the solve used to stop on
    # it (or stall there for all 5,000 iterations), the plan rebuilt from the returned
    # scalings being off by 0.0100-0.0101.
    rng = np.random.default_rng(seed)
    N, K = 3_000, 30
    home = rng.integers(0, K, N)
    assert np.isin(np.bincount(home, minlength=K) - N // K, [-1, 1]).any()
    z = np.zeros((N, K), np.float32)
    z[np.arange(N), home] = 50.0
    res = sinkhorn_knopp(z, lam=lam, tol=1e-2, max_iter=5000)
    assert res.converged and res.n_iter <= 2000
    assert res.marginal_error <= 0.0095
    # The error the solver reports is the error of the plan it returns, to 1e-5.
    assert abs(marginal_error(plan(z, res, lam)) - res.marginal_error) < 1e-5


def test_ordinary_logits_stop_at_the_first_iteration_below_tol():
    # The margin below tol applies only where a cluster was seen stuck on a plateau.
    z = head_logits(2_000, 10, seed=1)
    res = sinkhorn_knopp(z, lam=25.0, tol=1e-2)
    assert res.converged and res.marginal_error > 0.9e-2
    with pytest.warns(ConvergenceWarning):
        assert not sinkhorn_knopp(z, lam=25.0, tol=1e-2, max_iter=res.n_iter - 1).converged


def test_log_scalings_hold_for_offset_scores():
    z = head_logits(300, 5).astype(np.float64)
    a = sinkhorn_knopp(z, lam=5.0, tol=1e-6)
    b = sinkhorn_knopp(z + 1e4, lam=5.0, tol=1e-6)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(plan(z + 1e4, b, 5.0), plan(z, a, 5.0), rtol=1e-5, atol=1e-12)


def test_half_precision_input_is_upcast():
    z = head_logits(400, 6)
    ref = sinkhorn_knopp(torch.from_numpy(z).to(torch.bfloat16).float(), lam=10.0)
    res = sinkhorn_knopp(torch.from_numpy(z).to(torch.bfloat16), lam=10.0)
    np.testing.assert_array_equal(res.labels, ref.labels)
    res16 = sinkhorn_knopp(z.astype(np.float16), lam=10.0)
    assert res16.converged


# ------------------------------------------------------------------ properties
scores_strategy = arrays(np.float64, st.tuples(st.integers(1, 40), st.integers(1, 6)),
                         elements=st.floats(-8, 8, width=32))


@settings(max_examples=30, deadline=None)
@given(z=scores_strategy, lam=st.sampled_from([1.0, 5.0, 25.0]))
def test_marginals_hold_to_tol(z, lam):
    res = sinkhorn_knopp(z, lam=lam, tol=1e-3, max_iter=5000)
    assert res.converged
    assert marginal_error(plan(z, res, lam)) <= 1.01e-3


@settings(max_examples=25, deadline=None)
@given(z=scores_strategy, seed=st.integers(0, 2**31 - 1))
def test_permutation_equivariance(z, seed):
    rng = np.random.default_rng(seed)
    N, K = z.shape
    rows, cols = rng.permutation(N), rng.permutation(K)
    a = sinkhorn_knopp(z, lam=2.0, tol=1e-5, max_iter=5000)
    b = sinkhorn_knopp(z[rows][:, cols], lam=2.0, tol=1e-5, max_iter=5000)
    # Same plan, permuted (labels may differ only where two clusters tie).
    np.testing.assert_allclose(plan(z[rows][:, cols], b, 2.0), plan(z, a, 2.0)[rows][:, cols],
                               rtol=1e-3, atol=1e-9)
    Qa = plan(z, a, 2.0)[rows][:, cols]
    best = Qa.max(1)
    chosen = Qa[np.arange(N), np.argsort(cols)[a.labels[rows]]]
    np.testing.assert_allclose(chosen, best, rtol=1e-6)
    np.testing.assert_allclose(Qa[np.arange(N), b.labels], best, rtol=1e-3)


@settings(max_examples=25, deadline=None)
@given(z=scores_strategy, shift=st.floats(-1e3, 1e3))
def test_row_constants_change_nothing(z, shift):
    rng = np.random.default_rng(0)
    c = rng.uniform(-1, 1, size=(z.shape[0], 1)) * shift
    a = sinkhorn_knopp(z, lam=2.0, tol=1e-5, max_iter=5000)
    b = sinkhorn_knopp(z + c, lam=2.0, tol=1e-5, max_iter=5000)
    np.testing.assert_allclose(plan(z + c, b, 2.0), plan(z, a, 2.0), rtol=2e-3, atol=1e-9)
    np.testing.assert_allclose(b.log_v - b.log_v.max(), a.log_v - a.log_v.max(), atol=2e-3)


@settings(max_examples=25, deadline=None)
@given(z=scores_strategy,
       prior=arrays(np.float64, 6, elements=st.floats(0.05, 1.0)))
def test_prior_respected(z, prior):
    prior = prior[:z.shape[1]]
    res = sinkhorn_knopp(z, lam=5.0, prior=prior, tol=1e-3, max_iter=5000)
    Q = plan(z, res, 5.0)
    np.testing.assert_allclose(Q.sum(0), prior / prior.sum(), rtol=1.01e-3)


# ------------------------------------------------------------------ agreement, warm start
def _tight_float64_labels(z, lam):
    """Independent plain float64 Sinkhorn (two matrix-vector products), run to 1e-9."""
    s = lam * z.astype(np.float64)
    P = np.exp(s - s.max(1, keepdims=True))
    N, K = P.shape
    v = np.ones(K)
    for it in range(100_000):
        u = (1.0 / N) / (P @ v)
        col = v * (u @ P)
        if it % 10 == 0 and np.abs(col * K - 1).max() < 1e-9:
            break
        v = (1.0 / K) / (u @ P)
    return (np.log(P) + np.log(v)).argmax(1)


def test_agrees_with_tight_float64_solution(small_warmup):
    z = head_logits(5_000, 200, seed=3)
    res = sinkhorn_knopp(z, lam=25.0)
    assert res.converged
    agree = np.mean(res.labels == _tight_float64_labels(z, 25.0))
    assert agree >= 0.995


def test_warm_start_from_previous_log_v(small_warmup):
    z = head_logits(5_000, 200, seed=4)
    cold = sinkhorn_knopp(z, lam=25.0, tol=1e-4)
    warm = sinkhorn_knopp(z, lam=25.0, tol=1e-4, init_log_v=cold.log_v)
    assert warm.converged and warm.n_iter < cold.n_iter
    assert np.mean(warm.labels == cold.labels) > 0.999


def test_a_whole_matrix_starts_from_the_next_problems_neighbour_in_place():
    # A self-label step: the next step's logits are the last one's after some training,
    # solved in place (copy=False) from the last one's duals, given as a tensor.
    rng = np.random.default_rng(7)
    before = head_logits(2_000, 100, seed=7)
    after = before + 0.3 * rng.standard_normal(before.shape).astype(np.float32)
    last = sinkhorn_knopp(before, lam=10.0, tol=1e-2)
    cold = sinkhorn_knopp(after.copy(), lam=10.0, tol=1e-2, copy=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # no drift of an in-place kernel
        warm = sinkhorn_knopp(after.copy(), lam=10.0, tol=1e-2, copy=False,
                              init_log_v=torch.from_numpy(last.log_v))
    assert warm.converged and cold.converged
    assert warm.n_iter < cold.n_iter
    assert marginal_error(plan(after, warm, 10.0)) <= 1e-2 * 1.01


def test_a_start_far_from_the_solution_still_converges():
    # Potentials in the wrong order put clusters in dead zones: the error stalls and the
    # solve anneals lam after all.
    z = head_logits(2_000, 100, seed=8)
    right = sinkhorn_knopp(z, lam=25.0, tol=1e-3)
    res = sinkhorn_knopp(z, lam=25.0, tol=1e-3, init_log_v=-3.0 * right.log_v)
    assert res.converged and res.marginal_error <= 1e-3
    assert np.mean(res.labels == right.labels) > 0.99


# ------------------------------------------------------------------ memory, devices
def test_copy_false_works_in_place_without_another_buffer(small_warmup):
    z = head_logits(5_000, 200, seed=5)
    expected = sinkhorn_knopp(z, lam=25.0)
    work = z.copy()
    tracemalloc.start()
    res = sinkhorn_knopp(work, lam=25.0, copy=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < work.nbytes / 4                  # blocks and vectors only
    assert not np.array_equal(work, z)             # the input became the kernel
    assert np.all((work >= 0) & (work <= 1))
    np.testing.assert_array_equal(res.labels, expected.labels)
    np.testing.assert_allclose(res.log_v, expected.log_v, atol=1e-4)


def test_copy_true_leaves_input_alone(small_warmup):
    z = head_logits(5_000, 200, seed=5)
    before = z.copy()
    sinkhorn_knopp(z, lam=25.0)
    np.testing.assert_array_equal(z, before)


@pytest.mark.parametrize("copy", [True, False])
def test_torch_input(copy, small_warmup):
    z = head_logits(3_000, 100, seed=6)
    t = torch.from_numpy(z.copy())
    res = sinkhorn_knopp(t, lam=25.0, copy=copy)
    ref = sinkhorn_knopp(z, lam=25.0)
    np.testing.assert_array_equal(res.labels, ref.labels)
    assert isinstance(res.labels, np.ndarray)
    assert torch.get_num_threads() >= 1


def test_restores_torch_thread_count():
    before = torch.get_num_threads()
    sinkhorn_knopp(head_logits(200, 4), lam=5.0)
    assert torch.get_num_threads() == before


def test_distributed_seam_with_two_fake_shards(small_warmup):
    """Rows split in two 'processes' (threads) whose column sums are summed by reduce_fn."""
    import threading

    z = head_logits(5_000, 100, seed=7)
    full = sinkhorn_knopp(z, lam=10.0, tol=1e-5)
    shards = [z[:2200], z[2200:]]
    barrier = threading.Barrier(2)
    slots = [None, None]
    results = [None, None]

    def all_reduce(rank):
        def reduce_fn(t):
            slots[rank] = t.clone()
            barrier.wait()
            t.copy_(slots[0] + slots[1])
            barrier.wait()
        return reduce_fn

    def run(rank):
        results[rank] = sinkhorn_knopp(shards[rank], lam=10.0, tol=1e-5,
                                       reduce_fn=all_reduce(rank), n_total=len(z))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    a, b = results
    np.testing.assert_allclose(a.log_v, b.log_v)
    labels = np.concatenate([a.labels, b.labels])
    assert np.mean(labels == full.labels) > 0.999
    Q = np.concatenate([plan(shards[0], a, 10.0), plan(shards[1], b, 10.0)])
    assert marginal_error(Q) <= 1.1e-5


# ------------------------------------------------------------------ stopping, errors
def test_max_iter_warns_and_reports():
    z = head_logits(2000, 50, seed=8)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = sinkhorn_knopp(z, lam=50.0, tol=1e-12, max_iter=3)
    assert not res.converged and res.n_iter == 3 and res.marginal_error > 1e-12


def test_no_warning_when_converged():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sinkhorn_knopp(head_logits(100, 3), lam=5.0)


@pytest.mark.parametrize("scores, kwargs, match", [
    (np.array([[0.0, np.nan], [np.inf, 1.0], [np.nan, 2.0]]), {}, "3 NaN or inf"),
    (np.zeros(5), {}, "2-D"),
    (np.zeros((2, 2, 2)), {}, "ndim=3"),
    (np.zeros((0, 3)), {}, "empty axis"),
    (np.zeros((3, 0)), {}, "empty axis"),
    (np.zeros((3, 2)), {"lam": 0.0}, "lam must be a positive"),
    (np.zeros((3, 2)), {"lam": -1.0}, "lam must be a positive"),
    (np.zeros((3, 2)), {"prior": [1, 2, 3]}, "length n_clusters=2"),
    (np.zeros((3, 2)), {"prior": [1, -1]}, "negative"),
    (np.zeros((3, 2)), {"prior": [0, 0]}, "all zeros"),
    (np.zeros((3, 2)), {"max_iter": 0}, "max_iter"),
    (np.zeros((3, 2)), {"init_log_v": [0.0]}, "init_log_v"),
    (np.array([["a", "b"]]), {}, "real numbers"),
    (np.zeros((3, 2), complex), {}, "real numbers"),
    (torch.zeros((3, 2), dtype=torch.complex64), {}, "complex tensor"),   # was cast to real
    (np.zeros((3, 2)), {"init_log_v": [0.0, np.nan]}, "NaN or \\+inf"),
    (np.zeros((3, 2)), {"init_log_v": [np.inf, 0.0]}, "NaN or \\+inf"),
    (np.zeros((3, 2)), {"init_log_v": [[0.0, 0.0]]}, "length n_clusters=2"),
    (np.zeros((3, 2)), {"init_log_v": ["a", "b"]}, "vector of numbers"),
])
def test_bad_input_raises(scores, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sinkhorn_knopp(scores, **kwargs)


@pytest.mark.parametrize("start", [[1e300, 0, 0, 0], [0, -np.inf, -1e300, 5.0]])
def test_extreme_init_log_v_is_a_valid_start(start):
    # Issue #10, item 4: init_log_v=[1e300, 0, 0, 0] gave non-finite scalings and all-0
    # labels. Only differences of potentials matter, and none beyond lam * (row range)
    # can be part of a solution: the start is shifted and floored, and the solve converges.
    z = head_logits(2_000, 4, seed=3)
    ref = sinkhorn_knopp(z, lam=10.0, tol=1e-4)
    res = sinkhorn_knopp(z, lam=10.0, tol=1e-4, init_log_v=start)
    assert res.converged and np.isfinite(res.log_u).all() and np.isfinite(res.log_v).all()
    assert np.mean(res.labels == ref.labels) > 0.999
    assert np.bincount(res.labels, minlength=4).min() > 400
    # -inf is kept where the prior is zero.
    res = sinkhorn_knopp(z, lam=10.0, prior=[1, 0, 1, 1], init_log_v=start)
    assert res.log_v[1] == -np.inf and not np.any(res.labels == 1)


def test_identical_rows_warn_that_labels_cannot_be_balanced():
    # Issue #10, item 4: np.ones((200, 5)) gave converged=True and every label 0, silently.
    with pytest.warns(ConvergenceWarning, match="1 distinct row.*5 clusters.*only 1 cluster"):
        res = sinkhorn_knopp(np.ones((200, 5)))
    assert res.converged          # the plan is balanced; only its argmax cannot be
    z = np.repeat(head_logits(3, 5, seed=0), 100, axis=0)
    with pytest.warns(ConvergenceWarning, match="3 distinct row"):
        sinkhorn_knopp(z + np.arange(300)[:, None])   # a constant per row changes nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sinkhorn_knopp(head_logits(200, 5, seed=0))            # distinct rows: no warning
        sinkhorn_knopp(head_logits(200, 5, seed=0), prior=[1, 1, 0, 0, 1e-9])


def test_bad_input_left_untouched_with_copy_false():
    z = head_logits(50, 4)
    z[3, 2] = np.nan
    before = z.copy()
    with pytest.raises(ValueError, match="1 NaN"):
        sinkhorn_knopp(z, copy=False)
    np.testing.assert_array_equal(z, before)


def test_in_place_drift_warns(small_warmup):
    # Steep logits move the potentials a lot after the in-place kernel is built from the
    # subsample's: the result says it cannot vouch for dropped entries.
    z = head_logits(4_000, 200, seed=9, scale=6.0)
    with pytest.warns(RuntimeWarning, match="copy=True"):
        sinkhorn_knopp(z, lam=25.0, tol=1e-2, copy=False, max_iter=3000)


def test_a_start_far_from_the_solution_never_builds_the_in_place_kernel(small_warmup):
    # Such a start used to build the in-place kernel: the entries the answer needs underflowed
    # and the solve did not converge. The subsample's potentials fit the matrix better, so
    # the solve starts from them, as a cold one does.
    z = head_logits(4_000, 200, seed=9, scale=6.0)
    bad_start = np.random.default_rng(0).normal(scale=60.0, size=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # the drift, cold or warm
        cold = sinkhorn_knopp(z.copy(), lam=25.0, tol=1e-2, copy=False, max_iter=3000)
        warm = sinkhorn_knopp(z.copy(), lam=25.0, tol=1e-2, init_log_v=bad_start,
                              copy=False, max_iter=3000)
    assert cold.converged and warm.converged
    assert np.mean(warm.labels == cold.labels) > 0.99


def test_read_only_memory_map_is_never_written(tmp_path):
    # Issue #10, item 1: a tensor over a read-only memory map, solved with copy=False, used
    # to be overwritten in place: a segmentation fault. Run in a child process so that a
    # crash fails this test instead of ending the test run.
    script = textwrap.dedent("""
        import sys, warnings
        import numpy as np, torch
        from skselflabel import sinkhorn_knopp
        from skselflabel._solver import sinkhorn
        sinkhorn._WARMUP_ELEMENTS = 100_000     # so that 3,000 x 100 takes the in-place path
        path = sys.argv[1]
        z = np.random.default_rng(0).standard_normal((3000, 100)).astype(np.float32)
        np.save(path, z)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # torch: "The given NumPy array is not writable"
            t = torch.from_numpy(np.load(path, mmap_mode="r"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = sinkhorn_knopp(t, lam=10.0, copy=False)
        assert any("read-only memory" in str(w.message) for w in caught), caught
        assert np.array_equal(np.load(path), z)
        assert np.array_equal(res.labels, sinkhorn_knopp(z, lam=10.0).labels)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "S.npy")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode,
                                                                  proc.stderr[-2000:])


def test_read_only_and_big_endian_input():
    z = head_logits(300, 4)
    ref = sinkhorn_knopp(z, lam=5.0)
    ro = z.copy()
    ro.setflags(write=False)
    with pytest.warns(UserWarning, match="read-only memory"):
        res = sinkhorn_knopp(ro, lam=5.0, copy=False)    # falls back to a copy
    np.testing.assert_array_equal(res.labels, ref.labels)
    np.testing.assert_array_equal(ro, z)
    res = sinkhorn_knopp(z.astype(">f4"), lam=5.0)
    np.testing.assert_array_equal(res.labels, ref.labels)
