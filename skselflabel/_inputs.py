"""What enters the network: input checking, input scaling and the device policy.

Checking never changes the estimator: for ``fit`` it runs scikit-learn's ``validate_data``
on a shallow stand-in, so that ``n_features_in_`` and ``feature_names_in_`` are only set
when the fit commits (:class:`CheckedInput` carries them there).
"""
import copy
from dataclasses import dataclass
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import validate_data

from ._ties import distinct_rows

# Channel counts of images: gray, RGB, RGBA.
_CHANNELS = (1, 3, 4)


@dataclass(frozen=True)
class CheckedInput:
    """A validated training set and what ``fit`` learns from its form."""

    X: np.ndarray                 # float32, (n, d) or (n, c, h, w)
    n_features_in: int
    feature_names_in: object      # ndarray of str, or None
    sample_shape: tuple

    @property
    def n_samples(self):
        return self.X.shape[0]


def _as_array_or_frame(X):
    if isinstance(X, torch.Tensor):
        # numpy cannot read GPU tensors or tensors that require grad.
        X = X.detach().cpu().numpy()
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


def check_fit_input(estimator, X):
    """Validate training data into a :class:`CheckedInput`; ``estimator`` is not changed."""
    stand_in = copy.copy(estimator)
    X = validate_data(stand_in, _as_array_or_frame(X), reset=True, dtype=np.float32,
                      allow_nd=True, ensure_min_samples=2)
    _check_channels_first(_check_ndim(X))
    return CheckedInput(X=X, n_features_in=stand_in.n_features_in_,
                        feature_names_in=getattr(stand_in, "feature_names_in_", None),
                        sample_shape=tuple(X.shape[1:]))


def check_cluster_count(data, n_clusters):
    """Refuse more clusters than samples, and warn when samples repeat so much that some
    clusters must stay empty (as :class:`~sklearn.cluster.KMeans` does)."""
    if data.n_samples < n_clusters:
        raise ValueError(f"n_samples={data.n_samples} should be >= n_clusters={n_clusters}.")
    with warnings.catch_warnings():
        # A read-only X (a memory map) is only read here.
        warnings.simplefilter("ignore", UserWarning)
        rows = torch.from_numpy(data.X.reshape(data.n_samples, -1))
    distinct = distinct_rows(rows, n_clusters)
    if distinct < n_clusters:
        warnings.warn(
            f"Number of distinct samples ({distinct}) in X is smaller than n_clusters "
            f"({n_clusters}): identical samples get identical labels, so at most {distinct} "
            "clusters can be used. Possibly due to duplicate points in X.",
            ConvergenceWarning, stacklevel=3)


def check_predict_input(estimator, X):
    """Validate data for a fitted estimator: same features and the same sample shape."""
    X = validate_data(estimator, _as_array_or_frame(X), reset=False, dtype=np.float32,
                      allow_nd=True, ensure_min_samples=1)
    _check_ndim(X)
    if tuple(X.shape[1:]) != estimator._sample_shape:
        raise ValueError(
            f"X has samples of shape {tuple(X.shape[1:])}, but {type(estimator).__name__} "
            f"was fitted on samples of shape {estimator._sample_shape}."
        )
    return X


class InputScaling:
    """Centring and scaling fitted on the training data, applied on the device.

    Tables are centred per column but share one scale (the root mean variance), so the
    geometry of the user's input, and with it the neighbour graph, is kept. Images are
    standardised per channel.
    """

    def __init__(self, mean, scale):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.scale = np.asarray(scale, dtype=np.float32)

    @classmethod
    def fit(cls, X):
        if X.ndim == 2:
            mean = X.mean(0, dtype=np.float64)
            scale = np.sqrt(X.var(0, dtype=np.float64).mean())
        else:
            mean = X.mean((0, 2, 3), dtype=np.float64)[:, None, None]
            scale = X.std((0, 2, 3), dtype=np.float64)[:, None, None]
        scale = np.where(np.asarray(scale) > 0, scale, 1.0)
        return cls(mean, scale)

    def to_tensor(self, X, device):
        """The scaled float32 tensor of a validated array, on ``device``."""
        t = torch.from_numpy(np.require(X, dtype=np.float32, requirements=["C", "W"]))
        t = t.to(device, non_blocking=True)
        mean = torch.as_tensor(self.mean, device=device)
        scale = torch.as_tensor(self.scale, device=device)
        return (t - mean) / scale


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
