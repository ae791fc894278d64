"""The k-nearest-neighbour graph of the training set: built once per fit in a neighbour space,
it gives neighbour views for gradient steps and smooths labels by diffusion before each
self-label step (the user guide's "Views and the neighbour graph")."""
import math
import warnings

import numpy as np
import torch

from .._data.descriptors import gradient_histograms
from .._runtime.interrupt import check_interrupt
from .._data.sources import READ_ROWS
from .._runtime.memory import FLOAT32, FLOAT64, INT64, Need, available
from .._runtime.processes import SOLO
from ..metrics import drop_self, neighbor_agreement

# Rows of the (chunk, n_neighbors, K) gather of a diffusion step: about 64 MB at a time.
DIFFUSION_CHUNK_ELEMENTS = 2**24
# Neighbour spaces wider than this are projected on their top principal axes: in memory
# when the wide points take at most IN_MEMORY_BYTES, else in two streamed passes.
MAX_DIM = 64
IN_MEMORY_BYTES = 1 << 28
# Exact search (O(N^2)) up to this many samples on a CPU, and on a GPU wherever its blocks
# fit in free device memory: BLOCK_ROWS rows of the distance matrix at a time (LIVE_BLOCKS
# alive at once: the product, its double, the previous block). An approximate search beyond.
EXACT_MAX_SAMPLES = 100_000
BLOCK_ROWS = 2048
LIVE_BLOCKS = 3
# The approximate search (faiss's IndexIVFFlat, the `faiss` extra; the user guide's "The
# neighbour graph at scale"): k-means, seeded with KMEANS_SEED on one thread so that the
# graph is reproducible, cuts the points into lists of about LIST_SIZE; each point is
# searched among the points of its `nprobe` nearest lists, nprobe the least, at most
# MAX_NPROBE, whose recall on RECALL_SAMPLE points searched exactly, less RECALL_MARGIN
# standard errors, reaches the asked-for recall.
LIST_SIZE = 1000
KMEANS_SEED = 0
MAX_NPROBE = 64
RECALL_SAMPLE, RECALL_MARGIN = 1000, 2.0
# The recall asked for by default (the estimator's ``neighbor_recall``).
NEIGHBOR_RECALL = 0.95
# Queries per faiss search, taken in the order of their lists (neighbouring queries scan
# the same lists, which keeps them in cache), and per exact block of the recall sample.
SEARCH_ROWS = 1 << 16
SAMPLE_BLOCK_ELEMENTS = 1 << 24
# Besides its copy of the points, the index holds an int64 id per point and a centroid per
# list; each point's list (int64) orders the queries.
INDEX_BYTES_PER_POINT = 2 * INT64


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
                      method="auto", rows=None, recall=NEIGHBOR_RECALL):
    """Indices of each point's ``n_neighbors`` nearest other points (Euclidean).

    Parameters
    ----------
    points : torch.Tensor of shape (n_samples, ...)
        Samples on any device; flattened to vectors.
    n_neighbors : int
        Neighbours per point, ``1 <= n_neighbors < n_samples``.
    batch_size : int, default=2048
        Rows of the exact distance matrix computed at once (memory ``batch_size *
        n_samples``).
    max_dim : int, default=64
        Vectors wider than this are first projected on their top ``max_dim`` principal
        axes (exact eigendecomposition of the covariance: deterministic, no RNG), which
        keeps the search cheap for images.
    method : {"auto", "exact", "ivf"}, default="auto"
        "exact" compares every pair, in blocks of ``batch_size`` rows; "ivf" searches each
        point among the points of its nearest k-means lists, as many as ``recall`` needs
        (:class:`IVFSearch`, faiss: the ``faiss`` extra). "auto": see
        :func:`search_method`; where it would search approximately but faiss is not
        installed, it searches exactly and warns.
    rows : tuple of int, default=None
        ``(start, stop)``: search the neighbours of these points only (a process's shard),
        among all points; None: of every point.
    recall : float in (0, 1], default=0.95
        The share of the true neighbours the approximate search is to find (1: exact).

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
    chosen = search_method(n, x.shape[1], x.device, recall, method)
    if method == "auto" and chosen == "exact" and _wants_approximate(n, x.shape[1], x.device,
                                                                      recall):
        warnings.warn(f"Exact nearest-neighbour search over {n} samples grows like n^2 "
                      "(hours beyond a million); install the faiss extra (pip install "
                      "'skselflabel[faiss]') for an approximate search.", UserWarning,
                      stacklevel=4)
    if chosen == "ivf":
        return IVFSearch(x, n_neighbors, recall).search(first, last).to(points.device)
    return _exact(x, torch.arange(first, last, device=x.device), n_neighbors, batch_size)


def _exact(x, queries, n_neighbors, batch_size):
    """The exact neighbours of the rows ``queries`` of ``x``, ``batch_size`` rows at a
    time against all points."""
    sq = (x * x).sum(1)
    out = torch.empty((len(queries), n_neighbors), dtype=torch.int64, device=x.device)
    for start in range(0, len(queries), batch_size):
        q = queries[start:start + batch_size]
        # |a-b|^2 = |a|^2 - 2 a.b + |b|^2; |a|^2 is constant per row, so it can be left out.
        d = sq[None, :] - 2.0 * (x[q] @ x.T)
        d[torch.arange(len(q), device=x.device), q] = float("inf")
        out[start:start + len(q)] = d.topk(n_neighbors, dim=1, largest=False).indices
    return out


def exact_bytes(n, width):
    """The distance blocks of the exact search over ``n`` points of ``width`` values."""
    return LIVE_BLOCKS * min(BLOCK_ROWS, n) * n * FLOAT32


def _faiss():
    """The faiss module, or None when the ``faiss`` extra is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _wants_approximate(n, width, device, recall):
    """Whether "auto" searches approximately where faiss is installed: below a recall of
    1, beyond :data:`EXACT_MAX_SAMPLES` points, and on a GPU only where the exact blocks
    do not fit."""
    if recall >= 1 or n <= EXACT_MAX_SAMPLES:
        return False
    if torch.device(device).type == "cuda":
        room, _ = available(device)
        if room is not None and exact_bytes(n, width) <= room:
            return False
    return True


