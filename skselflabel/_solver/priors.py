"""Cluster proportions estimated from the scores for ``prior="auto"``: EM for class priors
under label shift (Saerens et al. 2002), damped and floored (the user guide's
"Cluster sizes learned from the data")."""
import torch

# EM iterations per self-label step, share of the previous proportions kept, and the floor
# of a proportion in units of 1 / n_clusters (chosen on the small real tables of the
# benchmarks page; the user guide names the alternatives tried).
EM_ITERATIONS = 20
DAMPING = 0.5
FLOOR = 0.25
# Rows of the posteriors computed at once (rows x clusters float64 values).
BLOCK_ELEMENTS = 1 << 22


def estimate_proportions(scores, previous):
    """New cluster proportions from ``scores`` (logits or log-probabilities) given the
    ``previous`` proportions (float64 tensor of length K); read in row blocks.

    Parameters
    ----------
    scores : torch.Tensor of shape (n_samples, n_clusters)
        Higher is better; not modified.
    previous : torch.Tensor of shape (n_clusters,)
        The proportions the network was trained with (positive, summing to 1).

    Returns
    -------
    proportions : torch.Tensor of shape (n_clusters,), float64
        Positive, at least ``FLOOR / n_clusters`` each, summing to 1.
    """
    n, k = scores.shape
    previous = previous.to(scores.device, torch.float64)
    step = max(1, BLOCK_ELEMENTS // k)
    pi = previous.clone()
    for _ in range(EM_ITERATIONS):
        ratio = pi / previous
        total = torch.zeros(k, dtype=torch.float64, device=scores.device)
        for s in range(0, n, step):
            w = torch.softmax(scores[s:s + step].double(), 1) * ratio
            total += (w / w.sum(1, keepdim=True)).sum(0)
        pi = total / n
    return _floored((1 - DAMPING) * pi + DAMPING * previous, FLOOR / k)


def _floored(pi, floor):
    """``pi`` (summing to 1) with every entry at least ``floor``: the entries below it are
    raised to it and the others scaled down to keep the sum, until none is below."""
    low = torch.zeros_like(pi, dtype=torch.bool)
    for _ in range(pi.shape[0]):
        low = low | (pi < floor)
        rest = pi[~low].sum()
        pi = torch.where(low, torch.full_like(pi, floor), pi * (1 - floor * low.sum()) / rest)
        if not (pi < floor * (1 - 1e-12)).any():
            break
    return pi
