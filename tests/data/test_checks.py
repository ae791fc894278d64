"""Input checks: what fit and inference accept, and the distinct rows that limit clusters."""
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from skselflabel import SelfLabelClusterer
from skselflabel._data.checks import (check_cluster_count, check_fit_input,
                                      check_predict_input, distinct_count, distinct_rows)


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


def test_distinct_rows_are_counted_block_by_block_up_to_enough():
    rows = torch.tensor([[0.0, 1.0], [0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    assert distinct_rows(rows, enough=10, block=1) == 3
    assert distinct_rows(rows, enough=2, block=1) == 2       # stops once it has enough
    assert distinct_count(iter(()), enough=3) == 0
