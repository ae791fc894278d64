"""Input scaling: statistics fitted in one pass, applied on the device."""
import numpy as np
import torch

from skselflabel._data.input_scaling import InputScaling
from skselflabel._data.sources import ArraySource


def test_tables_share_one_scale_images_are_standardised_per_channel():
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((500, 2)) * [1.0, 3.0] + [5.0, -2.0]).astype(np.float32)
    t = InputScaling.fit(ArraySource(X)).apply(torch.from_numpy(X))
    torch.testing.assert_close(t.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    ratio = float(t[:, 1].std() / t[:, 0].std())
    assert 2.7 < ratio < 3.3                       # the geometry is kept
    assert abs(float((t ** 2).mean()) - 1.0) < 0.05
    images = (rng.random((20, 3, 4, 4)) * [[[1.0]], [[10.0]], [[0.0]]]).astype(np.float32)
    t = InputScaling.fit(ArraySource(images)).apply(torch.from_numpy(images))
    std = t.transpose(0, 1).reshape(3, -1).std(1)
    torch.testing.assert_close(std[:2], torch.ones(2), atol=1e-2, rtol=0)
    assert float(t[:, 2].abs().max()) == 0.0       # constant channel: scale 1, no NaN


def _correlated_table(rng, n=4000):
    """Two columns along the diagonals, of variances 9 and 0.04."""
    z = rng.standard_normal((n, 2)) * [3.0, 0.2]
    rotation = np.array([[1.0, 1.0], [-1.0, 1.0]]) / np.sqrt(2.0)
    return (z @ rotation + [1.0, -4.0]).astype(np.float32), rotation


def test_soft_whitening_brings_dominant_variance_down_to_the_mean_and_keeps_the_rest():
    rng = np.random.default_rng(0)
    X, rotation = _correlated_table(rng)
    scaling = InputScaling.fit(ArraySource(X), whiten=True)
    t = scaling.apply(torch.from_numpy(X)).double().numpy()
    np.testing.assert_allclose(t.mean(0), 0.0, atol=1e-5)
    variances = np.var(t @ rotation.T, axis=0)      # along the two principal axes
    lam = np.var(X.astype(np.float64) @ rotation.T, axis=0)
    expected = lam / (lam + lam.mean())             # lambda / (lambda + mean lambda) ...
    expected /= expected.mean()                     # ... with mean variance 1
    np.testing.assert_allclose(variances, expected, rtol=1e-3)
    assert abs(variances.mean() - 1.0) < 1e-3
    # The ratio of standard deviations falls from 15 to sqrt(0.666 / 0.0088), about 8.7:
    # only the direction above the mean variance is brought down.
    assert 8.0 < np.sqrt(variances[0] / variances[1]) < 9.5


def test_whitening_statistics_merged_over_batches_equal_the_whole_table():
    from skselflabel._data.input_scaling import _mean_covariance
    rng = np.random.default_rng(1)
    X = rng.standard_normal((1000, 5)) * [1.0, 2.0, 3.0, 0.1, 50.0] + 7.0
    batches = [torch.from_numpy(X[s:s + 97]) for s in range(0, 1000, 97)]
    mean, cov = _mean_covariance(batches)
    np.testing.assert_allclose(mean, X.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(X.T, bias=True), rtol=1e-10)


def test_constant_table_whitens_to_zeros_without_nan():
    X = np.full((50, 3), 2.5, dtype=np.float32)
    t = InputScaling.fit(ArraySource(X), whiten=True).apply(torch.from_numpy(X))
    assert torch.equal(t, torch.zeros_like(t))


def _size_and_shape_table(rng, n=600):
    """A dominant Gaussian direction (variance 25) beside a minor bimodal one (two groups
    at +-0.5, each of standard deviation 0.15), rotated by 45 degrees."""
    size = rng.standard_normal(n) * 5.0
    shape = np.where(rng.random(n) < 0.5, -0.5, 0.5) + rng.standard_normal(n) * 0.15
    rotation = np.array([[1.0, 1.0], [-1.0, 1.0]]) / np.sqrt(2.0)
    return (np.c_[size, shape] @ rotation).astype(np.float32), rotation


def test_auto_lifts_a_bimodal_minor_axis_to_the_variance_of_the_largest():
    rng = np.random.default_rng(0)
    X, rotation = _size_and_shape_table(rng)
    scaling = InputScaling.fit(ArraySource(X), whiten="auto")
    assert scaling.n_lifted == 1
    t = scaling.apply(torch.from_numpy(X)).double().numpy()
    variances = np.var(t @ rotation.T, axis=0)      # size, shape
    np.testing.assert_allclose(variances, [1.0, 1.0], rtol=1e-3)
    np.testing.assert_allclose(t.mean(0), 0.0, atol=1e-5)
    # The two groups now lie far apart along the shape axis (before: 1 size sd apart / 5).
    group = (X.astype(np.float64) @ rotation.T)[:, 1] > 0
    shape = (t @ rotation.T)[:, 1]
    assert shape[group].mean() - shape[~group].mean() > 1.8


def test_auto_keeps_the_plain_scaling_without_a_bimodal_axis():
    rng = np.random.default_rng(1)
    X = (rng.standard_normal((300, 4)) * [3.0, 1.0, 0.5, 0.1]).astype(np.float32)
    X[:, 1] = np.where(X[:, 0] > 0, 2.0, -2.0) + X[:, 1] * 0.1   # bimodal, but the largest
    X[:, 0] *= 0.1
    for table in (X, rng.standard_normal((40, 3)).astype(np.float32)):
        scaling = InputScaling.fit(ArraySource(table), whiten="auto")
        plain = InputScaling.fit(ArraySource(table), whiten=False)
        assert scaling.n_lifted == 0 and scaling.transform is None
        batch = torch.from_numpy(table)
        assert torch.equal(scaling.apply(batch), plain.apply(batch))   # bit for bit


def test_auto_leaves_codes_years_and_flags_out_of_the_test():
    rng = np.random.default_rng(2)
    X, _ = _size_and_shape_table(rng)
    n = len(X)
    # A 0/1 flag and a year of three values are bimodal (or flat) by construction.
    flag = (rng.random(n) < 0.5).astype(np.float32)
    year = rng.integers(2007, 2010, n).astype(np.float32)
    coded = np.c_[X, flag, year - 2008.0]
    scaling = InputScaling.fit(ArraySource(coded), whiten="auto")
    assert scaling.n_lifted == 1                     # the shape axis only
    t = scaling.apply(torch.from_numpy(coded)).double().numpy()
    # The coded columns keep their share of the variance beside the measurements.
    np.testing.assert_allclose(np.var(t, axis=0)[2:] / np.var(t, axis=0)[:2].sum(),
                               np.var(coded, axis=0)[2:] / 50.0, rtol=0.1)
    assert abs(np.var(t, axis=0).sum() / 4 - 1.0) < 1e-3
    codes_only = np.c_[flag, year, flag * year].astype(np.float32)
    assert InputScaling.fit(ArraySource(codes_only), whiten="auto").transform is None


def test_auto_skips_tables_wider_than_its_limit_and_images():
    from skselflabel._data.input_scaling import AUTO_MAX_FEATURES, whitens
    assert whitens("auto", (AUTO_MAX_FEATURES,)) and not whitens("auto", (AUTO_MAX_FEATURES + 1,))
    assert whitens(True, (AUTO_MAX_FEATURES + 1,)) and not whitens(False, (3,))
    assert not whitens("auto", (1, 8, 8))


def test_whiten_is_for_tables_and_refuses_images():
    import pytest
    from skselflabel._data.input_scaling import resolve_whiten
    assert resolve_whiten(True, (5000,)) is True and resolve_whiten(False, (4,)) is False
    assert resolve_whiten(False, (1, 8, 8)) is False
    assert resolve_whiten("auto", (1, 8, 8)) is False and resolve_whiten("auto", (4,)) == "auto"
    with pytest.raises(ValueError, match="whiten=True applies to tables"):
        resolve_whiten(True, (1, 8, 8))


def test_scaling_pickled_before_whitening_existed_loads_without_a_transform():
    import pickle
    old = InputScaling.__new__(InputScaling)
    old.__setstate__({"mean": np.zeros(2, np.float32), "scale": np.float32(2.0)})
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded.transform is None and loaded.n_lifted == 0
    torch.testing.assert_close(loaded.apply(torch.ones(1, 2)), torch.full((1, 2), 0.5))
