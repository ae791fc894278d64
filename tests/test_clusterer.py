"""SelfLabelClusterer: scikit-learn compliance, inputs, persistence, determinism, Ctrl-C."""
import os
import pickle
import random
import signal
import threading
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits, make_blobs
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import estimator_checks
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from skselflabel import SelfLabelClusterer, SinkhornAssigner
from skselflabel.metrics import cluster_accuracy, neighbor_agreement

FAST = dict(max_epochs=4, random_state=0)


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=90, centers=3, n_features=4, cluster_std=0.6, random_state=0)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def images():
    rng = np.random.RandomState(0)
    X = rng.rand(48, 8, 8).astype(np.float32)
    X[:16, :4] += 2.0  # three visibly different groups
    X[16:32, :, :4] += 2.0
    return X


@pytest.fixture(scope="module")
def fitted(blobs):
    return SelfLabelClusterer(n_clusters=3, **FAST).fit(blobs[0])


# --------------------------------------------------------------------- sklearn checks
@parametrize_with_checks(
    [SelfLabelClusterer(n_clusters=3, max_epochs=5, random_state=0)],
    expected_failed_checks=lambda est: {},
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


@pytest.mark.parametrize(
    "check_name",
    [
        "check_param_validation",
        "check_set_output_transform",
        "check_set_output_transform_pandas",
        "check_global_output_transform_pandas",
        "check_transformer_get_feature_names_out",
        "check_transformer_get_feature_names_out_pandas",
        "check_get_feature_names_out_error",
        "check_dataframe_column_names_consistency",
    ],
)
def test_checks_not_run_by_check_estimator(check_name):
    est = SelfLabelClusterer(n_clusters=3, max_epochs=3, random_state=0)
    with warnings.catch_warnings():
        # These checks deliberately mix named and unnamed inputs.
        warnings.filterwarnings("ignore", message=".*feature names", category=UserWarning)
        getattr(estimator_checks, check_name)(type(est).__name__, est)


# --------------------------------------------------------------------- fitted state
def test_fitted_attributes(fitted, blobs):
    X, y = blobs
    n = len(X)
    assert fitted.labels_.shape == (n,)
    np.testing.assert_array_equal(fitted.labels_, fitted.predict(X))
    assert fitted.self_labels_.shape == (1, n)
    # Self-labels are balanced: each cluster gets a third of the samples.
    assert np.bincount(fitted.self_labels_[0], minlength=3).min() >= n // 3 - 2
    assert fitted.n_iter_ == 4
    assert list(fitted.history_.columns) == ["epoch", "loss", "label_change", "label_error",
                                             "label_iterations", "label_moved", "seconds"]
    assert fitted.history_["label_moved"].between(0, 1).all()
    assert (fitted.history_["label_iterations"] >= 1).all()     # every step's solve ran
    assert (fitted.history_["label_error"] <= 1e-2).all()       # every step converged
    assert fitted.history_["epoch"].tolist() == [1, 2, 3, 4]
    assert np.isfinite(fitted.history_[["loss", "label_change"]].to_numpy()).all()
    assert fitted.n_features_in_ == 4
    assert isinstance(fitted.backbone_, nn.Module) and len(fitted.heads_) == 1
    proba = fitted.predict_proba(X)
    assert proba.shape == (n, 3)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)
    np.testing.assert_array_equal(proba.argmax(1), fitted.labels_)
    assert fitted.transform(X).shape == (n, fitted.get_feature_names_out().shape[0])


def test_clusters_blobs(blobs):
    X, y = blobs
    clu = SelfLabelClusterer(n_clusters=3, max_epochs=15, random_state=0).fit(X)
    assert cluster_accuracy(y, clu.labels_) > 0.95


