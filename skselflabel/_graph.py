"""The k-nearest-neighbour graph of the training set and its two uses.

Where augmentations are weak or absent (tables, tiny images), the graph supplies the
smoothness a clustering needs:

* **neighbour views**: the input of a sample's gradient step is replaced by a randomly
  chosen near neighbour while the target stays the sample's own self-label, so the network
  learns labels that are constant over neighbourhoods;
* **diffusion**: before the self-label step solves for balanced labels, each head's
  probabilities (or, with more clusters than features, the backbone's features) are
  smoothed over the graph, so neighbours share self-labels unless the network clearly
  disagrees.

The graph is built once per fit in a "neighbour space": the inputs themselves, histograms
of gradient orientations for images (:mod:`skselflabel._descriptors`), or a user embedding,
computed batch by batch and projected on its top 64 principal axes when wider. The search
is exact up to 100,000 samples; beyond, it is approximate (faiss, the optional extra
``faiss``, in N log N time) or, without faiss, exact with a warning.

In a data-parallel fit each process computes the neighbour points of its shard of the rows
(wide points projected on principal axes of all rows, from all-reduced float64 sums), the
low-dimensional points are all-gathered, each process searches the neighbours of its shard
among all rows, and the neighbour indices are all-gathered: every process holds the graph
of all rows.
"""
import warnings

import numpy as np
import torch

from ._descriptors import gradient_histograms
from ._distributed import SOLO
from ._interrupt import check_interrupt

# Rows of the (chunk, n_neighbors, K) gather of a diffusion step: about 64 MB at a time.
DIFFUSION_CHUNK_ELEMENTS = 2**24
# Neighbour spaces wider than this are projected on their top principal axes: in memory
# when the wide points take at most IN_MEMORY_BYTES, else in two streamed passes.
MAX_DIM = 64
IN_MEMORY_BYTES = 1 << 28
# Exact search (O(N^2)) up to this many samples; an approximate index beyond.
EXACT_MAX_SAMPLES = 100_000
# faiss HNSW index: links per node, and the search depth at construction and query; the
# values give recall@10 above 0.95 against exact search (benchmarks/scale.py measures it).
HNSW_LINKS, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 16, 40, 48


def _embedder(features):
    """``f(batch) -> (batch, m)`` float32 for the ``neighbor_features`` setting."""
    if isinstance(features, str) and features == "input":
        return lambda batch: batch.flatten(1)
    if isinstance(features, str) and features == "gradients":
        def hog(batch):
            if batch.ndim != 4:
                raise ValueError("neighbor_features='gradients' needs images (n, c, h, w); "
                                 f"got data of shape {tuple(batch.shape)}. Use 'input' for "
                                 "tables.")
            return gradient_histograms(batch)
        return hog

    def user(batch):
        points = torch.as_tensor(features(batch))
        if points.ndim != 2 or points.shape[0] != batch.shape[0]:
            raise ValueError("neighbor_features must return an (n_samples, n_features) "
                             f"tensor for a batch of {batch.shape[0]} samples; got shape "
                             f"{tuple(points.shape)}.")
        if not torch.isfinite(points).all():
            raise ValueError("neighbor_features returned NaN or inf values.")
        return points.to(batch.device, torch.float32)
    return user


def _given_points(features, n_samples, device):
    """A precomputed embedding passed as ``neighbor_features`` (an array)."""
    points = torch.as_tensor(np.asarray(features, dtype=np.float32))
    if points.ndim != 2 or points.shape[0] != n_samples:
        raise ValueError(f"neighbor_features given as an array must have shape "
                         f"(n_samples, n_features) = ({n_samples}, m); got "
                         f"{tuple(points.shape)}.")
    if not torch.isfinite(points).all():
        raise ValueError("neighbor_features holds NaN or inf values.")
    return points.to(device)


