"""Property-based fuzzing of the public API (hypothesis).

Valid input (as the docs define it) always fits and predicts. Every call either returns
finite, valid output or raises one of a small documented set of exceptions with a message
(docs/errors.md); a failed call never changes a fitted
estimator; nothing crashes the interpreter (the crash-prone family, solving in place over
memory maps, runs in a child process). The examples are derandomized so that the suite is
the same on every run and bounded in time (about 20 s on two cores); set
SKSELFLABEL_FUZZ_SCALE=10 for ten times as many examples, drawn afresh.
"""
import copy
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from skselflabel import SelfLabelClusterer, SinkhornAssigner, sinkhorn_knopp

# The exceptions the API documents (docs/errors.md). scikit-learn's InvalidParameterError
# and NotFittedError are ValueErrors.
ALLOWED = (ValueError, TypeError, FloatingPointError, MemoryError)
SCALE = int(os.environ.get("SKSELFLABEL_FUZZ_SCALE", "1"))


def fuzz(n):
    return settings(max_examples=n * SCALE, deadline=None, derandomize=SCALE == 1,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def _call(fn):
    """(result, None) or (None, exception) for an allowed exception with a message."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn()
    except ALLOWED as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        event(f"{type(exc).__name__}: {' '.join(str(exc).split()[:4])}")  # --hypothesis-show-statistics
        return None, exc
    event("returned")
    return out, None


# ---------------------------------------------------------------------------- values
special = st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e30, 1e-30, 0.0, -0.0])
plain = st.floats(-20, 20, allow_nan=False, width=32)
values = st.one_of(plain, plain, plain, special)


def mostly(valid, invalid):
    """``valid`` nine times in ten: most calls should get past validation."""
    return st.one_of(*[valid] * 9, invalid)


@st.composite
def score_arrays(draw):
    """Score matrices of many forms: dtypes, shapes (some not 2-D or empty), bad values,
    numpy or torch, contiguous or not, read-only."""
    if draw(st.integers(0, 2)):          # two in three: a proper matrix
        shape = (draw(st.integers(1, 40)), draw(st.integers(1, 8)))
    else:
        ndim = draw(st.sampled_from([1, 2, 3]))
        shape = tuple(draw(st.integers(0, 6)) for _ in range(ndim))
    dtype = draw(mostly(st.sampled_from([np.float32, np.float64]),
                        st.sampled_from([np.float16, np.int32, np.bool_, np.complex64])))
    a = draw(arrays(np.float64, shape, elements=plain if draw(st.integers(0, 3)) else values))
    with np.errstate(all="ignore"):
        a = a.astype(dtype) if dtype != np.bool_ else a > 0
    form = draw(st.sampled_from(["numpy", "torch", "read-only", "transposed", "list"]))
    if form == "torch":
        return torch.from_numpy(np.ascontiguousarray(a))
    if form == "read-only":
        a.setflags(write=False)
    if form == "transposed" and a.ndim == 2:
        return torch.from_numpy(np.ascontiguousarray(a.T)).T
    if form == "list":
        return a.tolist()
    return a


solver_kwargs = st.fixed_dictionaries({}, optional={
    "lam": mostly(st.floats(0.1, 100), st.sampled_from([0, -1.0, 1e6, np.nan, np.inf, "x"])),
    "tol": mostly(st.floats(1e-4, 0.5), st.sampled_from([0.0, -1.0, np.nan])),
    "max_iter": mostly(st.integers(1, 300), st.sampled_from([0, -2, 2.5, None])),
    "copy": st.booleans(),
    "prior": mostly(st.none(), st.lists(st.one_of(st.floats(0, 5), st.floats(-1, 5), special),
                                        max_size=8)),
    "init_log_v": mostly(st.none(), st.lists(st.one_of(plain, special), max_size=8)),
})


def _check_solution(res, scores, kwargs):
    n, k = scores.shape
    assert res.labels.shape == (n,) and res.labels.dtype == np.int64
    assert ((0 <= res.labels) & (res.labels < k)).all()
    assert res.log_u.shape == (n,) and np.isfinite(res.log_u).all()
    assert res.log_v.shape == (k,) and not np.isnan(res.log_v).any()
    assert not np.isposinf(res.log_v).any()
    assert np.isfinite(res.marginal_error) and res.marginal_error >= 0
    tol = kwargs.get("tol", 1e-3)
    assert res.converged == (res.marginal_error <= tol)
    lam = kwargs.get("lam", 25.0)
    if res.converged and lam * np.abs(scores).max() < 1e8:
        # The plan rebuilt in float64 from the scores as given meets the marginals: to tol,
        # plus the float32 rounding of the kernel's exponents. (For scores near 1e30,
        # lam * score + log_u cancels all float64 digits: a limit of the log_u form.)
        prior = kwargs.get("prior")
        p = np.full(k, 1.0 / k) if prior is None else np.asarray(prior) / np.sum(prior)
        with np.errstate(over="ignore"):
            Q = np.exp(lam * scores + res.log_u[:, None] + res.log_v)
        rows = np.abs(Q.sum(1) * n - 1).max()
        cols = np.abs(Q.sum(0)[p > 0] / p[p > 0] - 1).max()
        assert max(rows, cols) <= 1.01 * tol + 5e-5, (rows, cols, tol)


@fuzz(300)
@given(scores=score_arrays(), kwargs=solver_kwargs)
def test_sinkhorn_knopp_returns_a_valid_solution_or_says_why_not(scores, kwargs):
    before = copy.deepcopy(scores)
    res, exc = _call(lambda: sinkhorn_knopp(scores, **kwargs))
    if res is not None:
        _check_solution(res, np.asarray(before.numpy() if torch.is_tensor(before) else before,
                                        dtype=np.float64), kwargs)
    if exc is not None or kwargs.get("copy", True):
        # Scores are only written when the caller allowed it (copy=False) and it worked.
        as_array = (lambda a: a.numpy()) if torch.is_tensor(scores) else np.asarray
        np.testing.assert_array_equal(as_array(scores), as_array(before))


assigner_params = st.fixed_dictionaries({}, optional={
    "lam": mostly(st.floats(0.1, 100), st.sampled_from([0, -1.0, "x"])),
    "input": mostly(st.sampled_from(["logits", "proba", "distance"]), st.just("scores")),
    "tol": mostly(st.floats(1e-4, 0.2), st.just(-0.1)),
    "max_iter": mostly(st.integers(1, 200), st.just(0)),
    "prior": mostly(st.none(), st.lists(st.floats(-1, 3), max_size=8)),
})


@fuzz(120)
@given(X=score_arrays(), params=assigner_params, new=score_arrays())
def test_sinkhorn_assigner_fits_and_assigns_or_says_why_not(X, params, new):
    est = SinkhornAssigner(**params)
    fitted, exc = _call(lambda: est.fit(X))
    if fitted is None:
        return
    k = fitted.n_features_in_
    assert fitted.labels_.shape[0] == np.asarray(fitted.labels_).size
    assert ((0 <= fitted.labels_) & (fitted.labels_ < k)).all()
    state = copy.deepcopy(vars(fitted))
    for method in ("transform", "predict"):
        out, exc = _call(lambda: getattr(fitted, method)(new))
        if out is not None and method == "transform":
            assert np.isfinite(out).all() and np.allclose(out.sum(1), 1.0)
        if out is not None and method == "predict":
            assert ((0 <= out) & (out < k)).all()
    assert vars(fitted).keys() == state.keys()
    np.testing.assert_array_equal(fitted.log_v_, state["log_v_"])


# ---------------------------------------------------------------------------- estimator
@st.composite
def training_data(draw, n_features=None):
    """Tables and images of many shapes and dtypes, some with bad values; with
    ``n_features``, mostly tables of that width."""
    kinds = ["table"] * (15 if n_features else 6) + ["gray", "channels", "channels-last",
                                                      "1-D", "5-D"]
    kind = draw(st.sampled_from(kinds))
    n = draw(mostly(st.integers(8, 24), st.integers(0, 7)))
    width = n_features or draw(st.integers(1, 5))
    shape = {"table": (n, draw(mostly(st.just(width), st.integers(0, 6)))),
             "gray": (n, 6, 6), "channels": (n, draw(st.sampled_from([1, 3])), 6, 6),
             "channels-last": (n, 6, 6, 3), "1-D": (n,), "5-D": (n, 1, 2, 2, 2)}[kind]
    X = draw(arrays(np.float64, shape, elements=plain if draw(st.integers(0, 3)) else values))
    dtype = draw(mostly(st.sampled_from([np.float32, np.float64]),
                        st.sampled_from([np.int64, np.bool_, object])))
    with np.errstate(all="ignore"):
        X = X.astype(dtype)
    return torch.from_numpy(X) if dtype != object and draw(st.booleans()) else X


estimator_params = st.fixed_dictionaries({}, optional={
    "n_clusters": mostly(st.integers(1, 6), st.sampled_from([0, -1, 40])),
    "n_heads": mostly(st.integers(1, 2), st.just(0)),
    "batch_size": mostly(st.one_of(st.integers(2, 40), st.just("auto")), st.just(1)),
    "optimizer": mostly(st.sampled_from(["adam", "sgd", "adamw"]), st.just("adagrad")),
    "lr": mostly(st.one_of(st.just("auto"), st.floats(1e-5, 0.5)),
                 st.sampled_from([0.0, -1.0, 1e3])),
    "n_neighbors": mostly(st.one_of(st.integers(0, 30), st.just("auto")), st.just(-1)),
    "diffusion_steps": mostly(st.one_of(st.integers(0, 3), st.just("auto")), st.just(-1)),
    "neighbor_prob": mostly(st.one_of(st.floats(0, 1), st.just("auto")), st.just(1.5)),
    "neighbor_recall": mostly(st.floats(0.5, 1.0), st.sampled_from([0.0, -0.1, 1.5, "x"])),
    "backbone": mostly(st.sampled_from(["auto", "mlp", "cnn"]), st.just("resnet")),
    "device": mostly(st.sampled_from(["cpu", "auto"]),
                     st.sampled_from(["meta", "mps", "cuda:3", "tpu"])),
})


def _fingerprint(est):
    """What a call must not change: fitted attributes and the weights."""
    state = {k: copy.deepcopy(v) for k, v in vars(est).items()
             if k not in ("backbone_", "heads_", "history_")}
    weights = [p.detach().clone() for p in est.backbone_.parameters()]
    weights += [p.detach().clone() for p in est.heads_.parameters()]
    return state, weights, len(est.history_)


def _same(a, b):
    (state_a, weights_a, hist_a), (state_b, weights_b, hist_b) = a, b
    assert state_a.keys() == state_b.keys() and hist_a == hist_b
    for key, value in state_a.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, state_b[key])
    assert all(torch.equal(x, y) for x, y in zip(weights_a, weights_b))


@pytest.fixture(scope="module")
def fitted():
    X = np.random.default_rng(0).standard_normal((60, 3)).astype(np.float32)
    return SelfLabelClusterer(3, max_epochs=1, n_label_updates=1, random_state=0).fit(X)


@fuzz(60)
@given(X=training_data(), params=estimator_params)
def test_fit_gives_a_valid_model_or_says_why_and_changes_nothing(fitted, X, params):
    est = copy.deepcopy(fitted).set_params(max_epochs=1, n_label_updates=1, **params)
    before = _fingerprint(est)
    out, exc = _call(lambda: est.fit(X))
    if exc is not None:
        _same(before, _fingerprint(est))          # a failed fit is no fit at all
        return
    n = len(X)
    labels = est.labels_
    assert labels.shape == (n,) and ((0 <= labels) & (labels < est.n_clusters)).all()
    assert est.self_labels_.shape == (est.n_heads, n)
    predicted, _ = _call(lambda: est.predict(X))
    np.testing.assert_array_equal(predicted, labels)
    proba, _ = _call(lambda: est.predict_proba(X))
    assert np.isfinite(proba).all() and np.allclose(proba.sum(1), 1.0, atol=1e-5)
    assert np.isfinite(est.transform(X)).all()


@st.composite
def valid_fits(draw):
    """Inputs and parameters the docs call valid: finite tables or images of a real float
    dtype, numpy or torch, at least as many samples as clusters, parameters in range."""
    kind = draw(st.sampled_from(["table", "table", "gray", "channels"]))
    n = draw(st.integers(8, 30))
    shape = {"table": (n, draw(st.integers(1, 6))), "gray": (n, 6, 6),
             "channels": (n, draw(st.sampled_from([1, 3])), 6, 6)}[kind]
    X = draw(arrays(np.float64, shape, elements=plain)).astype(
        draw(st.sampled_from([np.float32, np.float64])))
    params = {
        "n_clusters": draw(st.integers(1, min(5, n))),
        "n_heads": draw(st.integers(1, 2)),
        "batch_size": draw(st.one_of(st.just("auto"), st.integers(2, 40))),
        "optimizer": draw(st.sampled_from(["adam", "adamw", "sgd"])),
        "n_neighbors": draw(st.one_of(st.just("auto"), st.integers(0, 12))),
        "diffusion_steps": draw(st.one_of(st.just("auto"), st.integers(0, 3))),
        "neighbor_prob": draw(st.one_of(st.just("auto"), st.floats(0, 1))),
        "neighbor_recall": draw(st.floats(0.01, 1.0)),
        "backbone": draw(st.sampled_from(["auto", "cnn"] if kind != "table" else
                                         ["auto", "mlp"])),
    }
    return (torch.from_numpy(X) if draw(st.booleans()) else X), params


@fuzz(40)
@given(case=valid_fits())
def test_valid_input_fits_and_predicts(case):
    # No exception is allowed here: these are inputs and parameters the docs accept.
    X, params = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")           # duplicates may leave clusters empty
        est = SelfLabelClusterer(max_epochs=1, n_label_updates=1, random_state=0,
                                 device="cpu", **params).fit(X)
        n, k = len(X), params["n_clusters"]
        assert est.labels_.shape == (n,) and ((0 <= est.labels_) & (est.labels_ < k)).all()
        assert est.self_labels_.shape == (params["n_heads"], n)
        np.testing.assert_array_equal(est.predict(X), est.labels_)
        proba = est.predict_proba(X)
        assert proba.shape == (n, k) and np.allclose(proba.sum(1), 1.0, atol=1e-5)
        assert np.isfinite(est.transform(X)).all()


@fuzz(100)
@given(X=training_data(n_features=3), method=st.sampled_from(["predict", "predict_proba",
                                                              "transform", "score",
                                                              "fit_predict"]))
def test_inference_and_refits_never_leave_a_fitted_estimator_changed(fitted, X, method):
    target = copy.deepcopy(fitted) if method == "fit_predict" else fitted
    before = _fingerprint(target)
    out, exc = _call(lambda: getattr(target, method)(X))
    if method != "fit_predict" or exc is not None:
        _same(before, _fingerprint(target))
    if out is not None and method != "score":
        assert np.isfinite(np.asarray(out, dtype=np.float64)).all()
    if out is not None and method == "score":
        assert 0 <= out <= 1                    # a share of neighbour pairs


# ---------------------------------------------------------------------------- crashes
CHILD = textwrap.dedent("""
    import sys, warnings
    import numpy as np, torch
    from hypothesis import given, settings, strategies as st
    from skselflabel import sinkhorn_knopp
    from skselflabel._solver import sinkhorn as _sinkhorn

    _sinkhorn._WARMUP_ELEMENTS = 2_000      # small matrices take the in-place path
    folder, n_examples = sys.argv[1], int(sys.argv[2])

    @settings(max_examples=n_examples, deadline=None, derandomize=n_examples <= 60)
    @given(n=st.integers(1, 400), k=st.integers(1, 12), mode=st.sampled_from(["r", "r+", "c"]),
           dtype=st.sampled_from(["float32", "float64", "float16"]),
           view=st.sampled_from(["whole", "rows", "columns"]), seed=st.integers(0, 9))
    def solve_over_a_memory_map(n, k, mode, dtype, view, seed):
        path = f"{folder}/s-{n}-{k}-{dtype}.npy"
        np.save(path, np.random.default_rng(seed).standard_normal((n, k)).astype(dtype))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = torch.from_numpy(np.load(path, mmap_mode=mode))
            t = {"whole": t, "rows": t[n // 3:], "columns": t[:, : max(1, k // 2)]}[view]
            if t.shape[0] == 0:
                return
            res = sinkhorn_knopp(t, lam=10.0, copy=False)
        assert res.labels.shape == (t.shape[0],)

    solve_over_a_memory_map()
    print("no crash")
""")


def test_solving_in_place_over_memory_maps_never_crashes(tmp_path):
    # Read-only ('r'), writable ('r+') and copy-on-write ('c') maps, whole or sliced,
    # solved with copy=False: the family that used to end the process (issue #10, item 1).
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), str(60 * SCALE)],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0 and "no crash" in proc.stdout, (proc.returncode,
                                                                proc.stderr[-3000:])