def test_score_is_the_neighbour_agreement_of_the_clusters(fitted, blobs):
    X = blobs[0]
    s = fitted.score(X)
    assert s == pytest.approx(neighbor_agreement(X, fitted.predict(X), n_clusters=3))
    assert 0.9 < s <= 1
    # A network trained on the data cuts fewer neighbour pairs than an untrained one.
    untrained = SelfLabelClusterer(n_clusters=3, max_epochs=1, lr=1e-6, n_init=1,
                                   random_state=0)
    assert s > untrained.fit(X).score(X) + 0.05


def test_fit_predict_equals_labels(blobs):
    clu = SelfLabelClusterer(n_clusters=3, **FAST)
    np.testing.assert_array_equal(clu.fit_predict(blobs[0]), clu.labels_)


def test_prior_shapes_the_self_labels(blobs):
    X = blobs[0]
    # Without diffusion: diffused probabilities of well separated blobs tie within a blob,
    # and hard argmax labels cannot split tied samples to match a prior.
    clu = SelfLabelClusterer(n_clusters=3, diffusion_steps=0, **FAST,
                             assigner=SinkhornAssigner(lam=10, prior=[0.6, 0.2, 0.2])).fit(X)
    counts = np.bincount(clu.self_labels_[0], minlength=3)
    np.testing.assert_allclose(counts / len(X), [0.6, 0.2, 0.2], atol=0.07)


# --------------------------------------------------------------------- several heads
class _SpyAssigner(SinkhornAssigner):
    """Records every self-label call of the estimator."""

    calls = []

    def assign_tensor(self, scores, *, uniform=False, copy=True, **kwargs):
        self.calls.append((scores.data_ptr(), tuple(scores.shape), copy, uniform))
        return super().assign_tensor(scores, uniform=uniform, copy=copy, **kwargs)


def test_heads_are_self_labelled_one_at_a_time_in_one_buffer(blobs):
    X = blobs[0]
    spy = _SpyAssigner(lam=10.0, tol=1e-2)
    calls = spy.calls
    calls.clear()
    clu = SelfLabelClusterer(n_clusters=3, n_heads=3, n_label_updates=4, assigner=spy,
                             **FAST).fit(X)
    # 90 samples in batches of 16: 6 steps per epoch, 24 in all; updates at (t/3)^2 of
    # that, i.e. steps 0, 3 and 11 (the one at the end is the final update) -> 4 updates,
    # each solving the 3 heads one after another.
    assert len(calls) == 12
    assert len({ptr for ptr, *_ in calls}) == 1  # the same preallocated buffer every time
    assert all(shape == (len(X), 3) and copy is False for _, shape, copy, _ in calls)
    # The first head uses the assigner's prior, the auxiliary heads equal sizes.
    assert [uniform for *_, uniform in calls[:3]] == [False, True, True]
    assert clu.self_labels_.shape == (3, len(X))
    for row in clu.self_labels_:
        assert np.bincount(row, minlength=3).min() >= len(X) // 3 - 2


# --------------------------------------------------------------------- meta-estimators
def test_trained_features_make_a_better_probe_than_untrained_ones():
    # A probe on three labelled digits per class: the learned representation groups the
    # digits, so it beats the same network untrained (lr=1e-12: its initial weights) and
    # the pixels by a clear margin; on easy data (separated blobs) all three reach 0.9.
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    rng = np.random.default_rng(0)
    labelled = np.concatenate([rng.choice(np.flatnonzero(y == c), 3, replace=False)
                               for c in range(10)])
    rest = np.setdiff1d(np.arange(len(X)), labelled)

    def probe(clusterer):
        pipe = make_pipeline(clusterer, LogisticRegression(max_iter=2000)) if clusterer \
            else LogisticRegression(max_iter=2000)
        return pipe.fit(X[labelled], y[labelled]).score(X[rest], y[rest])

    trained = SelfLabelClusterer(n_clusters=10, max_epochs=5, random_state=0).fit(X)
    untrained = SelfLabelClusterer(n_clusters=10, max_epochs=1, lr=1e-12,
                                   random_state=0).fit(X)
    scores = {name: probe(FrozenEstimator(est)) for name, est in
              (("trained", trained), ("untrained", untrained))}
    scores["pixels"] = probe(None)
    assert scores["trained"] > scores["untrained"] + 0.08, scores
    assert scores["trained"] > scores["pixels"] + 0.04, scores