def search_method(n, width, device, recall=NEIGHBOR_RECALL, method="auto"):
    """``"exact"`` or ``"ivf"``: the search of the graph of ``n`` points of ``width`` values
    on ``device``. "auto" is exact when ``recall`` is 1, for at most
    :data:`EXACT_MAX_SAMPLES` points, on a GPU whenever the exact search's blocks fit in
    its free memory, and without faiss; else "ivf"."""
    if method != "auto":
        return method
    wanted = _wants_approximate(n, width, device, recall)
    return "ivf" if wanted and _faiss() is not None else "exact"


class IVFSearch:
    """An approximate k-NN search of the rows of ``x`` with faiss's ``IndexIVFFlat``:
    about ``n / LIST_SIZE`` k-means lists, each point searched in its ``nprobe`` nearest
    lists, ``nprobe`` the least (at most :data:`MAX_NPROBE`) whose recall, estimated on a
    seeded sample searched exactly, reaches ``recall``.

    Parameters
    ----------
    x : torch.Tensor of shape (n_samples, width), float32
    n_neighbors : int
    recall : float in (0, 1)

    Attributes
    ----------
    n_lists, nprobe : int
    estimated_recall : float
        Mean recall of the sample at ``nprobe``.
    """

    def __init__(self, x, n_neighbors, recall=NEIGHBOR_RECALL):
        faiss = _faiss()
        if faiss is None:
            raise ImportError("The approximate neighbour search needs faiss: pip install "
                              "'skselflabel[faiss]'.")
        self.data = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        self.n_neighbors = n_neighbors
        n, width = self.data.shape
        self.n_lists = max(1, round(n / LIST_SIZE))
        self.index = faiss.IndexIVFFlat(faiss.IndexFlatL2(width), width, self.n_lists)
        self.index.cp.seed = KMEANS_SEED
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)      # k-means on several threads depends on timing
        try:
            self.index.train(self.data)
            self.index.add(self.data)
            self.lists = self.index.quantizer.assign(self.data, 1)[:, 0]
        finally:
            faiss.omp_set_num_threads(threads)
        self.nprobe, self.estimated_recall, reached = self._nprobe(recall)
        if not reached:
            warnings.warn(f"The approximate nearest-neighbour search reaches an estimated "
                          f"recall of {self.estimated_recall:.3f} at nprobe={self.nprobe} "
                          f"(its cap), short of neighbor_recall={recall}; set "
                          "neighbor_recall=1.0 for an exact search (it grows like n^2).",
                          UserWarning, stacklevel=2)
        self.index.nprobe = self.nprobe

    def _nprobe(self, recall):
        """The least nprobe reaching ``recall`` on the sample (else the cap), its mean
        recall there, and whether it reached ``recall``: a true neighbour j of a sampled
        point q is found when j's list is among q's ``nprobe`` nearest lists."""
        n, k = self.data.shape[0], self.n_neighbors
        x = torch.from_numpy(self.data)
        gen = torch.Generator().manual_seed(1)
        sample = torch.randperm(n, generator=gen)[:RECALL_SAMPLE]
        true = _exact(x, sample, k, max(1, SAMPLE_BLOCK_ELEMENTS // n)).numpy()
        cap = min(MAX_NPROBE, self.n_lists)
        _, probed = self.index.quantizer.search(self.data[sample.numpy()], cap)
        hit = probed[:, None, :] == self.lists[true][:, :, None]
        rank = np.where(hit.any(2), hit.argmax(2), cap)
        for nprobe in range(1, cap + 1):
            found = (rank < nprobe).mean(1)
            error = found.std() / math.sqrt(len(found)) if len(found) > 1 else 0.0
            if found.mean() - RECALL_MARGIN * error >= recall or nprobe == self.n_lists:
                return nprobe, float(found.mean()), True
        return cap, float(found.mean()), False

    def search(self, first, last):
        """``(last - first, n_neighbors)`` approximate neighbours of the points ``[first,
        last)``, searched in the order of their lists."""
        k = self.n_neighbors
        order = first + np.argsort(self.lists[first:last], kind="stable")
        found = np.empty((last - first, k + 1), dtype=np.int64)
        for start in range(0, len(order), SEARCH_ROWS):
            rows = order[start:start + SEARCH_ROWS]
            found[rows - first] = self.index.search(self.data[rows], k + 1)[1]
        return torch.from_numpy(drop_self(found, k, first))


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
    def build(cls, feeder, features, n_neighbors, team=SOLO, recall=NEIGHBOR_RECALL):
        """The graph of the feeder's samples in the space ``features`` (see
        :func:`neighbor_points`), on the feeder's index device, searched to ``recall`` (see
        :func:`nearest_neighbors`); with several processes in ``team``, each searches the
        neighbours of its shard and the results are gathered."""
        points = neighbor_points(feeder, features, team=team)
        if team.world == 1:
            return cls(nearest_neighbors(points, n_neighbors, recall=recall))
        start, stop = team.shard(feeder.n_samples)
        local = nearest_neighbors(points, n_neighbors, rows=(start, stop), recall=recall)
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


def knn_needs(n, d, n_neighbors, recall=NEIGHBOR_RECALL, device="cpu"):
    """Building the graph of ``n`` points of width ``d`` on ``device``: the search (exact
    distance blocks, or the approximate index, as :func:`search_method` chooses), the
    points (twice while their batches are joined, and the wide ones while they are
    projected in memory), a batch of the neighbour space being read, and the graph."""
    width = min(d, MAX_DIM)
    wide = n * d * FLOAT32 if MAX_DIM < d and n * d * FLOAT32 <= IN_MEMORY_BYTES else 0
    lower = "n_samples, or n_neighbors=0 (no graph)"
    if search_method(n, width, device, recall) == "exact":
        search = Need("k-NN distance blocks", exact_bytes(n, width), lower)
    else:
        search = Need("k-NN index", ivf_bytes(n, width, n_neighbors), lower)
    # The batches are joined by torch.cat (list and result alive at once); a batch read
    # for the principal axes is also held in float64.
    return [search, Need("k-NN points", 2 * (wide + n * width * FLOAT32), "n_samples"),
            Need("k-NN batch being read", min(n, READ_ROWS) * d * (FLOAT32 + FLOAT64),
                 "n_neighbors=0 (no graph)"),
            *graph_needs(n, n_neighbors)]


def ivf_bytes(n, width, n_neighbors):
    """:class:`IVFSearch` of ``n`` points of ``width`` values: its copy of the points, their
    ids and lists, the centroids, a block of queries and their results, and the full
    results before the point itself is dropped."""
    lists = max(1, round(n / LIST_SIZE))
    block = min(n, SEARCH_ROWS)
    return (n * (width * FLOAT32 + INDEX_BYTES_PER_POINT) + lists * width * FLOAT32
            + block * (width * FLOAT32 + (n_neighbors + 1) * (FLOAT32 + INT64))
            + n * (n_neighbors + 1) * INT64)


def diffusion_needs(n, k, n_neighbors):
    """Diffusing ``k`` values per sample over the graph (a head's probabilities, or the
    features when they are narrower): a scratch buffer and a gather chunk."""
    chunk = min(n * n_neighbors * k, max(DIFFUSION_CHUNK_ELEMENTS, n_neighbors * k))
    return [Need("diffusion scratch", n * k * FLOAT32, "n_clusters, or diffusion_steps=0"),
            Need("diffusion gather", chunk * FLOAT32, "n_neighbors")]
