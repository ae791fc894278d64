"""Clustering metrics: ``cluster_accuracy`` (the ACC of deep-clustering papers), and the
label-free ``neighbor_agreement``, with scikit-learn's NMI and ARI re-exported beside them."""
import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix
from sklearn.utils.validation import check_consistent_length, column_or_1d

__all__ = [
    "cluster_accuracy",
    "neighbor_agreement",
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


def neighbor_agreement(X, labels, *, n_neighbors=10, n_clusters=None, neighbors=None):
    r"""Label-free quality of a clustering: how rarely it separates nearest neighbours.

    With :math:`N(i)` the ``n_neighbors`` nearest neighbours of sample :math:`i` (Euclidean,
    in ``X``) and :math:`a_i` the share of them in the cluster of :math:`i`, the agreement
    is the mean over clusters of the mean :math:`a_i` of their members:

    .. math::

        A = \frac{1}{K} \sum_{k=1}^{K} \frac{1}{|C_k|} \sum_{i \in C_k} a_i,
        \qquad a_i = \frac{|\{j \in N(i) : \hat y_j = \hat y_i\}|}{|N(i)|}.

    It is one minus the normalised cut of the k-NN graph divided by :math:`K`: a
    partition whose boundaries run through sparse regions scores near 1 whatever its
    cluster sizes, one that cuts through dense regions scores lower. Since the graph
    depends on ``X`` only, it compares clusterings of the same data made by different
    models, seeds or settings (unlike indices computed in each model's own embedding).
    It falls as clusters are added, so it compares clusterings with the same number of
    clusters best (the user guide's "Choosing without labels").

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features) or None
        The space in which neighbours are found (for images, a descriptor such as
        gradient histograms serves better than pixels). Ignored when ``neighbors`` is
        given.
    labels : array-like of shape (n_samples,)
        Cluster labels, integers in ``[0, n_clusters)``.
    n_neighbors : int, default=10
        Neighbours per sample.
    n_clusters : int, default=None
        Number of clusters; empty ones count as 0 in the mean, so that a clustering that
        leaves clusters empty scores lower. None: the clusters present in ``labels``.
    neighbors : array-like of shape (n_samples, n_neighbors), default=None
        Precomputed neighbour indices (row ``i`` the neighbours of sample ``i``, never
        ``i`` itself), instead of a search in ``X``.

    Returns
    -------
    agreement : float
        In [0, 1]; higher is better.

    Examples
    --------
    >>> import numpy as np
    >>> from skselflabel.metrics import neighbor_agreement
    >>> X = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]])
    >>> neighbor_agreement(X, [0, 0, 0, 1, 1, 1], n_neighbors=2)
    1.0
    >>> round(neighbor_agreement(X, [0, 0, 1, 1, 2, 2], n_neighbors=2), 3)
    0.333
    """
    labels = column_or_1d(labels)
    if neighbors is None:
        from sklearn.neighbors import NearestNeighbors

        X = np.asarray(X, dtype=np.float64)
        check_consistent_length(X, labels)
        X = X.reshape(len(X), -1)
        if not 1 <= n_neighbors < X.shape[0]:
            raise ValueError(f"n_neighbors must be in [1, {X.shape[0] - 1}] for "
                             f"{X.shape[0]} samples, got {n_neighbors}.")
        found = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(X).kneighbors(
            X, return_distance=False)
        neighbors = drop_self(found, n_neighbors)
    neighbors = np.asarray(neighbors)
    if neighbors.ndim != 2 or neighbors.shape[0] != labels.shape[0]:
        raise ValueError(f"neighbors must have shape (n_samples, n_neighbors) = "
                         f"({labels.shape[0]}, k); got {neighbors.shape}.")
    if n_clusters is not None and labels.size and not (
            0 <= labels.min() and labels.max() < n_clusters):
        raise ValueError(f"labels must be integers in [0, n_clusters) = [0, {n_clusters}); "
                         f"got values from {labels.min()} to {labels.max()}.")
    _, labels = np.unique(labels, return_inverse=True) if n_clusters is None else (
        None, labels.astype(np.int64))
    k = int(labels.max()) + 1 if n_clusters is None else int(n_clusters)
    same = (labels[neighbors] == labels[:, None]).mean(1)
    count = np.bincount(labels, minlength=k)
    per_cluster = np.bincount(labels, weights=same, minlength=k) / np.maximum(count, 1)
    return float(per_cluster.sum() / k)


def drop_self(found, n_neighbors, first=0):
    """Each row's neighbours without the point itself (row ``i`` is point ``first + i``),
    or without its last one when the search did not return the point, as may happen with
    exact duplicates."""
    own = found == np.arange(first, first + found.shape[0])[:, None]
    own[~own.any(1), -1] = True
    return found[~own].reshape(found.shape[0], n_neighbors).astype(np.int64)


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
