"""What enters the network: input checking, input scaling and the device policy.

Checking never changes the estimator: for ``fit`` it runs scikit-learn's ``validate_data``
on a shallow stand-in, so that ``n_features_in_`` and ``feature_names_in_`` are only set
when the fit commits (:class:`CheckedInput` carries them there).
"""
import copy
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.utils.validation import validate_data


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


def check_fit_input(estimator, X):
    """Validate training data into a :class:`CheckedInput`; ``estimator`` is not changed."""
    stand_in = copy.copy(estimator)
    X = validate_data(stand_in, _as_array_or_frame(X), reset=True, dtype=np.float32,
                      allow_nd=True, ensure_min_samples=2)
    _check_ndim(X)
    return CheckedInput(X=X, n_features_in=stand_in.n_features_in_,
                        feature_names_in=getattr(stand_in, "feature_names_in_", None),
                        sample_shape=tuple(X.shape[1:]))


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
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available; use "
            "device='auto' or 'cpu'."
        )
    return resolved


def inference_device(trained_on):
    """Where a model trained on ``trained_on`` runs here: there if it exists, else the CPU."""
    device = torch.device(trained_on)
    if device.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        return torch.device("cpu")
    return device
