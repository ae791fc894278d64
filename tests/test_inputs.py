"""Input checks, input scaling and the device policy."""
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from skselflabel import SelfLabelClusterer
from skselflabel._inputs import (InputScaling, check_cluster_count, check_fit_input,
                                 check_predict_input, inference_device, training_device)
from skselflabel._source import ArraySource


def test_fit_checks_leave_the_estimator_untouched():
    est = SelfLabelClusterer()
    data = check_fit_input(est, pd.DataFrame(np.ones((3, 2)), columns=["a", "b"]))
    assert not hasattr(est, "n_features_in_") and not hasattr(est, "feature_names_in_")
    assert data.n_features_in == 2 and list(data.feature_names_in) == ["a", "b"]
    assert data.source.X.dtype == np.float64 and data.sample_shape == (2,)
    assert data.n_samples == 3


def test_gray_images_gain_a_channel_and_tensors_are_read():
    images = torch.ones(4, 5, 6, requires_grad=True)
    data = check_fit_input(SelfLabelClusterer(), images)
    assert data.source.X.shape == (4, 1, 5, 6) and data.n_features_in == 1
    assert data.sample_shape == (1, 5, 6)


@pytest.mark.parametrize("X, match", [
    (np.zeros((4, 2, 2, 2, 2)), "got 5-D input"),
    # Issue #10, item 4: channels-last images were read as 8 channels of 8 x 3 images.
    (np.zeros((40, 8, 8, 3)), r"channels-last.*np.moveaxis\(X, -1, 1\)"),
    (torch.zeros((40, 8, 8, 4)), r"channels-last.*X.permute\(0, 3, 1, 2\)"),
    (np.zeros((1, 3)), "1 sample"),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
])
def test_fit_input_errors(X, match):
    with pytest.raises(ValueError, match=match):
        check_fit_input(SelfLabelClusterer(), X)


def test_predict_input_must_match_the_training_shape():
    est = SelfLabelClusterer()
    est.n_features_in_, est._sample_shape = 1, (1, 8, 8)
    assert check_predict_input(est, np.zeros((2, 8, 8))).sample_shape == (1, 8, 8)
    with pytest.raises(ValueError, match="fitted on samples of shape"):
        check_predict_input(est, np.zeros((2, 9, 8)))


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


def test_device_policy():
    assert training_device("cpu") == torch.device("cpu")
    assert training_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="torch device"):
        training_device("gpu please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            training_device("cuda:0")
        assert inference_device("cuda:1") == torch.device("cpu")
    assert inference_device("cpu") == torch.device("cpu")


def test_channels_first_and_gray_images_pass():
    for shape in [(5, 3, 8, 8), (5, 1, 8, 3), (5, 8, 3), (5, 4, 8, 4), (5, 3, 8, 2)]:
        assert len(check_fit_input(SelfLabelClusterer(), np.zeros(shape)).sample_shape) == 3


def test_more_clusters_than_samples_is_refused():
    # Issue #10, item 4: SelfLabelClusterer(10).fit(X[:5]) fitted silently.
    data = check_fit_input(SelfLabelClusterer(), np.random.default_rng(0).random((5, 4)))
    with pytest.raises(ValueError, match="n_samples=5 should be >= n_clusters=10"):
        check_cluster_count(data, 10)
    X = np.random.RandomState(0).randn(200, 4).astype("float32")
    est = SelfLabelClusterer(10, max_epochs=1, random_state=0)
    with pytest.raises(ValueError, match="n_samples=5 should be >= n_clusters=10"):
        est.fit(X[:5])
    assert not hasattr(est, "labels_")


def test_fewer_distinct_samples_than_clusters_warns():
    # Issue #10, item 4: all-identical rows gave one cluster and no warning (KMeans warns).
    with pytest.warns(ConvergenceWarning, match=r"distinct samples \(1\).*n_clusters \(3\)"):
        SelfLabelClusterer(3, max_epochs=1, random_state=0).fit(np.ones((200, 5)))
    rows = np.repeat(np.eye(4, dtype=np.float32), 2500, axis=0)     # 4 distinct in 10,000
    data = check_fit_input(SelfLabelClusterer(), rows)
    with pytest.warns(ConvergenceWarning, match=r"distinct samples \(4\)"):
        check_cluster_count(data, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_cluster_count(data, 4)
        images = np.random.default_rng(0).random((50, 1, 6, 6)).astype(np.float32)
        check_cluster_count(check_fit_input(SelfLabelClusterer(), images), 50)


@pytest.mark.parametrize("device, match", [
    # Issue #10, item 5: torch's RuntimeError ("META device type not an accelerator", "Cannot
    # execute getNewGenerator() without MPS backend") instead of the CUDA-like message.
    ("meta", "holds no data"),
    pytest.param("mps", "MPS .* is not available", marks=pytest.mark.skipif(
        torch.backends.mps.is_available(), reason="MPS is available here")),
])
def test_unavailable_devices_are_explained(device, match):
    with pytest.raises(ValueError, match=match):
        training_device(device)
    X = np.random.RandomState(0).randn(50, 4).astype("float32")
    with pytest.raises(ValueError, match=match):
        SelfLabelClusterer(3, max_epochs=1, device=device).fit(X)
