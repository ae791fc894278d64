"""Input scaling: centring, scaling and (partial or soft) whitening fitted on the training
data in streamed passes, applied to every batch on the device."""
import math

import numpy as np
import torch

from .._runtime.memory import Need

# whiten="auto" (the user guide's "Input scaling"): a principal axis is clearly bimodal when
# its excess kurtosis is below -BIMODAL_KURTOSIS (a mixture of two equal Gaussians about 2.6
# standard deviations apart) and below KURTOSIS_ERRORS standard errors, sqrt(24 / n), of a
# Gaussian sample's. Tables wider than AUTO_MAX_FEATURES skip it (d^2 covariance).
BIMODAL_KURTOSIS = 0.8
KURTOSIS_ERRORS = 2.0
AUTO_MAX_FEATURES = 256
# Axes with less variance than this share of the mean are left as they are (mostly rounding).
NULL_VARIANCE = 1e-6
# A column with at most this many values among the first rows read is a code, a year or a
# flag: "auto" leaves it out of the test.
DISCRETE_VALUES = 10


class InputScaling:
    r"""Centring, scaling and soft whitening fitted on the training data, applied on the
    device.

    Tables are centred per column and share one scale (the root mean variance). With
    ``whiten="auto"``, principal axes whose values are clearly bimodal are raised to the
    variance of the largest axis (nothing changes where none is). With ``whiten=True``, they
    are softly whitened: along each principal axis of variance :math:`\lambda_i`, the data
    are scaled by :math:`1 / \sqrt{\lambda_i + \bar\lambda}` (:math:`\bar\lambda` the
    mean variance), so directions that dominate the variance are brought down towards the
    mean and the others are kept; the user guide's "Input scaling" says why. Images are
    standardised per channel.

    Attributes
    ----------
    n_lifted : int
        Principal axes raised by ``whiten="auto"`` (0 otherwise).
    """

    def __init__(self, mean, scale, transform=None, n_lifted=0):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.scale = np.asarray(scale, dtype=np.float32)
        # (d, d) symmetric matrix that replaces the division by ``scale``, or None.
        self.transform = None if transform is None else np.asarray(transform, np.float32)
        self.n_lifted = int(n_lifted)
        self._on = {}

    @classmethod
    def fit(cls, source, whiten=False):
        """Statistics of a source, in streamed passes of float64 accumulators (no copy of
        X); for tables, ``whiten`` "auto" lifts clearly bimodal principal axes and True
        whitens softly (see :func:`whitens`)."""
        if whitens(whiten, source.sample_shape):
            return cls._lifting(source) if whiten == "auto" else cls._whitening(source)
        return cls._plain(source)

    @classmethod
    def _plain(cls, source):
        image = len(source.sample_shape) == 3
        mean, var = _moments(source.raw_sequential(), (0, 2, 3) if image else (0,))
        mean, var = mean.numpy(), var.numpy()
        if image:
            mean, scale = mean[:, None, None], np.sqrt(var)[:, None, None]
        else:
            scale = np.sqrt(var.mean())
        scale = np.where(np.asarray(scale) > 0, scale, 1.0)
        return cls(mean, scale)

    @classmethod
    def _whitening(cls, source):
        mean, cov = _mean_covariance(source.raw_sequential())
        variances, axes = np.linalg.eigh(cov)
        variances = np.clip(variances, 0.0, None)
        average = variances.mean()
        if not average > 0:                    # constant data: centring is all there is
            return cls(mean, 1.0)
        gains = 1.0 / np.sqrt(variances + average)
        # Rescaled so that the mean variance is 1 again, as without whitening.
        gains /= np.sqrt(np.mean(variances * gains ** 2))
        return cls(mean, 1.0, (axes * gains) @ axes.T)

    @classmethod
    def _lifting(cls, source):
        """Each principal axis of the continuous columns whose values are clearly bimodal
        (see BIMODAL_KURTOSIS) takes the variance of their largest axis; without one, the
        plain scaling. Columns of few values (codes, years, flags) are left out: their
        groups are there by construction and say nothing of hidden ones."""
        continuous = ~_discrete_columns(source)
        if continuous.sum() < 2:
            return cls._plain(source)
        mean, cov = _mean_covariance(source.raw_sequential())
        variances, axes = np.linalg.eigh(cov[np.ix_(continuous, continuous)])
        variances = np.clip(variances, 0.0, None)
        live = variances > NULL_VARIANCE * variances.mean()
        lifted = np.zeros_like(live)
        if live.any():
            projection = np.zeros((len(mean), int(live.sum())))
            projection[continuous] = axes[:, live] / np.sqrt(variances[live])
            kurtosis = _excess_kurtosis(source.raw_sequential(), mean, projection)
            error = math.sqrt(24.0 / source.n_samples)    # a Gaussian sample's kurtosis
            threshold = max(BIMODAL_KURTOSIS, KURTOSIS_ERRORS * error)
            lifted[live] = kurtosis < -threshold
        lifted &= variances < variances.max()     # the largest axis has its variance already
        if not lifted.any():
            return cls._plain(source)
        target = np.where(lifted, variances.max(), variances)
        gains = np.ones_like(variances)
        gains[live] = np.sqrt(target[live] / variances[live])
        transform = np.eye(len(mean))
        transform[np.ix_(continuous, continuous)] = (axes * gains) @ axes.T
        # Rescaled so that the mean variance is 1, as with the plain scaling.
        total = target.sum() + np.diag(cov)[~continuous].sum()
        transform /= np.sqrt(total / len(mean))
        return cls(mean, 1.0, transform, n_lifted=int(lifted.sum()))

    def apply(self, t):
        """``(t - mean) @ transform``, or ``(t - mean) / scale`` without whitening, for a
        float32 batch on any device."""
        if t.device not in self._on:
            self._on[t.device] = (torch.as_tensor(self.mean, device=t.device),
                                  torch.as_tensor(self.scale, device=t.device),
                                  None if self.transform is None
                                  else torch.as_tensor(self.transform, device=t.device))
        mean, scale, transform = self._on[t.device]
        if transform is not None:
            return (t - mean) @ transform
        return (t - mean) / scale

    def __getstate__(self):
        return {"mean": self.mean, "scale": self.scale, "transform": self.transform,
                "n_lifted": self.n_lifted}

    def __setstate__(self, state):
        # Models pickled before whitening (or lifting) existed lack those keys.
        self.__init__(state["mean"], state["scale"], state.get("transform"),
                      state.get("n_lifted", 0))


