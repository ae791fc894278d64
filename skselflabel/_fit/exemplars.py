"""Exemplars: the samples of each cluster that show best what it stands for, nearest its
centre in the learned representation or most confidently in it."""
from numbers import Integral

import numpy as np
import torch

from .inference import first_head_logits, represent

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


def check_ranking(n_examples, by):
    """Refuse an ``n_examples`` that is not an integer >= 1, or an unknown ``by``."""
    if not isinstance(n_examples, Integral) or isinstance(n_examples, bool) or n_examples < 1:
        raise ValueError(f"n_examples must be an integer >= 1, got {n_examples!r}.")
    if by not in RANKINGS:
        raise ValueError(f"by must be one of {RANKINGS}, got {by!r}.")


def exemplars(network, feeder, n_examples, by):
    """Row numbers of each cluster's ``n_examples`` most typical samples of the feeder,
    ranked ``by`` "center" or "confidence", the most typical first."""
    logits = first_head_logits(network, feeder)
    labels = logits.argmax(1)
    n_clusters = logits.shape[1]
    if by == "center":
        features = represent(network.backbone, feeder, network.n_features_out)
        picked = nearest_to_center(features, labels, n_clusters, int(n_examples))
    else:
        picked = most_confident(torch.softmax(logits, 1), labels, n_clusters, int(n_examples))
    return [rows.cpu().numpy().astype(np.int64) for rows in picked]
