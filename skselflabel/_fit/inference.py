"""Running a fitted network over many samples in fixed-size batches (the last zero-padded),
so that a sample's output never depends on what else is computed with it."""
import torch

from .._runtime.interrupt import check_interrupt
from .._runtime.allocation import memory_step, plan
from .._runtime.memory import FLOAT32, INT64, Need
from .._runtime.processes import SOLO
from .config import AUTO_NEIGHBORS, auto_neighbor_features
from .graph import NEIGHBOR_RECALL, NeighborGraph, knn_needs, neighbor_width

INFERENCE_BATCH = 256


def slices(tensor, batch_size=INFERENCE_BATCH):
    """The rows of ``tensor`` in consecutive batches of ``batch_size``."""
    return (tensor[s:s + batch_size] for s in range(0, tensor.shape[0], batch_size))


@torch.no_grad()
def map_padded(fn, batches, n, width, out=None, device=None, batch_size=INFERENCE_BATCH):
    """``fn`` over consecutive batches of ``batch_size`` rows (the last zero-padded).

    Parameters
    ----------
    fn : callable
        Maps a ``(batch_size, ...)`` tensor to ``(batch_size, width)``.
    batches : iterable of torch.Tensor
        The ``n`` input rows in order, ``batch_size`` per batch but the last.
    n, width : int
        Rows and columns of the output.
    out : torch.Tensor of shape (n, width), default=None
        Where to write (a reused buffer); a new float32 tensor on ``device`` if None.
    device : torch.device, default=None
        Device of a new ``out`` (that of the first batch if None).
    """
    start = 0
    for batch in batches:
        check_interrupt()               # a Ctrl-C during fit stops here, not after the pass
        if out is None:
            out = torch.empty((n, width), device=device or batch.device)
        rows = batch.shape[0]
        if rows < batch_size:
            batch = torch.cat([batch, batch.new_zeros((batch_size - rows, *batch.shape[1:]))])
        out[start:start + rows] = fn(batch)[:rows]
        start += rows
    return out


def embed(backbone, feeder, width, out=None):
    """The backbone's output (the heads' input) for every sample of ``feeder``."""
    return map_padded(backbone, feeder.sequential(INFERENCE_BATCH), feeder.n_samples, width,
                      out=out, device=feeder.device)


def embed_shared(backbone, feeder, width, team, out=None):
    """:func:`embed` of every sample, each process of ``team`` embedding its own shard of
    the rows (the shards are then all-gathered). A sample's output is the same whichever
    shard it is in: every batch is padded to the same size."""
    if team.world == 1:
        return embed(backbone, feeder, width, out=out)
    start, stop = team.shard(feeder.n_samples)
    local = embed(backbone, feeder.rows(start, stop), width)
    return team.gather_rows(local, feeder.n_samples, out=out)


def represent(backbone, feeder, width):
    """The representation :meth:`SelfLabelClusterer.transform` returns: the backbone's
    ``represent(x)`` when it defines one, else its output."""
    run = backbone.represent if callable(getattr(backbone, "represent", None)) else backbone
    return map_padded(run, feeder.sequential(INFERENCE_BATCH), feeder.n_samples, width,
                      device=feeder.device)


@torch.no_grad()
def head_batches(head, features):
    """``(start, logits)`` of one head for consecutive padded batches of ``features``:
    the numbers of :func:`head_logits`, one batch at a time."""
    for start, batch in zip(range(0, features.shape[0], INFERENCE_BATCH), slices(features)):
        yield start, map_padded(head, [batch], batch.shape[0], head.out_features)


def head_labels(backbone, head, feeder, width):
    """The argmax of one head for every sample, batch by batch: memory for the labels only
    (no ``(n_samples, n_clusters)`` logits), the same labels as ``head_logits(...).argmax(1)``."""
    return labels_from_features(head, embed(backbone, feeder, width))


def labels_from_features(head, features):
    """The argmax of one head for backbone ``features``, in padded batches (see
    :func:`head_labels`)."""
    labels = torch.empty(features.shape[0], dtype=torch.int64, device=features.device)
    for start, logits in head_batches(head, features):
        labels[start:start + logits.shape[0]] = logits.argmax(1)
    return labels


def head_logits(backbone, head, feeder, width):
    """Logits of one head for every sample (features first, then the head, both in padded
    batches so that each sample's logits do not depend on the other samples)."""
    features = embed(backbone, feeder, width)
    return map_padded(head, slices(features), features.shape[0], head.out_features)


def first_head_logits(network, feeder):
    """Logits of the first head (the one behind ``predict``) for the feeder's samples."""
    return head_logits(network.backbone, network.heads[0], feeder, network.head_width)


def first_head_labels(network, feeder, team=SOLO):
    """Labels of the first head (``predict``) for the feeder's samples; with several
    processes in ``team``, each embeds its shard (every process gets every label)."""
    if team.world == 1:
        return head_labels(network.backbone, network.heads[0], feeder, network.head_width)
    features = embed_shared(network.backbone, feeder, network.head_width, team)
    return labels_from_features(network.heads[0], features)


def prediction_needs(n, width, n_clusters=0):
    """What ``predict`` (``n_clusters=0``: labels) or ``predict_proba`` (logits and
    probabilities of ``n_clusters``) on ``n`` samples allocates, besides the batches."""
    needs = [Need("features", n * width * FLOAT32, "n_samples (predict X in parts)")]
    if not n_clusters:
        return needs + [Need("labels", n * INT64, "n_samples")]
    return needs + [Need("logits and probabilities", 2 * n * n_clusters * FLOAT32,
                         "n_samples (predict X in parts) or n_clusters")]


def representation_needs(n, width):
    """What ``transform`` on ``n`` samples allocates: the ``(n, width)`` representation."""
    return [Need("representation", n * width * FLOAT32, "n_samples (transform X in parts)")]


def graph_agreement(network, feeder, n_clusters, features, recall=NEIGHBOR_RECALL):
    """:func:`~skselflabel.metrics.neighbor_agreement` of the first head's labels of the
    feeder's samples on their k-NN graph in the space ``features`` (a callable, else the
    data's own space: see :func:`~skselflabel._fit.config.auto_neighbor_features`),
    searched to ``recall``."""
    if not callable(features):
        features = auto_neighbor_features(network.sample_shape)
    n = feeder.n_samples
    if n < 2:
        raise ValueError(f"score needs at least 2 samples (it compares each sample with its "
                         f"nearest neighbours); got {n}.")
    n_neighbors = min(AUTO_NEIGHBORS, n - 1)
    plan([knn_needs(n, neighbor_width(features, network.sample_shape), n_neighbors, recall,
                    feeder.index_device)], feeder.device, "SelfLabelClusterer.score")
    with memory_step("building the neighbour graph"):
        graph = NeighborGraph.build(feeder, features, n_neighbors, recall=recall)
    with memory_step("labelling the samples"):
        labels = first_head_labels(network, feeder)
    return graph.agreement(labels, n_clusters)