def resolve_whiten(whiten, sample_shape):
    """A fit's whitening: "auto", True or False for tables; images: False for "auto" and
    False, a ValueError for True."""
    image = len(sample_shape) == 3
    if isinstance(whiten, str):
        return False if image else "auto"
    if whiten and image:
        raise ValueError("whiten=True applies to tables (n_samples, n_features); images are "
                         "standardised per channel. Use whiten=False (or \"auto\") for "
                         "images.")
    return bool(whiten)


def whitens(whiten, sample_shape):
    """Whether fitting the scaling computes the covariance: tables with ``whiten=True``,
    or "auto" with at most :data:`AUTO_MAX_FEATURES` columns."""
    if len(sample_shape) != 1 or not whiten:
        return False
    return whiten is True or sample_shape[0] <= AUTO_MAX_FEATURES


def whitening_needs(n_features):
    """The covariance and its eigenvectors, float64, while the whitening is fitted."""
    return [Need("input covariance and its eigenvectors", 3 * n_features ** 2 * 8,
                 "n_features or whiten=False")]


def _mean_covariance(batches):
    """Mean and (population) covariance of a stream of (rows, d) batches, merged batch by
    batch in float64 like :func:`_moments`."""
    count, mean, m2 = 0, None, None
    for batch in batches:
        b = batch.reshape(batch.shape[0], -1).to(torch.float64)
        n, b_mean = b.shape[0], b.mean(0)
        centred = b - b_mean
        b_m2 = centred.T @ centred
        if mean is None:
            count, mean, m2 = n, b_mean, b_m2
            continue
        delta, total = b_mean - mean, count + n
        mean = mean + delta * (n / total)
        m2 = m2 + b_m2 + torch.outer(delta, delta) * (count * n / total)
        count = total
    return mean.numpy(), (m2 / count).numpy()


def _discrete_columns(source):
    """Columns with at most :data:`DISCRETE_VALUES` distinct values in the first batch of
    rows read (bool array of length n_features)."""
    first = next(iter(source.raw_sequential()))
    first = first.reshape(first.shape[0], -1)
    return np.array([len(torch.unique(column)) <= DISCRETE_VALUES for column in first.T])


def _excess_kurtosis(batches, mean, projection):
    """Excess kurtosis of the columns of ``(X - mean) @ projection`` (unit variance by
    construction), over a stream of (rows, d) batches in float64."""
    mean, projection = torch.from_numpy(mean), torch.from_numpy(projection)
    count, fourth = 0, torch.zeros(projection.shape[1], dtype=torch.float64)
    for batch in batches:
        z = (batch.reshape(batch.shape[0], -1).to(torch.float64) - mean) @ projection
        count, fourth = count + z.shape[0], fourth + (z ** 4).sum(0)
    return (fourth / count).numpy() - 3.0


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
