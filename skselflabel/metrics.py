"""Clustering metrics: ``cluster_accuracy`` (the ACC of deep-clustering papers) under the
best cluster-to-class matching, with scikit-learn's NMI and ARI re-exported beside it."""
import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix
from sklearn.utils.validation import check_consistent_length, column_or_1d

__all__ = [
    "cluster_accuracy",
    "cluster_to_class_mapping",
    "normalized_mutual_info_score",
    "adjusted_rand_score",
]


def cluster_to_class_mapping(y_true, y_pred):
    r"""Best one-to-one matching of predicted clusters to true classes.

    Solves the linear assignment problem (Hungarian algorithm) on the contingency table
    :math:`C_{kc} = |\{i : \hat y_i = k, y_i = c\}|`, maximising :math:`\sum_k C_{k\sigma(k)}`
    over one-to-one maps :math:`\sigma`. When there are more clusters than classes, the
    surplus clusters stay unmatched (their samples count as errors); when there are fewer,
    the surplus classes stay unmatched.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Ground-truth class labels (any hashable values).
    y_pred : array-like of shape (n_samples,)
        Cluster labels (any hashable values).

    Returns
    -------
    mapping : dict
        ``{cluster: class}`` for every matched cluster.

    Examples
    --------
    >>> from skselflabel.metrics import cluster_to_class_mapping
    >>> cluster_to_class_mapping([0, 0, 1, 1], [1, 1, 0, 0])
    {0: 1, 1: 0}
    """
    y_true, y_pred = _check_labels(y_true, y_pred)
    classes, true_idx = np.unique(y_true, return_inverse=True)
    clusters, pred_idx = np.unique(y_pred, return_inverse=True)
    counts = contingency_matrix(pred_idx, true_idx)  # (n_clusters, n_classes)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return {_py(clusters[r]): _py(classes[c]) for r, c in zip(rows, cols)}


def cluster_accuracy(y_true, y_pred):
    r"""Clustering accuracy (ACC) under the best one-to-one cluster-to-class matching.

    .. math::

        \mathrm{ACC} = \max_{\sigma} \frac{1}{n} \sum_{i=1}^{n} \mathbb{1}[y_i = \sigma(\hat y_i)]

    where :math:`\sigma` ranges over one-to-one maps from clusters to classes, found with
    :func:`scipy.optimize.linear_sum_assignment`. The cluster and class counts may differ:
    samples of unmatched clusters count as errors, so over-clustering is not rewarded.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Ground-truth class labels.
    y_pred : array-like of shape (n_samples,)
        Cluster labels to evaluate.

    Returns
    -------
    accuracy : float
        In [0, 1]; 1 means the clusters equal the classes up to renaming.

    Examples
    --------
    >>> from skselflabel.metrics import cluster_accuracy
    >>> cluster_accuracy([0, 0, 1, 1, 2, 2], [2, 2, 0, 0, 1, 1])
    1.0
    >>> cluster_accuracy([0, 0, 0, 0], [0, 0, 1, 1])
    0.5
    """
    y_true, y_pred = _check_labels(y_true, y_pred)
    _, true_idx = np.unique(y_true, return_inverse=True)
    _, pred_idx = np.unique(y_pred, return_inverse=True)
    counts = contingency_matrix(pred_idx, true_idx)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / y_true.shape[0])


def _check_labels(y_true, y_pred):
    y_true = column_or_1d(y_true)
    y_pred = column_or_1d(y_pred)
    check_consistent_length(y_true, y_pred)
    if y_true.shape[0] == 0:
        raise ValueError("y_true and y_pred are empty; pass at least one labelled sample.")
    return y_true, y_pred


def _py(value):
    # numpy scalars print as np.int64(3) in numpy >= 2; plain Python values read better.
    return value.item() if isinstance(value, np.generic) else value
