"""Running a fitted network over many samples, in fixed-size batches.

Every batch has exactly :data:`INFERENCE_BATCH` rows (the last one zero-padded): float
matrix kernels round differently for different batch sizes, and a fixed size makes a
sample's output independent of what else is predicted with it (``predict(X)[i]`` equals
``predict(X[i:i+1])``, and the self-label step sees the same logits as ``predict``).
"""
import torch

INFERENCE_BATCH = 256


@torch.no_grad()
def map_padded(fn, X, width, out=None, batch_size=INFERENCE_BATCH):
    """``fn`` over the rows of ``X`` in padded batches of ``batch_size``, into ``out``.

    Parameters
    ----------
    fn : callable
        Maps a ``(batch_size, ...)`` tensor to ``(batch_size, width)``.
    X : torch.Tensor of shape (n, ...)
        The inputs, on the device where ``fn`` runs.
    width : int
        Columns of the output.
    out : torch.Tensor of shape (n, width), default=None
        Where to write (a reused buffer); a new float32 tensor on ``X``'s device if None.
    """
    n = X.shape[0]
    if out is None:
        out = torch.empty((n, width), device=X.device)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        batch = X[start:stop]
        if stop - start < batch_size:
            batch = torch.cat([batch, batch.new_zeros((batch_size - (stop - start),
                                                       *batch.shape[1:]))])
        out[start:stop] = fn(batch)[: stop - start]
    return out


def embed(backbone, X, width, out=None):
    """The backbone's output (the heads' input) for every row of ``X``."""
    return map_padded(backbone, X, width, out=out)


def represent(backbone, X, width):
    """The representation :meth:`SelfLabelClusterer.transform` returns: the backbone's
    ``represent(x)`` when it defines one, else its output."""
    run = backbone.represent if callable(getattr(backbone, "represent", None)) else backbone
    return map_padded(run, X, width)


def head_logits(backbone, head, X, width):
    """Logits of one head for every row of ``X`` (features first, then the head, both in
    padded batches so that each row's logits do not depend on the other rows)."""
    features = embed(backbone, X, width)
    return map_padded(head, features, head.out_features)
