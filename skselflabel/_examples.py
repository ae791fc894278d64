"""Per-cluster examples: which samples show best what a learned cluster stands for.

:func:`cluster_examples` is :meth:`SelfLabelClusterer.cluster_examples` (the class takes it
as a method); the ranking functions below work on tensors and know nothing of the
estimator.
"""
from numbers import Integral

import numpy as np
import torch

from ._inference import represent
from ._model import first_head_logits

RANKINGS = ("center", "confidence")


def _members(labels, n_clusters):
    """Indices of the members of each cluster, as a list of 1-D tensors."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=n_clusters).tolist()
    return list(torch.split(order, counts))


def nearest_to_center(features, labels, n_clusters, n_examples):
    """Per cluster, the ``n_examples`` members nearest (Euclidean) to the mean of the
    members' ``features``, nearest first (ties: lower index first)."""
    picked = []
    for members in _members(labels, n_clusters):
        if len(members) == 0:
            picked.append(members)
            continue
        points = features[members].double()
        distance = (points - points.mean(0)).pow(2).sum(1)
        picked.append(members[torch.argsort(distance, stable=True)[:n_examples]])
    return picked


def most_confident(proba, labels, n_clusters, n_examples):
    """Per cluster, the ``n_examples`` members with the highest probability of the
    cluster, most confident first (ties: lower index first)."""
    picked = []
    for k, members in enumerate(_members(labels, n_clusters)):
        order = torch.argsort(proba[members, k], descending=True, stable=True)
        picked.append(members[order[:n_examples]])
    return picked


def cluster_examples(self, X, n_examples=8, *, by="center"):
    """The most typical samples of each cluster, as indices into ``X``.

    Every sample of ``X`` belongs to the cluster :meth:`predict` gives it. With
    ``by="center"`` a cluster's examples are its members nearest (Euclidean distance) to
    the mean of the members' learned representation (the output of :meth:`transform`);
    with ``by="confidence"`` they are its members with the highest probability of the
    cluster (:meth:`predict_proba`), which for a confident network are many near 1.
    Pass the training data to see what each learned cluster stands for, and the result
    to :func:`skselflabel.plotting.plot_cluster_grid` (``examples=``) to show them.

    Parameters
    ----------
    X : array-like, DataFrame or torch.Tensor
        Samples shaped like the training data, usually the training data themselves.
    n_examples : int, default=8
        Examples per cluster; a cluster with fewer members gets all of them.
    by : {"center", "confidence"}, default="center"
        How the members of a cluster are ranked.

    Returns
    -------
    examples : list of ndarray of int64
        ``examples[k]`` holds the row numbers in ``X`` of cluster ``k``'s examples, the
        most typical first; it is empty when no sample of ``X`` falls into cluster ``k``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import make_blobs
    >>> from skselflabel import SelfLabelClusterer
    >>> X, _ = make_blobs(n_samples=90, centers=3, random_state=0)
    >>> clu = SelfLabelClusterer(n_clusters=3, max_epochs=3, random_state=0).fit(X)
    >>> examples = clu.cluster_examples(X, n_examples=4)
    >>> [len(rows) for rows in examples]
    [4, 4, 4]
    >>> all((clu.labels_[rows] == k).all() for k, rows in enumerate(examples))
    True
    """
    if not isinstance(n_examples, Integral) or isinstance(n_examples, bool) or n_examples < 1:
        raise ValueError(f"n_examples must be an integer >= 1, got {n_examples!r}.")
    if by not in RANKINGS:
        raise ValueError(f"by must be one of {RANKINGS}, got {by!r}.")
    X_t = self._inference_input(X)
    logits = first_head_logits(vars(self), X_t)
    labels = logits.argmax(1)
    n_clusters = logits.shape[1]
    if by == "center":
        features = represent(self.backbone_, X_t, self._n_features_out)
        picked = nearest_to_center(features, labels, n_clusters, int(n_examples))
    else:
        picked = most_confident(torch.softmax(logits, 1), labels, n_clusters, int(n_examples))
    return [rows.cpu().numpy().astype(np.int64) for rows in picked]
