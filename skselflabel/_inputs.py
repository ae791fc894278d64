"""What enters the network: input checking, input scaling and the device policy.

Checking never changes the estimator: for ``fit`` it runs scikit-learn's ``validate_data``
on a shallow stand-in, so that ``n_features_in_`` and ``feature_names_in_`` are only set
when the fit commits (:class:`CheckedInput` carries them there). Checking never copies an
array either: it keeps its dtype (uint8 images stay uint8) and a memory map stays one;
:mod:`skselflabel._source` reads it batch by batch.
"""
import copy
from dataclasses import dataclass
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import validate_data

from ._source import as_source
from ._ties import distinct_count

# Channel counts of images: gray, RGB, RGBA.
_CHANNELS = (1, 3, 4)


@dataclass(frozen=True)
class CheckedInput:
    """A validated training set and what ``fit`` learns from its form."""

    source: object                # ArraySource or DatasetSource
    n_features_in: int
    feature_names_in: object      # ndarray of str, or None
    sample_shape: tuple

    @property
    def n_samples(self):
        return self.source.n_samples


def _as_array_or_frame(X):
    if isinstance(X, torch.Tensor):
        # numpy cannot read GPU tensors, tensors that require grad, or bfloat16.
        X = X.detach().cpu()
        X = (X.float() if X.dtype == torch.bfloat16 else X).numpy()
    if getattr(X, "ndim", None) == 3:
        # Gray images (n, h, w) become (n, 1, h, w) before validation, so that
        # n_features_in_ counts channels whichever of the two forms is passed.
        X = X[:, None]
    return X


def _check_ndim(X):
    if X.ndim not in (2, 4):
        raise ValueError(
            "X must be a table (n_samples, n_features) or images (n_samples, height, "
            f"width) or (n_samples, channels, height, width); got {X.ndim}-D input of "
            f"shape {X.shape}."
        )
    return X


def _check_channels_first(X):
    """Refuse channels-last images, which would be read as many channels of thin images."""
    if X.ndim == 4 and X.shape[-1] in _CHANNELS and X.shape[1] not in _CHANNELS:
        raise ValueError(
            f"X looks like channels-last images: shape {X.shape} reads as {X.shape[1]} "
            f"channels of {X.shape[2]} x {X.shape[3]} pixels. Images must be (n_samples, "
            "channels, height, width): pass np.moveaxis(X, -1, 1) (for a torch tensor, "
            "X.permute(0, 3, 1, 2))."
        )
    return X


def _dataset_input(X, num_workers, min_samples):
    source = as_source(X, num_workers)
    if source.n_samples < min_samples:
        raise ValueError(f"The dataset has {source.n_samples} sample(s); at least "
                         f"{min_samples} are required.")
    if len(source.sample_shape) not in (1, 3):
        raise ValueError("Dataset items must be vectors (n_features,) or images (h, w) or "
                         f"(channels, h, w); got items of shape {source.sample_shape}.")
    return source


def check_fit_input(estimator, X, num_workers=0):
    """Validate training data into a :class:`CheckedInput`; ``estimator`` is not changed.

    ``X`` is an array-like, DataFrame, tensor or a torch ``Dataset``; arrays keep their
    dtype and memory (no float32 copy is made).
    """
    if isinstance(X, torch.utils.data.Dataset):
        source = _dataset_input(X, num_workers, min_samples=2)
        return CheckedInput(source=source, n_features_in=source.sample_shape[0],
                            feature_names_in=None, sample_shape=source.sample_shape)
    stand_in = copy.copy(estimator)
    X = validate_data(stand_in, _as_array_or_frame(X), reset=True, dtype="numeric",
                      allow_nd=True, ensure_min_samples=2)
    return CheckedInput(source=as_source(_check_channels_first(_check_ndim(X))),
                        n_features_in=stand_in.n_features_in_,
                        feature_names_in=getattr(stand_in, "feature_names_in_", None),
                        sample_shape=tuple(X.shape[1:]))


def check_cluster_count(data, n_clusters):
    """Refuse more clusters than samples, and warn when samples repeat so much that some
    clusters must stay empty (as :class:`~sklearn.cluster.KMeans` does)."""
    if data.n_samples < n_clusters:
        raise ValueError(f"n_samples={data.n_samples} should be >= n_clusters={n_clusters}.")
    blocks = (batch.flatten(1) for batch in data.source.raw_sequential())
    distinct = distinct_count(blocks, n_clusters)
    if distinct < n_clusters:
        warnings.warn(
            f"Number of distinct samples ({distinct}) in X is smaller than n_clusters "
            f"({n_clusters}): identical samples get identical labels, so at most {distinct} "
            "clusters can be used. Possibly due to duplicate points in X.",
            ConvergenceWarning, stacklevel=3)


