"""KMeans's partition as a candidate on tables: kept, and learned by the network, only when
it agrees better with the neighbour graph."""
import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_wine
from sklearn.metrics import adjusted_rand_score
from sklearn.preprocessing import StandardScaler

from skselflabel import SelfLabelClusterer, SinkhornAssigner
from skselflabel._fit import kmeans_choice
from skselflabel._fit.kmeans_choice import DISTILL_EPOCHS

SHORT = dict(max_epochs=5, random_state=0)   # trials of one epoch, a twin


@pytest.fixture(scope="module")
def wine():
    X, _ = load_wine(return_X_y=True)
    return StandardScaler().fit_transform(X).astype(np.float32)


@pytest.fixture(scope="module")
def kept(wine):
    # Five epochs leave the self-labels rough: KMeans's partition agrees better.
    return SelfLabelClusterer(n_clusters=3, **SHORT).fit(wine)


def test_a_kept_kmeans_partition_is_what_the_network_predicts(kept, wine):
    fit_score, kmeans_score = kept.kmeans_agreement_
    assert kmeans_score > fit_score
    kmeans = KMeans(3, n_init=10, random_state=0).fit_predict(kept._scaling.apply(
        torch.as_tensor(wine)).numpy())
    assert adjusted_rand_score(kmeans, kept.self_labels_[0]) == pytest.approx(1.0)
    assert adjusted_rand_score(kmeans, kept.labels_) > 0.95      # learned by the network
    np.testing.assert_array_equal(kept.predict(wine), kept.labels_)
    shares = np.bincount(kept.self_labels_[0], minlength=3) / len(wine)
    np.testing.assert_allclose(kept.cluster_sizes_, shares)
    assert kept.sizes_estimated_
    # The distillation's epochs follow the fit's in n_iter_ and history_.
    assert kept.n_iter_ == 5 + DISTILL_EPOCHS == len(kept.history_)
    assert kept.history_["epoch"].tolist() == list(range(1, kept.n_iter_ + 1))


def test_a_worse_kmeans_partition_changes_nothing(kept, wine, monkeypatch):
    def scattered(run):
        return torch.arange(run.data.n_samples) % run.config.n_clusters

    monkeypatch.setattr(kmeans_choice, "kmeans_labels", scattered)
    offered = SelfLabelClusterer(n_clusters=3, **SHORT).fit(wine)
    fit_score, kmeans_score = offered.kmeans_agreement_
    assert kmeans_score < fit_score
    monkeypatch.setattr(kmeans_choice, "KMEANS_MAX_SAMPLES", 0)
    plain = SelfLabelClusterer(n_clusters=3, **SHORT).fit(wine)
    assert not hasattr(plain, "kmeans_agreement_")
    np.testing.assert_array_equal(offered.labels_, plain.labels_)
    assert offered.n_iter_ == plain.n_iter_ == 5
    assert fit_score == pytest.approx(kept.kmeans_agreement_[0])


def test_images_explicit_assigners_and_one_start_get_no_candidate(wine):
    images = np.random.default_rng(0).random((48, 8, 8), dtype=np.float32)
    on_images = SelfLabelClusterer(n_clusters=3, **SHORT).fit(images)
    # Images get the twin of estimated sizes, never KMeans on their pixels.
    assert hasattr(on_images, "size_agreement_")
    assert not hasattr(on_images, "kmeans_agreement_")
    given = SelfLabelClusterer(n_clusters=3, assigner=SinkhornAssigner(), **SHORT).fit(wine)
    assert not hasattr(given, "kmeans_agreement_")
    one = SelfLabelClusterer(n_clusters=3, n_init=1, **SHORT).fit(wine)
    assert not hasattr(one, "kmeans_agreement_") and one.n_iter_ == 5
