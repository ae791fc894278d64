"""The k-nearest-neighbour graph of the training set: built once per fit in a neighbour space,
it gives neighbour views for gradient steps and smooths labels by diffusion before each
self-label step (the user guide's "Views and the neighbour graph")."""
import math
import warnings

import numpy as np
import torch

from .._data.descriptors import gradient_histograms
from .._runtime.interrupt import check_interrupt
from .._runtime.memory import FLOAT32, INT64, Need, available
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
# The approximate search (an inverted file; the user guide's "The neighbour graph at
# scale"): k-means cuts the points into lists of about LIST_SIZE (trained on KMEANS_SAMPLE
# points per list for KMEANS_ITERATIONS steps); each point is filed in the lists of its
# `spill` nearest centres and searched exactly among the points filed in its own list.
# `spill` is the least, at most MAX_SPILL, whose recall on RECALL_SAMPLE points searched
# exactly, less RECALL_MARGIN standard errors, reaches the asked-for recall.
LIST_SIZE = 1000
KMEANS_SAMPLE, KMEANS_ITERATIONS = 32, 10
MAX_SPILL = 16
RECALL_SAMPLE, RECALL_MARGIN = 1000, 2.0
# The recall asked for by default (the estimator's ``neighbor_recall``).
NEIGHBOR_RECALL = 0.95
# Elements of one distance block of the approximate search (LIVE_BLOCKS alive at once).
SCAN_BLOCK_ELEMENTS = 2**24
# Besides a copy of the points (a list's gathered members, at most all of them), the index
# holds per point its lists and their filing order (MAX_SPILL int64 each), its own list's
# queue position (int64) and its squared norm.
INDEX_BYTES_PER_POINT = 2 * MAX_SPILL * INT64 + INT64 + FLOAT32

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
        point among the points of nearby k-means lists (:class:`InvertedLists`), filed in
        as many lists as ``recall`` needs. "auto": see :func:`search_method`.
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
    if search_method(n, x.shape[1], x.device, recall, method) == "ivf":
        return InvertedLists(x, n_neighbors, recall).search(first, last).to(points.device)
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


def exact_bytes(n, width):
    """The distance blocks of the exact search over ``n`` points of ``width`` values."""
    return LIVE_BLOCKS * min(BLOCK_ROWS, n) * n * FLOAT32


def search_method(n, width, device, recall=NEIGHBOR_RECALL, method="auto"):
    """``"exact"`` or ``"ivf"``: the search of the graph of ``n`` points of ``width`` values
    on ``device``. "auto" is exact when ``recall`` is 1, for at most 100,000 points, and on
    a GPU whenever the exact search's blocks fit in its free memory; else "ivf"."""
    if method != "auto":
        return method
    if recall >= 1 or n <= EXACT_MAX_SAMPLES:
        return "exact"
    if torch.device(device).type == "cuda":
        room, _ = available(device)
        if room is not None and exact_bytes(n, width) <= room:
            return "exact"
    return "ivf"