def test_grid_search_in_parallel_matches_sequential(blobs):
    # Worker processes (pickled estimators, other threads) fit the same clones as the
    # parent would: identical scores and choice, and the probe separates the blobs.
    X, y = blobs
    pipe = make_pipeline(StandardScaler(), SelfLabelClusterer(n_clusters=3, **FAST),
                         LogisticRegression())
    grid = {"selflabelclusterer__assigner__lam": [10.0, 25.0],
            "selflabelclusterer__n_clusters": [2, 3]}
    parallel = GridSearchCV(pipe, grid, cv=2, n_jobs=2).fit(X, y)
    sequential = GridSearchCV(pipe, grid, cv=2, n_jobs=1).fit(X, y)
    np.testing.assert_array_equal(parallel.cv_results_["mean_test_score"],
                                  sequential.cv_results_["mean_test_score"])
    assert parallel.best_params_ == sequential.best_params_
    assert parallel.best_score_ > 0.9


def test_grid_search_over_the_default_assigner(blobs):
    search = GridSearchCV(SelfLabelClusterer(n_clusters=3, **FAST),
                          {"assigner__lam": [10.0, 25.0]}, cv=2).fit(blobs[0])
    assert np.all((search.cv_results_["mean_test_score"] > 0.9)
                  & (search.cv_results_["mean_test_score"] <= 1))
    assert search.best_estimator_.assigner.lam == search.best_params_["assigner__lam"]
    # set_params on the default assigner makes it explicit and leaves other instances alone.
    est = SelfLabelClusterer().set_params(assigner__lam=3.0, assigner__prior=[1] * 10)
    assert isinstance(est.assigner, SinkhornAssigner) and est.assigner.lam == 3.0
    assert est.assigner.tol == 1e-2 and SelfLabelClusterer().assigner is None


def test_assigner_lam_reaches_the_self_label_step(blobs):
    spy = _SpyAssigner(lam=3.0)
    seen = []
    spy.assign_tensor = lambda scores, **kw: seen.append(kw) or SinkhornAssigner.assign_tensor(
        spy, scores, **kw)
    SelfLabelClusterer(n_clusters=3, assigner=spy, **FAST).fit(blobs[0])
    assert seen and all(kw["copy"] is False for kw in seen)
    with pytest.raises(ValueError, match="input='logits'"):
        SelfLabelClusterer(assigner=SinkhornAssigner(input="proba"), **FAST).fit(blobs[0])


def test_clone_gives_an_unfitted_copy(fitted):
    c = clone(fitted)
    assert c.get_params() == fitted.get_params()
    with pytest.raises(NotFittedError):
        c.predict(np.zeros((2, 4)))


# --------------------------------------------------------------------- persistence
@pytest.mark.parametrize("dumps, loads", [(pickle.dumps, pickle.loads), ("joblib", "joblib")])
def test_pickle_round_trip(fitted, blobs, dumps, loads, tmp_path):
    X = blobs[0]
    if dumps == "joblib":
        joblib.dump(fitted, tmp_path / "m.joblib")
        back = joblib.load(tmp_path / "m.joblib")
    else:
        back = loads(dumps(fitted))
    np.testing.assert_array_equal(back.predict(X), fitted.predict(X))
    np.testing.assert_array_equal(back.transform(X), fitted.transform(X))


def test_model_trained_on_a_gpu_predicts_on_a_cpu_only_machine(fitted, blobs):
    # Pretend the model was trained on CUDA: on this machine it must fall back to the CPU.
    gpu_made = pickle.loads(pickle.dumps(fitted))
    gpu_made._device = "cuda:0"
    back = pickle.loads(pickle.dumps(gpu_made))
    if not torch.cuda.is_available():
        assert back.heads_[0].weight.device == torch.device("cpu")
        assert not back.backbone_.training
    np.testing.assert_array_equal(back.predict(blobs[0]), fitted.labels_)
    state = gpu_made.__getstate__()
    assert all(p.device.type == "cpu" for p in state["backbone_"].parameters())


