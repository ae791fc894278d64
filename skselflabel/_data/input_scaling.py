"""Input scaling: centring and scaling statistics fitted on the training data in one pass,
applied to every batch on the device."""
import numpy as np
import torch


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