def _nearest_centres(x, centres, count):
    """``(n, count)`` indices of each row's ``count`` nearest centres, nearest first."""
    sqc = (centres * centres).sum(1)
    rows = max(1, SCAN_BLOCK_ELEMENTS // centres.shape[0])
    return torch.cat([(sqc[None, :] - 2.0 * (x[s:s + rows] @ centres.T))
                      .topk(count, dim=1, largest=False).indices
                      for s in range(0, x.shape[0], rows)])


def _kmeans(x, n_lists):
    """Lloyd's k-means on a seeded sample of ``x``: ``(n_lists, width)`` centres. The sums
    are differences of a float64 cumulative sum of the rows sorted by centre, which, unlike
    ``index_add_`` on a GPU, adds in a fixed order: the graph is reproducible."""
    gen = torch.Generator(x.device).manual_seed(0)
    pick = torch.randperm(x.shape[0], generator=gen, device=x.device)
    sample = x[pick[:KMEANS_SAMPLE * n_lists]]
    centres = sample[:n_lists].clone()
    for _ in range(KMEANS_ITERATIONS):
        nearest = _nearest_centres(sample, centres, 1)[:, 0]
        order = torch.argsort(nearest, stable=True)
        total = torch.zeros((len(sample) + 1, x.shape[1]), dtype=torch.float64,
                            device=x.device)
        torch.cumsum(sample[order].double(), 0, out=total[1:])
        counts = torch.bincount(nearest, minlength=n_lists)
        ends = counts.cumsum(0)
        sums = total[ends] - total[ends - counts]
        filled = counts > 0
        centres[filled] = (sums[filled] / counts[filled, None]).float()
    return centres


class InvertedLists:
    """An approximate k-NN index of the rows of ``x``: k-means lists of about
    :data:`LIST_SIZE` points, each point filed in the lists of its ``spill`` nearest
    centres, with ``spill`` the least (at most :data:`MAX_SPILL`) whose recall, estimated
    on a seeded sample searched exactly, reaches ``recall``.

    Parameters
    ----------
    x : torch.Tensor of shape (n_samples, width), float32
    n_neighbors : int
    recall : float in (0, 1)

    Attributes
    ----------
    n_lists, spill : int
    estimated_recall : float
        Mean recall of the sample at ``spill``.
    """

    def __init__(self, x, n_neighbors, recall=NEIGHBOR_RECALL):
        self.x, self.n_neighbors = x, n_neighbors
        self.n_lists = max(1, round(x.shape[0] / LIST_SIZE))
        self.centres = _kmeans(x, self.n_lists)
        self.spill, self.estimated_recall = self._spill(recall)
        if self.spill == MAX_SPILL and self.estimated_recall < recall:
            warnings.warn(f"The approximate nearest-neighbour search reaches an estimated "
                          f"recall of {self.estimated_recall:.3f}, below neighbor_recall="
                          f"{recall}; set neighbor_recall=1.0 for an exact search (it grows "
                          "like n^2).", UserWarning, stacklevel=2)
        self.lists = _nearest_centres(x, self.centres, self.spill)

    def _sample_neighbors(self, sample):
        """The exact neighbours of the rows ``sample``, in blocks of columns."""
        x, k = self.x, self.n_neighbors
        sq = (x * x).sum(1)
        cols = max(k + 1, SCAN_BLOCK_ELEMENTS // len(sample))
        best_d = torch.full((len(sample), 0), float("inf"), device=x.device)
        best_i = torch.zeros((len(sample), 0), dtype=torch.int64, device=x.device)
        for s in range(0, x.shape[0], cols):
            d = sq[None, s:s + cols] - 2.0 * (x[sample] @ x[s:s + cols].T)
            own = (sample >= s) & (sample < s + cols)
            d[own.nonzero()[:, 0], sample[own] - s] = float("inf")
            best_d = torch.cat([best_d, d], 1)
            best_i = torch.cat([best_i, torch.arange(s, s + d.shape[1], device=x.device)
                                .expand_as(d)], 1)
            best_d, pos = best_d.topk(min(k, best_d.shape[1]), dim=1, largest=False)
            best_i = best_i.gather(1, pos)
        return best_i

    def _spill(self, recall):
        """The least spill reaching ``recall`` on the sample, and its mean recall there: a
        true neighbour j of a sampled point q is found when q's own list is among the
        ``spill`` lists nearest to j."""
        x, k = self.x, self.n_neighbors
        gen = torch.Generator(x.device).manual_seed(1)
        sample = torch.randperm(x.shape[0], generator=gen, device=x.device)[:RECALL_SAMPLE]
        true = self._sample_neighbors(sample).flatten()
        home = _nearest_centres(x[sample], self.centres, 1).repeat_interleave(k, 0)
        sqc = (self.centres * self.centres).sum(1)
        ranks, rows = [], max(1, SCAN_BLOCK_ELEMENTS // self.n_lists)
        for s in range(0, len(true), rows):
            d = sqc[None, :] - 2.0 * (x[true[s:s + rows]] @ self.centres.T)
            ranks.append((d < d.gather(1, home[s:s + rows])).sum(1))
        rank = torch.cat(ranks).view(len(sample), k)
        for spill in range(1, MAX_SPILL + 1):
            found = (rank < spill).double().mean(1)
            error = found.std() / math.sqrt(len(sample)) if len(sample) > 1 else 0.0
            if found.mean() - RECALL_MARGIN * error >= recall or spill == self.n_lists:
                break
        return spill, float(found.mean())

    def search(self, first, last):
        """``(last - first, n_neighbors)`` approximate neighbours of the points ``[first,
        last)``, each searched exactly among the points filed in its nearest list."""
        x, k = self.x, self.n_neighbors
        n, device = x.shape[0], x.device
        sq = (x * x).sum(1)
        flat = self.lists.flatten()
        filed = torch.argsort(flat, stable=True).div_(self.spill, rounding_mode="floor")
        ends = torch.bincount(flat, minlength=self.n_lists).cumsum(0).tolist()
        own = self.lists[first:last, 0]
        queue = torch.argsort(own, stable=True) + first
        own_ends = torch.bincount(own, minlength=self.n_lists).cumsum(0).tolist()
        out = torch.empty((last - first, k + 1), dtype=torch.int64, device=device)
        for j in range(self.n_lists):
            queries = queue[(own_ends[j - 1] if j else 0):own_ends[j]]
            if not len(queries):
                continue
            members = filed[(ends[j - 1] if j else 0):ends[j]]
            if len(members) <= k:       # too few to choose from: search them all
                members = torch.arange(n, device=device)
            points, norms = x[members], sq[members]
            rows = max(1, SCAN_BLOCK_ELEMENTS // len(members))
            for s in range(0, len(queries), rows):
                q = queries[s:s + rows]
                d = norms[None, :] - 2.0 * (x[q] @ points.T)
                out[q - first] = members[d.topk(k + 1, dim=1, largest=False).indices]
        return torch.from_numpy(drop_self(out.cpu().numpy(), k, first)).to(device)


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
    points (and the wide ones while they are projected in memory), and the graph."""
    width = min(d, MAX_DIM)
    wide = n * d * FLOAT32 if MAX_DIM < d and n * d * FLOAT32 <= IN_MEMORY_BYTES else 0
    lower = "n_samples, or n_neighbors=0 (no graph)"
    if search_method(n, width, device, recall) == "exact":
        search = Need("k-NN distance blocks", exact_bytes(n, width), lower)
    else:
        search = Need("k-NN index", n * (width * FLOAT32 + INDEX_BYTES_PER_POINT)
                      + LIVE_BLOCKS * SCAN_BLOCK_ELEMENTS * FLOAT32, lower)
    return [search, Need("k-NN points", wide + n * width * FLOAT32, "n_samples"),
            *graph_needs(n, n_neighbors)]


def diffusion_needs(n, k, n_neighbors):
    """Diffusing ``k`` values per sample over the graph (a head's probabilities, or the
    features when they are narrower): a scratch buffer and a gather chunk."""
    chunk = min(n * n_neighbors * k, max(DIFFUSION_CHUNK_ELEMENTS, n_neighbors * k))
    return [Need("diffusion scratch", n * k * FLOAT32, "n_clusters, or diffusion_steps=0"),
            Need("diffusion gather", chunk * FLOAT32, "n_neighbors")]
