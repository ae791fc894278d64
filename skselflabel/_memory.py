"""Memory: estimates of the large allocations of a step, and the check that runs before them.

A fit of :class:`SelfLabelClusterer` at SeLa's scale (``n_clusters=3000, n_heads=10`` on
200,000 samples) needs gigabytes at a time: k-NN distance blocks, one head's logits, the
diffusion scratch, the solver's buffers. Allocating them on a machine that does not have
them ends in the out-of-memory killer, which takes the user's notebook with it. So each
step first adds up what it will allocate (:func:`fit_phases`, :func:`score_phases`,
:func:`solver_phases`: pure functions of the sizes, in one place so that they can follow
the code they describe) and :func:`require` raises a :class:`MemoryError` that says how
much is needed, how much there is and which parameters lower it.

What "available" means: free device memory on CUDA (``torch.cuda.mem_get_info`` plus what
torch's caching allocator holds unused); ``MemAvailable`` of ``/proc/meminfo`` for the CPU
on Linux; elsewhere it is unknown and nothing is checked. The environment variable
``SKSELFLABEL_MEMORY_LIMIT`` overrides it: a size (``"8GiB"``, ``"500MB"``, ``"2e9"``)
is taken as what is available, ``"off"`` turns the check off.

The estimates count the buffers the code allocates, not the allocator's slack, Python
objects or a user network's activations; they aim at the right size, not a bound.
"""
from dataclasses import dataclass
import os
import re

import torch

ENV = "SKSELFLABEL_MEMORY_LIMIT"

# Sizes of what is allocated.
FLOAT32, FLOAT64, INT64 = 4, 8, 8
# k-NN graph (_graph.nearest_neighbors): rows of the distance matrix per block, vectors wider
# than this are projected first, and blocks alive at once (the product, its double and the
# distance block, while the previous distance block is still referenced). Beyond
# KNN_EXACT_MAX points the search is approximate: a faiss HNSW index of about
# KNN_INDEX_BYTES_PER_POINT bytes per point besides the points themselves (its links).
# Wide spaces are projected in memory up to KNN_IN_MEMORY bytes (_graph.IN_MEMORY_BYTES).
KNN_BLOCK_ROWS = 2048
KNN_MAX_DIM = 64
KNN_LIVE_BLOCKS = 3
KNN_EXACT_MAX = 100_000
KNN_INDEX_BYTES_PER_POINT = 2 * 16 * 4 + 64
KNN_IN_MEMORY = 1 << 28
# Diffusion (_graph.NeighborGraph.diffuse_): elements of its neighbour gather per chunk.
DIFFUSION_CHUNK_ELEMENTS = 2**24
# Solver (_sinkhorn): kernel entries of the row subsample of the warm-up (two buffers) and
# its rows per cluster, and the float64/int64 vectors kept per row.
WARMUP_ELEMENTS = 4_000_000
WARMUP_ROWS_PER_CLUSTER = 8
SOLVER_BYTES_PER_ROW = 6 * FLOAT64

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "tib": 2**40}


@dataclass(frozen=True)
class Need:
    """One allocation: what it holds, its size in bytes, and what makes it smaller."""

    what: str
    nbytes: int
    lower: str = ""


# ---------------------------------------------------------------------------- estimates
def knn_needs(n, d, n_neighbors, block_rows=KNN_BLOCK_ROWS):
    """The k-NN graph of ``n`` points of width ``d``: the points (and the wide ones while
    they are projected in memory), the search (exact distance blocks, or an approximate
    index beyond ``KNN_EXACT_MAX`` points), the neighbour indices."""
    width = min(d, KNN_MAX_DIM)
    wide = n * d * FLOAT32 if KNN_MAX_DIM < d and n * d * FLOAT32 <= KNN_IN_MEMORY else 0
    if n <= KNN_EXACT_MAX:
        search = Need("k-NN distance blocks", KNN_LIVE_BLOCKS * min(block_rows, n) * n *
                      FLOAT32, "n_samples, or n_neighbors=0 (no graph)")
    else:
        search = Need("k-NN index", n * (width * FLOAT32 + KNN_INDEX_BYTES_PER_POINT),
                      "n_samples, or n_neighbors=0 (no graph)")
    return [search, Need("k-NN points", wide + n * width * FLOAT32, "n_samples"),
            Need("neighbour indices", n * n_neighbors * INT64, "n_neighbors")]