def neighbor_points(feeder, features, max_dim=MAX_DIM, team=SOLO):
    """The points whose nearest neighbours make the graph, computed batch by batch.

    Parameters
    ----------
    feeder : skselflabel._source.Feeder
        The prepared training samples.
    features : {"input", "gradients"}, callable or array-like
        The resolved ``neighbor_features``: the samples, their gradient histograms, a
        function of a batch of prepared samples, or an ``(n_samples, m)`` embedding.
    max_dim : int, default=64
        Wider points are projected on their top ``max_dim`` principal axes; when the wide
        ``(n_samples, m)`` matrix would exceed 256 MiB, in two streamed passes
        (covariance, then projection) instead of in memory.
    team : skselflabel._distributed.Team, default=one process
        With several processes, each embeds its shard of the rows and the points are
        all-gathered (wide ones projected in the streamed way, over all rows).

    Returns
    -------
    points : torch.Tensor of shape (n_samples, min(m, max_dim)), float32
        On the feeder's index device.
    """
    if not (isinstance(features, str) or callable(features)):
        points = _given_points(features, feeder.n_samples, feeder.index_device)
        return _project(points, max_dim) if points.shape[1] > max_dim else points
    embed = _embedder(features)
    if team.world > 1:
        return _shared_points(embed, feeder, max_dim, team)
    width = embed(feeder.take(slice(0, 2))).shape[1]
    if width <= max_dim or feeder.n_samples * width * 4 <= IN_MEMORY_BYTES:
        points = torch.cat([embed(b) for b in feeder.sequential()]).to(feeder.index_device)
        return _project(points, max_dim) if width > max_dim else points
    mean, axes = _principal_axes(embed, feeder, max_dim)
    return torch.cat([((embed(b) - mean) @ axes).to(feeder.index_device)
                      for b in feeder.sequential()])


def _shared_points(embed, feeder, max_dim, team):
    """:func:`neighbor_points` of every sample, each process embedding its shard."""
    start, stop = team.shard(feeder.n_samples)
    part = feeder.rows(start, stop)
    if embed(part.take(slice(0, 2))).shape[1] > max_dim:
        mean, axes = _principal_axes(embed, part, max_dim, team)
        local = torch.cat([((embed(b) - mean) @ axes).to(feeder.index_device)
                           for b in part.sequential()])
    else:
        local = torch.cat([embed(b) for b in part.sequential()]).to(feeder.index_device)
    return team.gather_rows(local, feeder.n_samples)


