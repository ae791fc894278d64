"""The k-nearest-neighbour graph of the training set: built once per fit in a neighbour space,
it gives neighbour views for gradient steps and smooths labels by diffusion before each
self-label step (the user guide's "Views and the neighbour graph")."""
import math
import warnings

import numpy as np
import torch

from .._data.descriptors import gradient_histograms
from .._runtime.interrupt import check_interrupt
from .._runtime.memory import FLOAT32, INT64, Need
from .._runtime.processes import SOLO
from ..metrics import drop_self, neighbor_agreement

# Rows of the (chunk, n_neighbors, K) gather of a diffusion step: about 64 MB at a time.
DIFFUSION_CHUNK_ELEMENTS = 2**24
# Neighbour spaces wider than this are projected on their top principal axes: in memory
# when the wide points take at most IN_MEMORY_BYTES, else in two streamed passes.
MAX_DIM = 64
IN_MEMORY_BYTES = 1 << 28
# Exact search (O(N^2)) up to this many samples, BLOCK_ROWS rows of the distance matrix at
# a time (LIVE_BLOCKS alive at once: the product, its double, the previous block); an
# approximate index beyond.
EXACT_MAX_SAMPLES = 100_000
BLOCK_ROWS = 2048
LIVE_BLOCKS = 3
# faiss HNSW index: links per node, and the search depth at construction and query
# (benchmarks/scale.py measures their recall against exact search). Besides the points
# the index holds about INDEX_BYTES_PER_POINT per point: its links (twice HNSW_LINKS int32
# ids) and their bookkeeping.
HNSW_LINKS, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 16, 40, 48
INDEX_BYTES_PER_POINT = 2 * HNSW_LINKS * 4 + 64


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
    feeder : skselflabel._data.sources.Feeder
        The prepared training samples.
    features : {"input", "gradients"}, callable or array-like
        The resolved ``neighbor_features``: the samples, their gradient histograms, a
        function of a batch of prepared samples, or an ``(n_samples, m)`` embedding.
    max_dim : int, default=64
        Wider points are projected on their top ``max_dim`` principal axes; when the wide
        ``(n_samples, m)`` matrix would exceed 256 MiB, in two streamed passes
        (covariance, then projection) instead of in memory.
    team : skselflabel._runtime.processes.Team, default=one process
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


def nearest_neighbors(points, n_neighbors, batch_size=BLOCK_ROWS, max_dim=MAX_DIM,
                      method="auto", rows=None):
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
    >>> from skselflabel._fit.graph import nearest_neighbors
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
    return torch.from_numpy(drop_self(found, n_neighbors, start))


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

    def agreement(self, labels, n_clusters):
        """:func:`~skselflabel.metrics.neighbor_agreement` of ``labels`` (a tensor of the
        graph's samples) on this graph."""
        return neighbor_agreement(None, labels.cpu().numpy(), n_clusters=n_clusters,
                                  neighbors=self.indices.cpu().numpy())

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


def neighbor_width(features, sample_shape):
    """Values per sample of the neighbour space ``features`` (before any projection): the
    gradient histograms' length for images, else the sample's size (for tables the graph
    itself says what is wrong with "gradients"; an embedding counts as the samples)."""
    if (isinstance(features, str) and features == "gradients"
            and len(sample_shape) == 3):
        return gradient_histograms(torch.zeros((1, *sample_shape))).shape[1]
    return math.prod(sample_shape)


def graph_needs(n, n_neighbors):
    """The graph itself: ``n_neighbors`` indices per sample."""
    return [Need("neighbour indices", n * n_neighbors * INT64, "n_neighbors")]


def knn_needs(n, d, n_neighbors):
    """Building the graph of ``n`` points of width ``d``: the search (exact distance blocks,
    or an approximate index), the points (and the wide ones while they are projected in
    memory), and the graph."""
    width = min(d, MAX_DIM)
    wide = n * d * FLOAT32 if MAX_DIM < d and n * d * FLOAT32 <= IN_MEMORY_BYTES else 0
    if n <= EXACT_MAX_SAMPLES:
        search = Need("k-NN distance blocks", LIVE_BLOCKS * min(BLOCK_ROWS, n) * n * FLOAT32,
                      "n_samples, or n_neighbors=0 (no graph)")
    else:
        search = Need("k-NN index", n * (width * FLOAT32 + INDEX_BYTES_PER_POINT),
                      "n_samples, or n_neighbors=0 (no graph)")
    return [search, Need("k-NN points", wide + n * width * FLOAT32, "n_samples"),
            *graph_needs(n, n_neighbors)]


def diffusion_needs(n, k, n_neighbors):
    """Diffusing ``k`` values per sample over the graph (a head's probabilities, or the
    features when they are narrower): a scratch buffer and a gather chunk."""
    chunk = min(n * n_neighbors * k, max(DIFFUSION_CHUNK_ELEMENTS, n_neighbors * k))
    return [Need("diffusion scratch", n * k * FLOAT32, "n_clusters, or diffusion_steps=0"),
            Need("diffusion gather", chunk * FLOAT32, "n_neighbors")]