def check_predict_input(estimator, X, num_workers=0):
    """A source of data for a fitted estimator: same features and the same sample shape."""
    if isinstance(X, torch.utils.data.Dataset):
        source = _dataset_input(X, num_workers, min_samples=1)
    else:
        X = validate_data(estimator, _as_array_or_frame(X), reset=False, dtype="numeric",
                          allow_nd=True, ensure_min_samples=1)
        source = as_source(_check_ndim(X))
    if source.sample_shape != estimator._sample_shape:
        raise ValueError(
            f"X has samples of shape {source.sample_shape}, but {type(estimator).__name__} "
            f"was fitted on samples of shape {estimator._sample_shape}."
        )
    return source


class InputScaling:
    """Centring and scaling fitted on the training data, applied on the device.

    Tables are centred per column but share one scale (the root mean variance), so the
    geometry of the user's input, and with it the neighbour graph, is kept. Images are
    standardised per channel.
    """

    def __init__(self, mean, scale):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.scale = np.asarray(scale, dtype=np.float32)
        self._on = {}

    @classmethod
    def fit(cls, source):
        """Statistics of a source, in one pass of float64 accumulators (no copy of X)."""
        image = len(source.sample_shape) == 3
        mean, var = _moments(source.raw_sequential(), (0, 2, 3) if image else (0,))
        mean, var = mean.numpy(), var.numpy()
        if image:
            mean, scale = mean[:, None, None], np.sqrt(var)[:, None, None]
        else:
            scale = np.sqrt(var.mean())
        scale = np.where(np.asarray(scale) > 0, scale, 1.0)
        return cls(mean, scale)

    def apply(self, t):
        """``(t - mean) / scale`` for a float32 batch on any device."""
        if t.device not in self._on:
            self._on[t.device] = (torch.as_tensor(self.mean, device=t.device),
                                  torch.as_tensor(self.scale, device=t.device))
        mean, scale = self._on[t.device]
        return (t - mean) / scale

    def __getstate__(self):
        return {"mean": self.mean, "scale": self.scale}

    def __setstate__(self, state):
        self.__init__(state["mean"], state["scale"])


def _moments(batches, dims):
    """Mean and (population) variance over ``dims`` of a stream of batches, merged batch
    by batch in float64 (Chan et al.'s pairwise update, stable for any number of rows)."""
    count, mean, m2 = 0, None, None
    for batch in batches:
        b = batch.to(torch.float64)
        n = b.numel() // int(np.prod([b.shape[d] for d in range(b.ndim) if d not in dims]))
        b_mean = b.mean(dims)
        keep = [1 if d in dims else b.shape[d] for d in range(b.ndim)]
        b_m2 = ((b - b_mean.view(keep)) ** 2).sum(dims)
        if mean is None:
            count, mean, m2 = n, b_mean, b_m2
            continue
        delta, total = b_mean - mean, count + n
        mean = mean + delta * (n / total)
        m2 = m2 + b_m2 + delta ** 2 * (count * n / total)
        count = total
    return mean, m2 / count


def training_device(device):
    """The device to train on, from the ``device`` parameter ("auto": CUDA when present)."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'auto' or a torch device such as 'cpu' or 'cuda:0', got "
            f"{device!r}."
        ) from exc
    if resolved.type == "meta":
        raise ValueError(f"device={device!r} holds no data, so nothing can be trained on it; "
                         "use device='auto', 'cpu' or 'cuda'.")
    if not _available(resolved):
        name = {"cuda": "CUDA", "mps": "MPS (Apple GPUs)"}.get(resolved.type, resolved.type)
        raise ValueError(
            f"device={device!r} was requested but {name} is not available; use "
            "device='auto' or 'cpu'."
        )
    return resolved


def _available(device):
    """Whether torch can compute on ``device`` in this process."""
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.is_available()
    if device.type == "mps":
        return torch.backends.mps.is_available()
    try:    # other backends (xpu, ...): whether a tensor and a generator can be made there
        torch.empty(1, device=device)
        torch.Generator(device=device)
    except (RuntimeError, AssertionError, AttributeError):
        return False
    return True


def inference_device(trained_on):
    """Where a model trained on ``trained_on`` runs here: there if it exists, else the CPU."""
    device = torch.device(trained_on)
    if device.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        return torch.device("cpu")
    return device
