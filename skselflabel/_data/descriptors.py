"""Gradient-orientation histograms of images: the space where image neighbours are found
(the user guide's "Views and the neighbour graph")."""
import math

import torch
import torch.nn.functional as F

__all__ = ["gradient_histograms"]


def gradient_histograms(images, *, cell=4, n_bins=9, batch_size=2048):
    r"""Histograms of gradient orientations over overlapping cells, one vector per image.

    For every pixel, the Sobel gradient :math:`(g_x, g_y)` gives a magnitude
    :math:`m = \sqrt{g_x^2 + g_y^2}` and an unsigned orientation
    :math:`\theta = \operatorname{atan2}(g_y, g_x) \bmod \pi`; :math:`m` is split between
    the two nearest of ``n_bins`` orientation bins (linear interpolation). The bins are
    averaged over ``cell`` x ``cell`` windows with stride ``cell // 2`` and each channel's
    maps; the vector is L2-normalised and square-rooted (a Hellinger-style map, so that a
    few strong edges do not dominate).

    Parameters
    ----------
    images : torch.Tensor of shape (n_samples, channels, height, width)
        Images on any device (computed there, in float32).
    cell : int, default=4
        Side of the pooling windows in pixels; images smaller than a cell are pooled whole.
    n_bins : int, default=9
        Orientation bins over 180 degrees.
    batch_size : int, default=2048
        Images processed at once.

    Returns
    -------
    features : torch.Tensor of shape (n_samples, n_features), float32
        Non-negative rows, square roots of a unit-norm histogram vector (all zeros for a
        constant image).

    Examples
    --------
    >>> import torch
    >>> from skselflabel._data.descriptors import gradient_histograms
    >>> stripes = torch.zeros(2, 1, 8, 8)
    >>> stripes[0, :, :, ::2] = 1.0     # vertical stripes: horizontal gradients
    >>> stripes[1, :, ::2, :] = 1.0     # horizontal stripes: vertical gradients
    >>> h = gradient_histograms(stripes)
    >>> h.shape
    torch.Size([2, 81])
    >>> bool((h[0] @ h[1]) < 0.5)       # different orientations, dissimilar vectors
    True
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (n, channels, height, width), got {tuple(images.shape)}.")
    n, channels, height, width = images.shape
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],
                         device=images.device) / 8.0
    kernels = torch.stack([sobel, sobel.T])[:, None]           # (2, 1, 3, 3): d/dx, d/dy
    window = min(cell, height, width)
    stride = max(1, window // 2)
    out = []
    for start in range(0, n, batch_size):
        x = images[start:start + batch_size].to(torch.float32)
        b = x.shape[0]
        x = x.reshape(b * channels, 1, height, width)
        grad = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels)
        gx, gy = grad[:, 0], grad[:, 1]
        magnitude = torch.sqrt(gx * gx + gy * gy)
        position = torch.remainder(torch.atan2(gy, gx), math.pi) * (n_bins / math.pi)
        low = position.floor()
        frac = position - low
        low = low.long() % n_bins
        high = (low + 1) % n_bins
        bins = magnitude.new_zeros((b * channels, n_bins, height, width))
        bins.scatter_add_(1, low[:, None], (magnitude * (1 - frac))[:, None])
        bins.scatter_add_(1, high[:, None], (magnitude * frac)[:, None])
        cells = F.avg_pool2d(bins, window, stride=stride)
        vec = cells.reshape(b, -1)
        vec = vec / (vec.norm(dim=1, keepdim=True) + 1e-6)
        out.append(vec.sqrt())
    return torch.cat(out)
