"""Input checks: the samples ``fit`` and inference accept, checked without changing the
estimator or copying the data, and the distinct rows that limit the usable clusters."""
import copy
from dataclasses import dataclass
import warnings

import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import validate_data

from .sources import as_source

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


def distinct_count(blocks, enough):
    """Distinct rows over an iterable of 2-D blocks, stopping at ``enough``."""
    seen = None
    for block in blocks:
        seen = torch.unique(block if seen is None else torch.cat([seen, block]), dim=0)
        if seen.shape[0] >= enough:
            break
    return 0 if seen is None else seen.shape[0]


def distinct_rows(rows, enough, block=4096):
    """Distinct rows of a 2-D tensor, counted block by block, stopping at ``enough``."""
    return distinct_count((rows[s:s + block] for s in range(0, rows.shape[0], block)), enough)
