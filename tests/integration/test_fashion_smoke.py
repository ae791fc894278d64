"""Smoke test of the Fashion-MNIST path: loader -> (n, 28, 28) images -> CNN -> predict on
test images -> transform + linear probe -> cluster_accuracy.

1,500 training images and two epochs: it checks that the pieces fit together and learn
something, not the quality targets (benchmarks/fashion_mnist.py measures those).
"""
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import normalized_mutual_info_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skselflabel import SelfLabelClusterer
from skselflabel.datasets import load_fashion_mnist
from skselflabel.metrics import cluster_accuracy

pytestmark = pytest.mark.slow  # integration: `make test-fast` leaves it out

N_TRAIN, N_TEST = 1500, 1000


@pytest.fixture(scope="module")
def fashion():
    try:
        X_train, y_train = load_fashion_mnist(split="train", return_X_y=True, as_float=True)
        X_test, y_test = load_fashion_mnist(split="test", return_X_y=True, as_float=True)
    except FileNotFoundError as exc:
        pytest.skip(
            "Fashion-MNIST IDX files not found (looked in /usr/share/datasets/fashion-mnist "
            "and $SKSELFLABEL_FASHION_MNIST_HOME); install them with "
            f"`sudo apt-get install dataset-fashion-mnist`. Loader said: {exc}"
        )
    return X_train[:N_TRAIN], y_train[:N_TRAIN], X_test[:N_TEST], y_test[:N_TEST]


@pytest.fixture(scope="module")
def fitted(fashion):
    X_train = fashion[0]
    clu = SelfLabelClusterer(n_clusters=10, max_epochs=2, n_label_updates=2, device="cpu",
                             random_state=0)
    return clu.fit(X_train)


def test_loader_gives_float_images(fashion):
    X_train, y_train, X_test, y_test = fashion
    assert X_train.shape == (N_TRAIN, 28, 28) and X_test.shape == (N_TEST, 28, 28)
    assert X_train.dtype == np.float32
    assert 0.0 <= X_train.min() and X_train.max() <= 1.0 and X_train.max() > 0.5
    assert set(np.unique(y_train)) == set(range(10))


def test_image_path_trains_a_cnn(fitted, fashion):
    clu, y_train = fitted, fashion[1]
    # 3-D gray images are read as one channel and go through the image backbone.
    assert clu.n_features_in_ == 1
    assert clu.backbone_.__class__.__name__ == "SmallCNN"
    assert clu.labels_.shape == (N_TRAIN,)
    assert clu.labels_.min() >= 0 and clu.labels_.max() < 10
    # Balanced self-labels keep the clusters from collapsing: several are used.
    assert len(np.unique(clu.labels_)) >= 5
    assert clu.self_labels_.shape == (1, N_TRAIN)
    assert len(clu.history_) == 2 and np.isfinite(clu.history_["loss"]).all()
    # Chance is about 0.1 for 10 balanced classes; two epochs already do much better.
    assert cluster_accuracy(y_train, clu.labels_) > 0.25
    assert normalized_mutual_info_score(y_train, clu.labels_) > 0.15


def test_predict_on_test_images(fitted, fashion):
    X_test, y_test = fashion[2], fashion[3]
    pred = fitted.predict(X_test)
    assert pred.shape == (N_TEST,) and pred.dtype.kind == "i"
    assert pred.min() >= 0 and pred.max() < 10
    # (n, 1, 28, 28) is the same input as (n, 28, 28).
    np.testing.assert_array_equal(fitted.predict(X_test[:, None]), pred)
    assert cluster_accuracy(y_test, pred) > 0.25


def test_transform_feeds_a_linear_probe(fitted, fashion):
    X_train, y_train, X_test, y_test = fashion
    F_train, F_test = fitted.transform(X_train), fitted.transform(X_test)
    assert F_train.shape == (N_TRAIN, 1408) and F_train.dtype == np.float32   # pooled conv maps
    assert np.isfinite(F_train).all()
    # 100 lbfgs iterations reach a usable probe; full convergence is not the point here.
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=100))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(F_train, y_train)
    # Labels never seen by the clusterer: a probe well above chance (0.1) shows that the
    # features carry class information.
    assert probe.score(F_test, y_test) > 0.5
