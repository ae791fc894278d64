"""The k-nearest-neighbour graph of the training set and its two uses.

Where augmentations are weak or absent (tables, tiny images), the graph supplies the
smoothness a clustering needs:

* **neighbour views**: the input of a sample's gradient step is replaced by a randomly
  chosen near neighbour while the target stays the sample's own self-label, so the network
  learns labels that are constant over neighbourhoods;
* **label diffusion**: before the self-label step solves for balanced labels, each head's
  probabilities are smoothed over the graph, so neighbours share self-labels unless the
  network clearly disagrees.

The graph is built once per fit in a "neighbour space": the inputs themselves, histograms
of gradient orientations for images (:mod:`skselflabel._descriptors`), or a user embedding.
"""
import torch

from ._descriptors import gradient_histograms

# Rows of the (chunk, n_neighbors, K) gather of a diffusion step: about 64 MB at a time.
DIFFUSION_CHUNK_ELEMENTS = 2**24


def neighbor_points(X_t, features):
    """The points whose nearest neighbours make the graph.

    Parameters
    ----------
    X_t : torch.Tensor
        The prepared training tensor, ``(n, d)`` or ``(n, c, h, w)``.
    features : {"input", "gradients"} or callable
        The resolved ``neighbor_features`` parameter.
    """
    if isinstance(features, str) and features == "input":
        return X_t
    if isinstance(features, str) and features == "gradients":
        if X_t.ndim != 4:
            raise ValueError("neighbor_features='gradients' needs images (n, c, h, w); "
                             f"got data of shape {tuple(X_t.shape)}. Use 'input' for "
                             "tables.")
        points = gradient_histograms(X_t)
        # Centred, so that the projection on the top principal axes in
        # nearest_neighbors keeps the directions that tell images apart.
        return points - points.mean(0)
    points = torch.as_tensor(features(X_t))
    if points.ndim != 2 or points.shape[0] != X_t.shape[0]:
        raise ValueError("neighbor_features must return an (n_samples, n_features) "
                         f"tensor for {X_t.shape[0]} samples; got shape "
                         f"{tuple(points.shape)}.")
    if not torch.isfinite(points).all():
        raise ValueError("neighbor_features returned NaN or inf values.")
    return points.to(X_t.device, torch.float32)


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
    >>> from skselflabel._graph import nearest_neighbors
    >>> nearest_neighbors(torch.tensor([[0.0], [1.0], [10.0], [11.0]]), 1).ravel().tolist()
    [1, 0, 3, 2]
    """
    x = points.reshape(points.shape[0], -1).to(torch.float32)
    n = x.shape[0]
    if not 1 <= n_neighbors < n:
        raise ValueError(f"n_neighbors must be in [1, {n - 1}] for {n} samples, got "
                         f"{n_neighbors}.")
    if x.shape[1] > max_dim:
        x = _project(x, max_dim)
    sq = (x * x).sum(1)
    out = torch.empty((n, n_neighbors), dtype=torch.int64, device=x.device)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        # |a-b|^2 = |a|^2 - 2 a.b + |b|^2; |a|^2 is constant per row, so it can be left out.
        d = sq[None, :] - 2.0 * (x[start:stop] @ x.T)
        rows = torch.arange(stop - start, device=x.device)
        d[rows, rows + start] = float("inf")
        out[start:stop] = d.topk(n_neighbors, dim=1, largest=False).indices
    return out


def _project(x, dim):
    """Coordinates of ``x`` on its top ``dim`` principal axes."""
    xc = x - x.mean(0)
    cov = (xc.T @ xc).double() / max(1, x.shape[0] - 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    return xc @ vecs[:, -dim:].to(x.dtype)


class NeighborGraph:
    """A k-NN graph, ``indices[i]`` holding the neighbours of sample ``i``.

    Parameters
    ----------
    indices : torch.Tensor of shape (n_samples, n_neighbors), int64
        On the training device.
    """

    def __init__(self, indices):
        self.indices = indices

    @classmethod
    def build(cls, X_t, features, n_neighbors):
        """The graph of ``X_t`` in the space ``features`` (see :func:`neighbor_points`)."""
        return cls(nearest_neighbors(neighbor_points(X_t, features), n_neighbors))

    def views(self, idx, prob, generator):
        """Training inputs for the samples ``idx``: each a random neighbour with
        probability ``prob``, else the sample itself."""
        pick = torch.randint(self.indices.shape[1], idx.shape, generator=generator,
                             device=idx.device)
        source = self.indices[idx, pick]
        if prob < 1:
            keep = torch.rand(idx.shape, generator=generator, device=idx.device) >= prob
            source = torch.where(keep, idx, source)
        return source

    def diffuse_(self, logits, n_steps, scratch, chunk_elements=DIFFUSION_CHUNK_ELEMENTS):
        """Replace ``logits`` in place by ``log P`` of the graph-diffused probabilities.

        ``P = softmax(logits)``, then ``n_steps`` times ``P <- (P + mean_j P[nbr_j]) / 2``
        (a lazy random walk); the neighbour means are gathered in row chunks into
        ``scratch`` (same shape as ``logits``) so that no ``(N, n_neighbors, K)`` tensor is
        ever formed.
        """
        n, k = logits.shape
        neighbors = self.indices
        # Softmax in place: subtract the row max, exponentiate, normalise.
        probs = logits.sub_(logits.amax(1, keepdim=True)).exp_()
        probs.div_(probs.sum(1, keepdim=True))
        chunk = max(1, chunk_elements // (neighbors.shape[1] * k))
        for _ in range(n_steps):
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                torch.mean(probs[neighbors[start:stop]], 1, out=scratch[start:stop])
            probs.add_(scratch).mul_(0.5)
        # Sinkhorn needs scores; tiny floor so that log stays finite.
        return probs.clamp_(min=1e-8).log_()
