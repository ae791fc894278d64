import itertools

import numpy as np
import pytest

from skselflabel.metrics import (
    adjusted_rand_score,
    cluster_accuracy,
    cluster_to_class_mapping,
    normalized_mutual_info_score,
)


def _brute_force_accuracy(y_true, y_pred):
    classes, clusters = np.unique(y_true), np.unique(y_pred)
    best = 0
    # Try every injective map between the smaller and the larger label set.
    if len(clusters) <= len(classes):
        for image in itertools.permutations(classes, len(clusters)):
            m = dict(zip(clusters, image))
            best = max(best, sum(m[p] == t for p, t in zip(y_pred, y_true)))
    else:
        for chosen in itertools.permutations(clusters, len(classes)):
            m = dict(zip(chosen, classes))
            best = max(best, sum(m.get(p, None) == t for p, t in zip(y_pred, y_true)))
    return best / len(y_true)


def test_perfect_up_to_renaming():
    assert cluster_accuracy([0, 0, 1, 1, 2, 2], [5, 5, 3, 3, 9, 9]) == 1.0


def test_matches_brute_force_on_random_labelings():
    rng = np.random.RandomState(0)
    for n_classes, n_clusters in [(3, 3), (3, 5), (5, 3), (4, 4), (2, 6)]:
        y_true = rng.randint(n_classes, size=30)
        y_pred = rng.randint(n_clusters, size=30)
        assert cluster_accuracy(y_true, y_pred) == pytest.approx(
            _brute_force_accuracy(y_true, y_pred)
        )


def test_more_clusters_than_classes_is_not_rewarded():
    # Splitting each class in two leaves half the samples in unmatched clusters.
    y_true = [0, 0, 1, 1]
    y_pred = [0, 1, 2, 3]
    assert cluster_accuracy(y_true, y_pred) == 0.5


def test_fewer_clusters_than_classes():
    assert cluster_accuracy([0, 1, 2, 2], [0, 0, 1, 1]) == 0.75


def test_string_labels_and_mapping():
    y_true = ["cat", "cat", "dog", "dog"]
    y_pred = [1, 1, 0, 0]
    assert cluster_accuracy(y_true, y_pred) == 1.0
    assert cluster_to_class_mapping(y_true, y_pred) == {0: "dog", 1: "cat"}


def test_bad_input():
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        cluster_accuracy([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        cluster_accuracy([], [])


def test_reexports_are_sklearn_metrics():
    from sklearn import metrics

    assert normalized_mutual_info_score is metrics.normalized_mutual_info_score
    assert adjusted_rand_score is metrics.adjusted_rand_score


def test_neighbor_agreement_counts_neighbour_pairs_kept_together_and_refuses_bad_input():
    import pytest

    from skselflabel.metrics import neighbor_agreement

    X = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]])
    assert neighbor_agreement(X, [1, 1, 1, 0, 0, 0], n_neighbors=2) == 1.0
    # Cutting the left blob: its three points keep 1/2, 1/2 and 0 of their neighbours.
    cut = neighbor_agreement(X, [0, 0, 1, 1, 1, 1], n_neighbors=2)
    assert cut == pytest.approx((1 / 2 + (0 + 1 + 1 + 1) / 4) / 2)
    # An empty cluster counts 0 when n_clusters names it.
    assert neighbor_agreement(X, [0, 0, 0, 1, 1, 1], n_neighbors=2, n_clusters=3) == \
        pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        neighbor_agreement(np.zeros((12, 1)), [0] * 6, n_neighbors=2)
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, n_clusters\)"):
        neighbor_agreement(X, [0, 0, 0, 1, 1, 3], n_neighbors=2, n_clusters=3)
    with pytest.raises(ValueError, match="n_neighbors must be in"):
        neighbor_agreement(X, [0] * 6, n_neighbors=6)
