"""Input scaling: centring, scaling and soft whitening fitted on the training data in one
pass, applied to every batch on the device."""
import numpy as np
import torch

from .._runtime.memory import Need


class InputScaling:
    r"""Centring, scaling and soft whitening fitted on the training data, applied on the
    device.

    Tables are centred per column and share one scale (the root mean variance). With
    ``whiten``, they are also softly whitened: along each principal axis of variance
    :math:`\lambda_i`, the data are scaled by :math:`1 / \sqrt{\lambda_i + \bar\lambda}`
    (:math:`\bar\lambda` the mean variance), so directions that dominate the variance are
    brought down towards the mean and the others are kept; the user guide's "Input scaling"
    says why. Images are standardised per channel.
    """

    def __init__(self, mean, scale, transform=None):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.scale = np.asarray(scale, dtype=np.float32)
        # (d, d) symmetric matrix that replaces the division by ``scale``, or None.
        self.transform = None if transform is None else np.asarray(transform, np.float32)
        self._on = {}

    @classmethod
    def fit(cls, source, whiten=False):
        """Statistics of a source, in one pass of float64 accumulators (no copy of X);
        ``whiten`` (tables only) adds the soft whitening."""
        image = len(source.sample_shape) == 3
        if whiten and not image:
            return cls._whitening(source)
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
        return {"mean": self.mean, "scale": self.scale, "transform": self.transform}

    def __setstate__(self, state):
        # Models pickled before whitening existed have no "transform".
        self.__init__(state["mean"], state["scale"], state.get("transform"))


def resolve_whiten(whiten, sample_shape):
    """Whether a fit whitens its input: tables only (a ValueError for images)."""
    image = len(sample_shape) == 3
    if whiten and image:
        raise ValueError("whiten=True applies to tables (n_samples, n_features); images are "
                         "standardised per channel. Use whiten=False for images.")
    return bool(whiten)


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
