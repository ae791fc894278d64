"""Equal or estimated cluster sizes, chosen by neighbour agreement (size_choice)."""
import numpy as np
import pytest

from skselflabel import SelfLabelClusterer, SinkhornAssigner
from skselflabel._fit import graph, kmeans_choice
from skselflabel._fit.config import default_assigner

KW = dict(n_clusters=3, max_epochs=5, random_state=0)


@pytest.fixture
def unequal():
    """Three blobs of 150, 60 and 30 rows in four columns."""
    rng = np.random.default_rng(0)
    blobs = [rng.normal(c, 0.6, size=(n, 4)) for c, n in ((0.0, 150), (4.0, 60),
                                                          (-4.0, 30))]
    return np.concatenate(blobs).astype(np.float32)


@pytest.fixture(autouse=True)
def no_kmeans(monkeypatch):
    # The twin on its own: KMeans as a candidate has tests of its own.
    monkeypatch.setattr(kmeans_choice, "KMEANS_MAX_SAMPLES", 0)


def _explicit(prior):
    assigner = default_assigner()
    return assigner.set_params(prior=prior) if prior else assigner


@pytest.mark.parametrize("n_init", [2, 3])
def test_the_default_keeps_whichever_of_the_two_explicit_fits_agrees_best(unequal, n_init):
    default = SelfLabelClusterer(n_init=n_init, **KW).fit(unequal)
    equal = SelfLabelClusterer(n_init=n_init, assigner=_explicit(None), **KW).fit(unequal)
    estimated = SelfLabelClusterer(n_init=n_init, assigner=_explicit("auto"),
                                   **KW).fit(unequal)
    for explicit in (equal, estimated):
        assert not hasattr(explicit, "size_agreement_")
    # The two runs part at the fork: the choice is between different models.
    assert not np.array_equal(equal.transform(unequal), estimated.transform(unequal))
    scores = default.size_agreement_
    assert scores.shape == (2,) and np.all((0 < scores) & (scores <= 1))
    kept = estimated if scores[1] > scores[0] else equal
    assert default.sizes_estimated_ == (kept is estimated)
    # The twin forks at the end of the trials: the kept run is the explicit one, bit for bit.
    np.testing.assert_array_equal(default.labels_, kept.labels_)
    np.testing.assert_array_equal(default.transform(unequal), kept.transform(unequal))
    np.testing.assert_array_equal(default.cluster_sizes_, kept.cluster_sizes_)
    for column in ("loss", "label_iterations"):     # the solves too, not only their labels
        assert default.history_[column].tolist() == kept.history_[column].tolist()
    assert default.n_iter_ == kept.n_iter_ == 5


def test_estimated_sizes_are_kept_when_they_agree_better(unequal, monkeypatch):
    # The twin is judged last: make it win, and its proportions are the model's.
    calls = []

    def agreement(self, labels, n_clusters):
        calls.append(1)
        return float(len(calls))
    monkeypatch.setattr(graph.NeighborGraph, "agreement", agreement)
    clu = SelfLabelClusterer(n_init=2, **KW).fit(unequal)
    # Two trials, then the run with equal sizes and its twin.
    assert clu.size_agreement_.tolist() == [3.0, 4.0] and clu.sizes_estimated_
    assert not np.allclose(clu.cluster_sizes_, 1 / 3)
    np.testing.assert_array_equal(clu.predict(unequal), clu.labels_)


def test_images_get_the_twin_too():
    # Unequal classes of images are as common as unequal tables (issue 20's Fashion-MNIST
    # subset): the twin is judged the same way, and the kept run is the explicit one.
    rng = np.random.default_rng(0)
    images = np.concatenate([rng.normal(c, 0.5, size=(n, 1, 8, 8)) for c, n in
                             ((0.0, 40), (3.0, 15), (-3.0, 8))]).astype(np.float32)
    default = SelfLabelClusterer(n_init=2, **KW).fit(images)
    kept = SelfLabelClusterer(n_init=2, assigner=_explicit(
        "auto" if default.sizes_estimated_ else None), **KW).fit(images)
    assert default.size_agreement_.shape == (2,) and not hasattr(kept, "size_agreement_")
    assert default.sizes_estimated_ == (default.size_agreement_[1] > default.size_agreement_[0])
    np.testing.assert_array_equal(default.labels_, kept.labels_)
    np.testing.assert_array_equal(default.transform(images), kept.transform(images))
    np.testing.assert_array_equal(default.predict(images), default.labels_)


def test_no_twin_for_an_explicit_prior_a_checkpoint_or_one_start(unequal, tmp_path):
    given = SelfLabelClusterer(n_init=2, **KW).set_params(assigner__prior=[0.5, 0.3, 0.2])
    assert not hasattr(given.fit(unequal), "size_agreement_")
    np.testing.assert_allclose(given.cluster_sizes_, [0.5, 0.3, 0.2])
    kept = SelfLabelClusterer(n_init=2, checkpoint=tmp_path / "fit.ckpt", **KW).fit(unequal)
    assert not hasattr(kept, "size_agreement_") and not kept.sizes_estimated_
    one = SelfLabelClusterer(n_init=1, **KW).fit(unequal)
    assert not hasattr(one, "size_agreement_") and not one.sizes_estimated_


def test_a_callback_that_stops_the_fit_stops_the_twin_too(unequal, monkeypatch):
    # A stop request ends the run with equal sizes early: no twin trains after it.
    from skselflabel._fit import training
    end_epoch = training.Trainer._end_epoch

    def stop_at_4(self):
        return end_epoch(self) or self.epoch == 4
    monkeypatch.setattr(training.Trainer, "_end_epoch", stop_at_4)
    clu = SelfLabelClusterer(n_init=2, **KW).fit(unequal)
    assert clu.n_iter_ == 4 and not hasattr(clu, "size_agreement_")


def test_an_explicit_equal_assigner_is_not_second_guessed(unequal):
    clu = SelfLabelClusterer(n_init=2, assigner=SinkhornAssigner(), **KW).fit(unequal)
    assert not hasattr(clu, "size_agreement_") and not clu.sizes_estimated_
    np.testing.assert_allclose(clu.cluster_sizes_, 1 / 3)


@pytest.mark.parametrize("max_epochs", [10, 12])
def test_the_twin_is_the_estimating_run_when_it_forks_before_or_at_the_switch(max_epochs):
    # Trials of 2 epochs: the fork falls at 20% of training (10 epochs), where prior="auto"
    # starts estimating, or before it (12): the twin's solves start where that run's do.
    from sklearn.preprocessing import StandardScaler
    from skselflabel.datasets import load_table
    X = StandardScaler().fit_transform(load_table("penguins", return_X_y=True)[0])
    kw = dict(n_clusters=3, max_epochs=max_epochs, n_init=2, random_state=0)
    default = SelfLabelClusterer(**kw).fit(X)
    estimated = SelfLabelClusterer(assigner=_explicit("auto"), **kw).fit(X)
    assert default.sizes_estimated_
    assert (default.history_["label_iterations"].tolist()
            == estimated.history_["label_iterations"].tolist())
    np.testing.assert_array_equal(default.transform(X), estimated.transform(X))