def _principal_axes(embed, feeder, dim, team=SOLO):
    """Mean and top ``dim`` principal axes of the embedded samples, in one streamed pass
    of float64 sums (the axes of the covariance; exact, no RNG), summed over the
    processes of ``team``."""
    count, total, outer = 0, 0.0, 0.0
    for batch in feeder.sequential():
        x = embed(batch).to(torch.float64)
        count, total, outer = count + x.shape[0], total + x.sum(0), outer + x.T @ x
    if team.world > 1:
        count = int(team.sum_(torch.tensor([count], dtype=torch.int64))[0])
        total, outer = team.sum_(total), team.sum_(outer)
    mean = total / count
    cov = (outer - count * torch.outer(mean, mean)) / max(1, count - 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    return mean.float(), vecs[:, -dim:].float()


def nearest_neighbors(points, n_neighbors, batch_size=2048, max_dim=MAX_DIM, method="auto",
                      rows=None):
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
    method : {"auto", "exact", "faiss"}, default="auto"
        "exact" compares every pair, in blocks of ``batch_size`` rows; "faiss" uses an
        approximate HNSW index (faiss-cpu, the ``faiss`` extra), growing like N log N.
        "auto" is exact up to 100,000 points and faiss beyond (exact, with a warning,
        when faiss is not installed).
    rows : tuple of int, default=None
        ``(start, stop)``: search the neighbours of these points only (a process's shard),
        among all points; None: of every point.

    Returns
    -------
    indices : torch.Tensor of shape (stop - start, n_neighbors), int64
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
    first, last = (0, n) if rows is None else rows
    if _choose_method(method, n) == "faiss":
        return _faiss_neighbors(x, n_neighbors, first, last).to(points.device)
    sq = (x * x).sum(1)
    out = torch.empty((last - first, n_neighbors), dtype=torch.int64, device=x.device)
    for start in range(first, last, batch_size):
        stop = min(start + batch_size, last)
        # |a-b|^2 = |a|^2 - 2 a.b + |b|^2; |a|^2 is constant per row, so it can be left out.
        d = sq[None, :] - 2.0 * (x[start:stop] @ x.T)
        block = torch.arange(stop - start, device=x.device)
        d[block, block + start] = float("inf")
        out[start - first:stop - first] = d.topk(n_neighbors, dim=1, largest=False).indices
    return out


def _choose_method(method, n):
    if method != "auto":
        return method
    if n <= EXACT_MAX_SAMPLES:
        return "exact"
    try:
        import faiss  # noqa: F401
    except ImportError:
        warnings.warn(f"Exact nearest-neighbour search over {n} samples grows like n^2 "
                      "(hours beyond a million); install the faiss extra (pip install "
                      "'skselflabel[faiss]') for an approximate search.", UserWarning,
                      stacklevel=4)
        return "exact"
    return "faiss"


def _faiss_neighbors(x, n_neighbors, start, stop):
    """Approximate k-NN of the points ``[start, stop)`` among all, with a faiss HNSW index
    of all points built on one thread, so that the graph, and with it the fit, is
    reproducible (a parallel build depends on thread timing)."""
    import faiss

    data = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
    index = faiss.IndexHNSWFlat(data.shape[1], HNSW_LINKS)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.add(data)
    finally:
        faiss.omp_set_num_threads(threads)
    index.hnsw.efSearch = max(HNSW_EF_SEARCH, n_neighbors + 1)
    _, found = index.search(data[start:stop], n_neighbors + 1)
    return torch.from_numpy(_drop_self(found, n_neighbors, start))


def _drop_self(found, n_neighbors, first=0):
    """Each row's neighbours without the point itself (row ``i`` is point ``first + i``),
    or without its last one when the search did not return the point, as may happen with
    exact duplicates."""
    own = found == np.arange(first, first + found.shape[0])[:, None]
    own[~own.any(1), -1] = True
    return found[~own].reshape(found.shape[0], n_neighbors).astype(np.int64)


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
    def build(cls, feeder, features, n_neighbors, team=SOLO):
        """The graph of the feeder's samples in the space ``features`` (see
        :func:`neighbor_points`), on the feeder's index device; with several processes in
        ``team``, each searches the neighbours of its shard and the results are gathered."""
        points = neighbor_points(feeder, features, team=team)
        if team.world == 1:
            return cls(nearest_neighbors(points, n_neighbors))
        start, stop = team.shard(feeder.n_samples)
        local = nearest_neighbors(points, n_neighbors, rows=(start, stop))
        return cls(team.gather_rows(local, feeder.n_samples))

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

    def walk_(self, values, n_steps, scratch, chunk_elements=DIFFUSION_CHUNK_ELEMENTS):
        """``n_steps`` steps of a lazy random walk on the rows of ``values``, in place:
        ``V <- (V + mean_j V[nbr_j]) / 2``.

        The neighbour means are gathered in row chunks into ``scratch`` (same shape as
        ``values``), so that no ``(N, n_neighbors, width)`` tensor is ever formed.
        """
        n, width = values.shape
        neighbors = self.indices
        chunk = max(1, chunk_elements // (neighbors.shape[1] * width))
        for _ in range(n_steps):
            check_interrupt()
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                torch.mean(values[neighbors[start:stop]], 1, out=scratch[start:stop])
            values.add_(scratch).mul_(0.5)
        return values

    def diffuse_(self, logits, n_steps, scratch, chunk_elements=DIFFUSION_CHUNK_ELEMENTS):
        """Replace ``logits`` in place by ``log P`` of the graph-diffused probabilities:
        ``P = softmax(logits)``, then :meth:`walk_` on ``P``."""
        # Softmax in place: subtract the row max, exponentiate, normalise.
        probs = logits.sub_(logits.amax(1, keepdim=True)).exp_()
        probs.div_(probs.sum(1, keepdim=True))
        self.walk_(probs, n_steps, scratch, chunk_elements)
        # Sinkhorn needs scores; tiny floor so that log stays finite.
        return probs.clamp_(min=1e-8).log_()
