"""Neighbour views: train each sample on a random one of its nearest neighbours.

Where augmentations are weak or absent (tables, tiny images), the input of a sample's
gradient step is replaced by a randomly chosen near neighbour while the target stays the
sample's own self-label. The network thus learns labels that are constant over
neighbourhoods, which is the smoothness a clustering needs.
"""
import torch


def nearest_neighbors(points, n_neighbors, batch_size=2048, max_dim=64):
    """Indices of each point's ``n_neighbors`` nearest other points (Euclidean).

    Parameters
    ----------
    points : torch.Tensor of shape (n_samples, ...)
        Samples on any device; flattened to vectors.
    n_neighbors : int
        Neighbours per point, ``1 <= n_neighbors < n_samples``.
    batch_size : int, default=2048
        Rows of the distance matrix computed at once (memory ``batch_size * n_samples``).
    max_dim : int, default=64
        Vectors wider than this are first projected on their top ``max_dim`` principal
        axes (exact eigendecomposition of the covariance: deterministic, no RNG), which
        keeps the search cheap for images.

    Returns
    -------
    indices : torch.Tensor of shape (n_samples, n_neighbors), int64
        On the device of ``points``; a point is never its own neighbour.

    Examples
    --------
    >>> import torch
    >>> from skselflabel._views import nearest_neighbors
    >>> nearest_neighbors(torch.tensor([[0.0], [1.0], [10.0], [11.0]]), 1).ravel().tolist()
    [1, 0, 3, 2]
    """
    x = points.reshape(points.shape[0], -1).to(torch.float32)
    n = x.shape[0]
    if not 1 <= n_neighbors < n:
        raise ValueError(f"n_neighbors must be in [1, {n - 1}] for {n} samples, got {n_neighbors}.")
    if x.shape[1] > max_dim:
        x = _project(x, max_dim)
    sq = (x * x).sum(1)
    out = torch.empty((n, n_neighbors), dtype=torch.int64, device=x.device)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        # |a-b|^2 = |a|^2 - 2 a.b + |b|^2; |a|^2 is constant per row, so it can be left out.
        d = sq[None, :] - 2.0 * (x[start:stop] @ x.T)
        d[torch.arange(stop - start, device=x.device), torch.arange(start, stop, device=x.device)] = float("inf")
        out[start:stop] = d.topk(n_neighbors, dim=1, largest=False).indices
    return out


def _project(x, dim):
    """Coordinates of ``x`` on its top ``dim`` principal axes."""
    xc = x - x.mean(0)
    cov = (xc.T @ xc).double() / max(1, x.shape[0] - 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    return xc @ vecs[:, -dim:].to(x.dtype)