def solver_needs(n, k, itemsize=FLOAT32, copies=False):
    """One solve of ``sinkhorn_knopp`` on ``n`` x ``k`` scores of ``itemsize`` bytes.

    The warm-up works on a row subsample (two buffers; the whole matrix when it is small),
    and the kernel takes a buffer of its own unless the scores are overwritten in place.
    """
    n_sub = max(1, min(n, max(WARMUP_ELEMENTS // k, WARMUP_ROWS_PER_CLUSTER * k)))
    needs = [Need("solver warm-up", 2 * n_sub * k * itemsize, "n_clusters"),
             Need("solver row vectors", n * SOLVER_BYTES_PER_ROW, "n_samples")]
    if copies and n_sub < n:       # a whole-matrix warm-up already is the kernel buffer
        needs.append(Need("solver kernel (a copy of the scores)", n * k * itemsize,
                          "copy=False on writable float32 scores"))
    return needs


def diffusion_needs(n, k, n_neighbors):
    """Scratch of diffusion over the graph of ``k`` values per sample (a head's
    probabilities, or the features when they are narrower): a buffer and a gather chunk."""
    chunk = min(n * n_neighbors * k, max(DIFFUSION_CHUNK_ELEMENTS, n_neighbors * k))
    return [Need("diffusion scratch", n * k * FLOAT32, "n_clusters, or diffusion_steps=0"),
            Need("diffusion gather", chunk * FLOAT32, "n_neighbors")]


def fit_phases(n, d, n_clusters, n_heads, width, n_neighbors, diffusion_steps):
    """The phases of a fit, each a list of :class:`Need` alive at once.

    Parameters
    ----------
    n, d : int
        Training samples and values per sample.
    n_clusters, n_heads : int
        Clusters per head and heads.
    width : int
        Width of the backbone's output (the heads' input).
    n_neighbors, diffusion_steps : int
        Resolved graph settings (0 neighbours: no graph, no diffusion).
    """
    # The data are read where they are, batch by batch: no copy of them is counted.
    resident = [Need("self-labels", n_heads * n * INT64, "n_heads")]
    phases = []
    if n_neighbors > 0:
        phases.append(resident + knn_needs(n, d, n_neighbors))
    graph = [Need("neighbour indices", n * n_neighbors * INT64, "n_neighbors")]
    label = resident + graph + [Need("features", n * width * FLOAT32, "n_samples"),
                                Need("logits of one head", n * n_clusters * FLOAT32,
                                     "n_clusters or n_samples")]
    if n_neighbors > 0 and diffusion_steps > 0:
        label += diffusion_needs(n, min(n_clusters, width), n_neighbors)
    phases.append(label + solver_needs(n, n_clusters) + rounding_needs(n))
    return phases


def rounding_needs(n):
    """Sizing the labels (_rounding): per-row sums, proposals, confidences and indices."""
    return [Need("label sizing", n * (FLOAT32 + 3 * INT64 + FLOAT32), "n_samples")]


def score_phases(n, n_clusters, width):
    """``score(X)`` on ``n`` prepared samples: features, one head's logits, an in-place
    solve."""
    return [[Need("features", n * width * FLOAT32, "n_samples"),
             Need("logits", n * n_clusters * FLOAT32, "n_samples (score X in parts)")]
            + solver_needs(n, n_clusters)]


def peak(phases):
    """(bytes, needs) of the phase that needs the most."""
    return max(((sum(need.nbytes for need in phase), phase) for phase in phases),
               key=lambda item: item[0])


# ---------------------------------------------------------------------------- availability
def parse_size(text):
    """Bytes from ``"8GiB"``, ``"500 MB"``, ``"2e9"`` or ``"123456"`` (a ValueError else)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
        raise ValueError(f"${ENV}={text!r} is not a size: use bytes or a number with a unit "
                         "such as 8GiB or 500MB, or 'off' to turn the memory check off.")
    return int(float(match.group(1)) * _UNITS[unit])


def _mem_available():
    """MemAvailable of /proc/meminfo in bytes, or None where there is no such file."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available(device):
    """``(bytes, source)``: memory free for new allocations on ``device``.

    ``bytes`` is None when it is unknown or the check is turned off; ``source`` says where
    the number comes from (or why there is none).
    """
    limit = os.environ.get(ENV, "").strip()
    if limit.lower() == "off":
        return None, f"${ENV}=off"
    if limit:
        return parse_size(limit), f"${ENV}={limit}"
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached, f"free memory of {device}"
    if device.type == "cpu":
        return _mem_available(), "MemAvailable in /proc/meminfo"
    return None, f"unknown for {device.type}"


def fmt(nbytes):
    """``nbytes`` in the largest binary unit that keeps it at least 1 (``"2.4 GiB"``)."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} B"


def require(phases, device, task):
    """Raise a :class:`MemoryError` when the peak of ``phases`` exceeds what is available.

    Parameters
    ----------
    phases : list of list of Need
        What the step allocates, phase by phase (see :func:`fit_phases`).
    device : torch.device or str
        Where the step allocates.
    task : str
        The step, as the user called it (``"SelfLabelClusterer.fit"``).
    """
    total, _ = peak(phases)
    room, source = available(device)
    if room is None or total <= room:
        return
    # The largest parts of every phase that does not fit: lowering only the peak phase's
    # would just move the error to the next one.
    parts = {}
    for phase in phases:
        if sum(need.nbytes for need in phase) > room:
            for need in phase:
                if need.nbytes > parts.get(need.what, Need("", -1)).nbytes:
                    parts[need.what] = need
    largest = sorted(parts.values(), key=lambda need: -need.nbytes)[:5]
    parts = "; ".join(f"{need.what} {fmt(need.nbytes)}"
                      + (f" (lower: {need.lower})" if need.lower else "") for need in largest)
    raise MemoryError(
        f"{task} would need about {fmt(total)} of {torch.device(device).type} memory at its "
        f"peak, but {fmt(room)} is available ({source}). Largest parts: {parts}. Lower the "
        f"parameters named, or set the environment variable {ENV} to the memory the step "
        f"may use (e.g. {ENV}=32GiB), or to 'off' to skip this check.")


# ---------------------------------------------------------------------------- writability
def is_writable(tensor):
    """Whether the memory under a contiguous CPU tensor can be written.

    torch does not record that a tensor wraps read-only memory (``torch.from_numpy`` of a
    read-only memory map, for instance), and writing there kills the process with a
    segmentation fault. On Linux the process's own memory map says; on other POSIX
    systems the kernel is asked page by page (:func:`_probe_pages`); elsewhere (Windows)
    the memory is taken as writable.
    """
    start = tensor.data_ptr()
    stop = start + tensor.numel() * tensor.element_size()
    if stop <= start:
        return True
    verdict = _mapped_writable(start, stop)
    if verdict is None and hasattr(os, "readv"):
        verdict = _probe_pages(start, stop)
    return True if verdict is None else verdict


def _mapped_writable(start, stop, maps="/proc/self/maps"):
    """Whether ``[start, stop)`` lies in writable mappings, per ``maps``; None without it."""
    try:
        with open(maps) as f:
            lines = f.readlines()
    except OSError:
        return None
    covered = start
    for line in lines:
        bounds, perms = line.split()[:2]
        lo, hi = (int(x, 16) for x in bounds.split("-"))
        if hi <= covered or lo >= stop:
            continue
        if lo > covered or "w" not in perms:     # a hole, or a mapping we may not write
            return False
        covered = hi
        if covered >= stop:
            return True
    return False


def _probe_pages(start, stop):
    """Whether every page of ``[start, stop)`` can be written, asked of the kernel.

    One byte of each page goes into a pipe and is read back into place: ``readv`` fails
    with EFAULT (or stops short) at a page that cannot be written, where a store from
    Python would crash. The bytes written back are the bytes that were there.
    """
    import ctypes

    page = os.sysconf("SC_PAGE_SIZE")
    batch = max(1, os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024)
    addresses = [start] + list(range((start // page + 1) * page, stop, page))
    read_fd, write_fd = os.pipe()
    try:
        for i in range(0, len(addresses), batch):
            cells = [(ctypes.c_char * 1).from_address(a) for a in addresses[i:i + batch]]
            os.write(write_fd, b"".join(bytes(cell) for cell in cells))
            try:
                if os.readv(read_fd, cells) != len(cells):
                    return False
            except OSError:
                return False
    finally:
        os.close(read_fd)
        os.close(write_fd)
    return True
