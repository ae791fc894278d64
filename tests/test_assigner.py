"""SinkhornAssigner: scikit-learn contract, balance, priors, inputs and outputs."""
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits, make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from skselflabel import SinkhornAssigner

EXPECTED_FAILED = {
    "check_clustering": (
        "the check fits on blob coordinates and expects them grouped by proximity; "
        "SinkhornAssigner reads its columns as per-cluster scores (one column per cluster), "
        "so two coordinate columns mean two score columns, not a geometry to cluster"),
}


@parametrize_with_checks([SinkhornAssigner()],
                         expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def skewed_scores(N=2000, K=5, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((N, K))
    z[:, 0] += 1.5                      # most rows prefer cluster 0
    return z


def test_fit_balances_and_stores_attributes():
    z = skewed_scores()
    assert np.bincount(z.argmax(1)).max() > 1000
    est = SinkhornAssigner(lam=10.0).fit(z)
    counts = np.bincount(est.labels_, minlength=5)
    assert counts.min() >= 350 and counts.max() <= 450
    assert est.log_v_.shape == (5,) and est.n_features_in_ == 5
    assert est.marginal_error_ <= 1e-3 and est.n_iter_ >= 1
    np.testing.assert_array_equal(est.fit_predict(z), est.labels_)


def test_transform_rows_are_independent_distributions():
    z = skewed_scores()
    est = SinkhornAssigner(lam=10.0).fit(z)
    Q = est.transform(z[:50])
    np.testing.assert_allclose(Q.sum(1), 1.0)
    np.testing.assert_allclose(est.transform(z[7:8]), Q[7:8])       # alone or in a batch
    np.testing.assert_array_equal(est.predict(z[:50]), Q.argmax(1))
    # On the training rows the fitted scalings reproduce the balanced labels.
    np.testing.assert_array_equal(est.predict(z), est.labels_)


def test_prior_gives_chosen_sizes():
    z = skewed_scores(3000, 3)
    est = SinkhornAssigner(lam=10.0, prior=[1, 1, 2]).fit(z)
    frac = np.bincount(est.labels_, minlength=3) / 3000
    np.testing.assert_allclose(frac, [0.25, 0.25, 0.5], atol=0.03)


def test_proba_and_distance_inputs():
    z = skewed_scores(600, 4)
    P = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    P[0, 1] = 0.0                                          # zeros are floored, not -inf
    a = SinkhornAssigner(lam=5.0, input="proba").fit(P)
    assert np.isfinite(a.log_v_).all()
    b = SinkhornAssigner(lam=5.0).fit(np.log(np.maximum(P, 1e-300)))
    np.testing.assert_array_equal(a.labels_, b.labels_)
    D = np.sqrt(np.maximum(-z + 10, 0))                      # smaller = closer
    c = SinkhornAssigner(lam=5.0, input="distance").fit(D)
    sigma2 = np.median((D ** 2).min(1))
    assert c.distance_scale_ == pytest.approx(sigma2)
    d = SinkhornAssigner(lam=5.0).fit(-D ** 2 / sigma2)
    np.testing.assert_array_equal(c.labels_, d.labels_)
    # The fitted scale is reused for new rows, so one row's result does not depend on others.
    np.testing.assert_allclose(c.transform(D[:1]), c.transform(D)[:1])
    with pytest.raises(ValueError, match="non-negative"):
        SinkhornAssigner(input="distance").fit(-D)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_kmeans_pipeline_gives_balanced_clusters(scale):
    # The default lam works at any scale of the data: distances are measured in units of
    # the fitted distance_scale_.
    X, _ = make_blobs(n_samples=[500, 100, 50], centers=[[0, 0], [5, 0], [0, 5]],
                      random_state=0)
    pipe = make_pipeline(KMeans(n_clusters=5, n_init=2, random_state=0),
                         SinkhornAssigner(input="distance"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        counts = np.bincount(pipe.fit_predict(X * scale), minlength=5)
    assert counts.min() >= 120 and counts.max() <= 140


def test_default_lam_converges_on_raw_digits_distances():
    X, _ = load_digits(return_X_y=True)
    D = KMeans(n_clusters=50, n_init=1, random_state=0).fit_transform(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        a = SinkhornAssigner(input="distance").fit(D)
    assert a.marginal_error_ <= 1e-3
    counts = np.bincount(a.labels_, minlength=50)
    assert counts.min() >= 30 and counts.max() <= 42


def test_feature_names_and_pandas_output():
    z = pd.DataFrame(skewed_scores(300, 3), columns=["a", "b", "c"])
    est = SinkhornAssigner(lam=5.0).set_output(transform="pandas").fit(z)
    np.testing.assert_array_equal(est.feature_names_in_, ["a", "b", "c"])
    out = est.transform(z)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["sinkhornassigner0", "sinkhornassigner1", "sinkhornassigner2"]
    assert list(est.get_feature_names_out()) == list(out.columns)


def test_errors():
    with pytest.raises(NotFittedError):
        SinkhornAssigner().transform(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="input"):
        SinkhornAssigner(input="scores").fit(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="lam"):
        SinkhornAssigner(lam=0).fit(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="length n_clusters=3"):
        SinkhornAssigner(prior=[1, 2]).fit(np.zeros((4, 3)))
    est = SinkhornAssigner().fit(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="features"):
        est.predict(np.zeros((4, 2)))


def test_size_tolerance_bounds_the_training_labels():
    # A balanced plan whose argmax is not: 270 rows at q = (0.55, 0.45), 30 at (0.05, 0.95)
    # have equal column sums, but 270 argmaxes in cluster 0.
    rng = np.random.default_rng(0)
    z = np.log(np.array([[0.55, 0.45]] * 270 + [[0.05, 0.95]] * 30, dtype=np.float32))
    z += rng.normal(scale=1e-3, size=z.shape).astype(np.float32)
    plain = SinkhornAssigner(lam=1.0, size_tolerance=None).fit(z).labels_
    assert np.bincount(plain, minlength=2).tolist() == [270, 30]
    sized = SinkhornAssigner(lam=1.0).fit(z).labels_                 # +-50%: 75..225
    assert np.bincount(sized, minlength=2).tolist() == [225, 75]
    # The 30 confident rows keep their cluster; the least sure rows of cluster 0 moved.
    assert np.all(sized[270:] == 1)
    exact = SinkhornAssigner(lam=1.0, size_tolerance=0).fit(z).labels_
    assert np.bincount(exact).tolist() == [150, 150]
    import torch
    wide = SinkhornAssigner(lam=1.0).assign_tensor(torch.from_numpy(z),
                                                   min_size_tolerance=1.0).labels.numpy()
    np.testing.assert_array_equal(wide, plain)          # [0, 2 x share]: argmax kept