# --------------------------------------------------------------------- inputs
def test_pandas_in_and_out(blobs):
    X = pd.DataFrame(blobs[0], columns=["a", "b", "c", "d"])
    clu = SelfLabelClusterer(n_clusters=3, **FAST).fit(X)
    np.testing.assert_array_equal(clu.feature_names_in_, ["a", "b", "c", "d"])
    clu.set_output(transform="pandas")
    out = clu.transform(X)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == list(clu.get_feature_names_out())
    assert out.columns[0] == "selflabelclusterer0"
    assert (out.index == X.index).all()


def test_torch_tensor_input_equals_numpy_input(blobs):
    X = blobs[0]
    a = SelfLabelClusterer(n_clusters=3, **FAST).fit(X)
    b = SelfLabelClusterer(n_clusters=3, **FAST).fit(torch.from_numpy(X).requires_grad_())
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.predict(X), b.predict(torch.from_numpy(X)))


def test_images_3d_and_4d_use_the_cnn(images):
    a = SelfLabelClusterer(n_clusters=3, **FAST).fit(images)
    b = SelfLabelClusterer(n_clusters=3, **FAST).fit(images[:, None])
    assert type(a.backbone_).__name__ == "SmallCNN"
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert a.transform(images).shape == (48, 1408)     # SmallCNN.represent: pooled conv maps
    assert a.predict(images[:, None]).shape == (48,)  # 3-D fit accepts (n, 1, h, w)
    # On the CPU the CNN runs channels-last (oneDNN's fast layout), also once unpickled.
    conv = a.backbone_.block2[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    back = pickle.loads(pickle.dumps(a))
    assert back.backbone_.block2[0].weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(back.transform(images), a.transform(images))
    with pytest.raises(ValueError, match="fitted on samples of shape"):
        a.predict(np.zeros((2, 9, 8), dtype=np.float32))


def test_user_module_is_copied_not_trained_in_place(blobs):
    user = nn.Sequential(nn.Linear(4, 16), nn.ReLU())
    before = [p.detach().clone() for p in user.parameters()]
    clu = SelfLabelClusterer(n_clusters=3, backbone=user, **FAST).fit(blobs[0])
    assert clu.backbone_ is not user
    assert all(torch.equal(a, b) for a, b in zip(before, user.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(before, clu.backbone_.parameters()))
    assert clu.transform(blobs[0]).shape == (90, 16)
    assert clu.get_params()["backbone"] is user  # parameters stored as given


def test_callable_backbone(blobs):
    def build(shape):
        return nn.Sequential(nn.Linear(shape[0], 8), nn.BatchNorm1d(8), nn.ReLU())

    a = SelfLabelClusterer(n_clusters=3, backbone=build, **FAST).fit(blobs[0])
    b = SelfLabelClusterer(n_clusters=3, backbone=build, **FAST).fit(blobs[0])
    np.testing.assert_array_equal(a.transform(blobs[0]), b.transform(blobs[0]))


def test_user_augmentation_is_applied(blobs):
    calls = []

    def aug(x):
        calls.append(x.shape)
        return x + 0.5

    X = blobs[0]
    augmented = SelfLabelClusterer(n_clusters=3, augment=aug, **FAST).fit(X)
    plain = SelfLabelClusterer(n_clusters=3, **FAST).fit(X)
    # Called once per gradient step on (batch, features) tensors...
    assert len(calls) == 4 * 6 and all(len(s) == 2 and s[1] == 4 for s in calls)
    # ... and its output is what the network trained on.
    assert not np.allclose(augmented.transform(X), plain.transform(X))


# --------------------------------------------------------------------- determinism
def test_same_random_state_same_result_and_global_rngs_untouched(images):
    torch_state = torch.random.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    py_state = random.getstate()
    fits = [SelfLabelClusterer(n_clusters=3, n_heads=2, **FAST).fit(images) for _ in range(2)]
    np.testing.assert_array_equal(fits[0].labels_, fits[1].labels_)
    np.testing.assert_array_equal(fits[0].transform(images), fits[1].transform(images))
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert random.getstate() == py_state
    other = SelfLabelClusterer(n_clusters=3, n_heads=2, max_epochs=4, random_state=1).fit(images)
    assert not np.array_equal(other.transform(images), fits[0].transform(images))


def test_warm_start_continues_training(blobs):
    clu = SelfLabelClusterer(n_clusters=3, warm_start=True, **FAST).fit(blobs[0])
    first = [p.detach().clone() for p in clu.backbone_.parameters()]
    first_loss = clu.history_["loss"].iloc[-1]
    clu.fit(blobs[0])
    assert clu.history_["epoch"].tolist() == list(range(1, 9))
    # Training went on from the first fit's weights: its loss starts where that one ended.
    assert clu.history_["loss"].iloc[4] < 1.5 * first_loss
    assert not all(torch.equal(a, b) for a, b in zip(first, clu.backbone_.parameters()))


# --------------------------------------------------------------------- Ctrl-C
class _InterruptingNet(nn.Module):
    """Backbone that interrupts at its ``at``-th training forward pass."""

    def __init__(self, at, how):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.at, self.how, self.calls = at, how, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                if self.how == "raise":
                    raise KeyboardInterrupt
                os.kill(os.getpid(), signal.SIGINT)  # as a real Ctrl-C would
        return self.net(x)


@pytest.mark.parametrize("how", ["raise", "signal"])
def test_ctrl_c_leaves_a_fitted_estimator(blobs, how):
    X = blobs[0]
    clu = SelfLabelClusterer(n_clusters=3, backbone=_InterruptingNet(at=10, how=how),
                             batch_size=30, max_epochs=20, random_state=0)
    with pytest.warns(UserWarning, match=r"interrupted .* at epoch 4 of 20, after batch 1 of 3"):
        clu.fit(X)
    assert clu.n_iter_ == 4
    assert clu.backbone_.calls == 10  # training stopped right there
    assert len(clu.history_) == 4  # three complete epochs and the partial fourth
    np.testing.assert_array_equal(clu.predict(X), clu.labels_)
    # The handler is gone after fit: Ctrl-C behaves normally again.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --------------------------------------------------------------------- progress output
def test_verbose_zero_is_silent_and_verbose_one_reports(blobs, capsys):
    SelfLabelClusterer(n_clusters=3, verbose=0, **FAST).fit(blobs[0])
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    SelfLabelClusterer(n_clusters=3, verbose=1, **FAST).fit(blobs[0])
    out = capsys.readouterr()
    assert "loss" in out.out + out.err


def test_verbose_without_tqdm_prints_lines(blobs, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError("no tqdm")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    SelfLabelClusterer(n_clusters=3, verbose=1, **FAST).fit(blobs[0])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("SelfLabelClusterer epoch 4/4")


# --------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "params, X, error, match",
    [
        ({}, np.zeros((4, 2, 2, 2, 2)), ValueError, "got 5-D input"),
        ({"assigner": SinkhornAssigner(prior=[0.5, 0.5])}, None, ValueError,
         "length n_clusters=3"),
        ({"assigner": SinkhornAssigner(prior=[1.0, -1.0, 1.0])}, None, ValueError,
         "non-negative"),
        ({"assigner": SinkhornAssigner(lam=-1.0)}, None, ValueError, "lam"),
        ({"backbone": "cnn"}, None, ValueError, "needs images"),
        ({"backbone": lambda shape: 3}, None, TypeError, "must return a torch.nn.Module"),
        ({"device": "cuda:7" if not torch.cuda.is_available() else "nope"}, None, ValueError,
         "device"),
        ({}, np.array([[1.0, np.nan], [0.0, 1.0]]), ValueError, "NaN"),
        ({}, np.zeros((1, 4)), ValueError, "1 sample"),
    ],
)
def test_bad_input_errors(blobs, params, X, error, match):
    X = blobs[0] if X is None else X
    with pytest.raises(error, match=match):
        SelfLabelClusterer(n_clusters=3, **FAST).set_params(**params).fit(X)


def test_predict_errors(fitted):
    with pytest.raises(ValueError, match="features"):
        fitted.predict(np.zeros((3, 5)))
    with pytest.raises(NotFittedError):
        SelfLabelClusterer().transform(np.zeros((3, 5)))


def test_diffusion_and_neighbor_views_change_the_result(blobs):
    base = SelfLabelClusterer(n_clusters=3, **FAST).fit(blobs[0]).transform(blobs[0])
    for params in [{"diffusion_steps": 0}, {"neighbor_prob": 0.0}, {"n_neighbors": 0}]:
        other = SelfLabelClusterer(n_clusters=3, **FAST, **params).fit(blobs[0])
        assert not np.array_equal(base, other.transform(blobs[0])), params


# ------------------------------------------------------------------ neighbour graph space
def test_neighbor_features_auto_uses_gradients_for_images_of_16_pixels_or_more(monkeypatch):
    import skselflabel._fit.graph as graph_module

    seen = []
    real = graph_module.gradient_histograms
    monkeypatch.setattr(graph_module, "gradient_histograms",
                        lambda x: seen.append(tuple(x.shape)) or real(x))
    rng = np.random.default_rng(0)
    big = rng.random((40, 1, 16, 16)).astype(np.float32)
    small = rng.random((40, 1, 8, 8)).astype(np.float32)
    SelfLabelClusterer(n_clusters=2, max_epochs=1, random_state=0).fit(big)
    assert seen and {shape[1:] for shape in seen} == {(1, 16, 16)}
    # The memory plan's width (one blank image), the width probe (two), one pass over
    # the 40 images.
    assert sum(shape[0] for shape in seen) == 1 + 2 + 40
    seen.clear()
    SelfLabelClusterer(n_clusters=2, max_epochs=1, random_state=0).fit(small)
    assert seen == []                                   # 8x8: pixels
    SelfLabelClusterer(n_clusters=2, max_epochs=1, random_state=0,
                       neighbor_features="gradients").fit(small)
    assert {shape[1:] for shape in seen} == {(1, 8, 8)}


def test_neighbor_features_embedding_builds_the_graph():
    # A space where each class collapses to a point: the graph links only same-class rows,
    # so graph-smoothed self-labels recover the classes of the digits table.
    X, y = load_digits(return_X_y=True)
    oracle = np.eye(10, dtype=np.float32)[y] * 10
    est = SelfLabelClusterer(n_clusters=10, max_epochs=10, random_state=0,
                             neighbor_features=oracle).fit(X)
    assert cluster_accuracy(y, est.labels_) > 0.97
    with pytest.raises(ValueError, match=r"shape \(n_samples, n_features\) = \(1797, m\)"):
        SelfLabelClusterer(n_clusters=10, max_epochs=1, neighbor_features=oracle[:10]).fit(X)


def test_neighbor_features_callable_embeds_each_batch():
    X, y = load_digits(return_X_y=True)
    calls = []

    def first_pixels(batch):
        calls.append(tuple(batch.shape))
        return batch[:, :8]

    SelfLabelClusterer(n_clusters=10, max_epochs=1, random_state=0,
                       neighbor_features=first_pixels).fit(X)
    assert calls and all(shape[1] == 64 for shape in calls)
    assert sum(shape[0] for shape in calls[1:]) == len(X)     # after a 2-sample probe


@pytest.mark.parametrize("space, match", [
    ("gradients", "needs images"),
    (lambda batch: batch[:1], r"\(n_samples, n_features\) tensor for a batch of 2"),
    (lambda X_t: X_t * float("nan"), "NaN or inf"),
])
def test_neighbor_features_errors(space, match):
    X = np.random.default_rng(0).random((60, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=match):
        SelfLabelClusterer(n_clusters=2, max_epochs=1, neighbor_features=space).fit(X)


# --------------------------------------------------------------------- n_jobs
class _ThreadProbe(nn.Module):
    """An MLP backbone that records, at each forward pass, the torch thread count of the
    thread running it and of a thread started at that moment."""

    seen = []          # shared by every deep copy (a class attribute)

    def __init__(self, n_features):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, 16), nn.ReLU())

    def forward(self, x):
        other = {}
        probe = threading.Thread(target=lambda: other.setdefault("n", torch.get_num_threads()))
        probe.start()
        probe.join()
        _ThreadProbe.seen.append((threading.get_ident(), torch.get_num_threads(), other["n"]))
        return self.net(x)


def _counts_seen(fn):
    _ThreadProbe.seen.clear()
    fn()
    counts = {(own, other) for _, own, other in _ThreadProbe.seen}
    _ThreadProbe.seen.clear()
    return counts


@pytest.mark.parametrize("n_jobs, expected", [(None, 1), (1, 1), (2, 2), (-1, joblib.cpu_count())])
def test_n_jobs_sets_the_threads_of_every_method_for_the_call_only(blobs, n_jobs, expected):
    X = blobs[0]
    default = torch.get_num_threads()
    est = SelfLabelClusterer(n_clusters=3, backbone=_ThreadProbe(X.shape[1]), n_jobs=n_jobs,
                             **FAST)
    methods = [lambda: est.fit(X), lambda: est.predict(X), lambda: est.predict_proba(X),
               lambda: est.transform(X), lambda: est.score(X),
               lambda: est.cluster_examples(X)]
    for method in methods:
        # Inside the call: n_jobs threads here, the default in a thread started meanwhile.
        assert _counts_seen(method) == {(expected, default)}
        assert torch.get_num_threads() == default       # restored afterwards


def test_n_jobs_none_follows_joblib_parallel_config(blobs):
    est = SelfLabelClusterer(n_clusters=3, backbone=_ThreadProbe(blobs[0].shape[1]), **FAST)
    with joblib.parallel_config(n_jobs=2):
        assert {own for own, _ in _counts_seen(lambda: est.fit(blobs[0]))} == {2}


def test_n_jobs_is_restored_when_the_call_fails(fitted):
    default = torch.get_num_threads()
    with pytest.raises(ValueError):
        clone(fitted).set_params(n_jobs=2).fit(np.full((10, 4), np.nan))
    with pytest.raises(ValueError):
        fitted.predict(np.zeros((3, 7)))
    assert torch.get_num_threads() == default


def test_concurrent_fits_keep_their_own_n_jobs(blobs):
    # Two fits at once in two threads, with different n_jobs: neither leaks into the other.
    X = blobs[0]
    _ThreadProbe.seen.clear()
    fits = {n: SelfLabelClusterer(n_clusters=3, backbone=_ThreadProbe(X.shape[1]), n_jobs=n,
                                  **FAST) for n in (1, 2)}
    worker = threading.Thread(target=fits[2].fit, args=(X,))
    worker.start()
    fits[1].fit(X)
    worker.join()
    by_thread = {}
    for ident, own, _ in _ThreadProbe.seen:
        by_thread.setdefault(ident, set()).add(own)
    assert by_thread == {threading.get_ident(): {1}, worker.ident: {2}}


@pytest.mark.parametrize("n_jobs", [0, 1.5, "2"])
def test_n_jobs_errors(blobs, n_jobs):
    with pytest.raises(ValueError, match="n_jobs"):
        SelfLabelClusterer(n_clusters=3, n_jobs=n_jobs, **FAST).fit(blobs[0])


# --------------------------------------------------------------------- cluster examples
def test_cluster_examples_are_the_members_nearest_the_centre(fitted, blobs):
    X = blobs[0]
    examples = fitted.cluster_examples(X, n_examples=5)
    labels, features = fitted.predict(X), fitted.transform(X).astype(np.float64)
    assert len(examples) == fitted.n_clusters
    for k, rows in enumerate(examples):
        members = np.flatnonzero(labels == k)
        assert rows.dtype == np.int64 and len(rows) == min(5, len(members))
        distance = ((features[members] - features[members].mean(0)) ** 2).sum(1)
        # The examples are the nearest members, nearest first.
        np.testing.assert_array_equal(rows, members[np.argsort(distance, kind="stable")[:5]])
        assert set(rows) <= set(members)


def test_cluster_examples_by_confidence(fitted, blobs):
    X = blobs[0]
    examples = fitted.cluster_examples(X, n_examples=4, by="confidence")
    proba, labels = fitted.predict_proba(X), fitted.predict(X)
    for k, rows in enumerate(examples):
        others = np.setdiff1d(np.flatnonzero(labels == k), rows)
        assert (labels[rows] == k).all()
        assert np.all(np.diff(proba[rows, k]) <= 0)        # most confident first
        if len(others):
            assert proba[rows, k].min() >= proba[others, k].max()


def test_cluster_examples_of_empty_and_small_clusters(fitted, blobs):
    # Three samples of one cluster: that cluster has all three, the others none.
    X = blobs[0]
    k = fitted.labels_[0]
    rows = np.flatnonzero(fitted.labels_ == k)[:3]
    examples = fitted.cluster_examples(X[rows], n_examples=10)
    assert [len(e) for e in examples] == [3 if c == k else 0 for c in range(3)]
    assert sorted(examples[k]) == [0, 1, 2]


@pytest.mark.parametrize("kwargs, match", [
    ({"n_examples": 0}, "n_examples"), ({"n_examples": 2.0}, "n_examples"),
    ({"by": "random"}, "by must be"),
])
def test_cluster_examples_errors(fitted, blobs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fitted.cluster_examples(blobs[0], **kwargs)
    with pytest.raises(NotFittedError):
        SelfLabelClusterer().cluster_examples(blobs[0])


# --------------------------------------------------------------------- choosing n_clusters
@pytest.mark.parametrize("n_clusters", [2, 5, 10])
def test_a_network_that_puts_everything_in_one_cluster_scores_one_over_k(blobs,
                                                                          n_clusters):
    # Empty clusters count 0: a collapsed network cannot look good by cutting nothing.
    est = SelfLabelClusterer(n_clusters=n_clusters, **FAST).fit(blobs[0])
    with torch.no_grad():
        est.heads_[0].weight.zero_()
        est.heads_[0].bias.zero_()
    assert est.score(blobs[0]) == pytest.approx(1 / n_clusters)


def test_grid_search_over_n_clusters_scored_against_labels_finds_the_blobs(blobs):
    # The user guide's advice: with a few labels, choose n_clusters by ARI, not by score.
    X, y = blobs
    search = GridSearchCV(SelfLabelClusterer(**FAST), {"n_clusters": [2, 3, 6]}, cv=2,
                          scoring="adjusted_rand_score").fit(X, y)
    assert search.best_params_ == {"n_clusters": 3}
    assert search.cv_results_["mean_test_score"][1] > search.cv_results_["mean_test_score"][0]


def test_get_params_lists_the_default_assigners_parameters():
    params = SelfLabelClusterer().get_params()
    assert params["assigner"] is None and params["assigner__lam"] == 10.0
    assert params["assigner__tol"] == 1e-2
    assert "assigner__lam" not in SelfLabelClusterer().get_params(deep=False)
    # What get_params gives, set_params takes (a default made explicit, same settings).
    est = SelfLabelClusterer().set_params(**params)
    assert est.assigner.get_params() == SinkhornAssigner(lam=10.0, tol=1e-2).get_params()
