"""Batch augmentations: whole batches transformed on the training device, every random draw
from the generator they are given, in a few vectorised calls."""
import inspect
import math

import torch
import torch.nn.functional as F


class ImageAugment:
    """Random translation (crop of a padded image), optional flip, small affine warp,
    erasing and intensity jitter for image batches ``(n, c, h, w)``.

    Parameters
    ----------
    pad : int or float, default=0.125
        Maximum shift in pixels of the random crop of the zero-padded image; a float in
        (0, 1) is a fraction of the image side.
    flip : bool, default=False
        Mirror half of the images left-right. Off by default: digits and letters are not
        mirror-symmetric.
    rotate : float, default=0.0
        Maximum rotation in degrees of a random affine warp (0 disables the warp).
    scale : float, default=0.0
        Maximum relative zoom of the affine warp, e.g. 0.1 for 0.9-1.1.
    erase : float, default=0.0
        Probability of erasing a random rectangle (up to a quarter of each side... see
        ``erase_size``) of each image.
    erase_size : float, default=0.4
        Largest side of the erased rectangle as a fraction of the image side.
    jitter : float, default=0.2
        Strength of the random contrast and brightness change: each image becomes
        ``x * (1 + jitter * a) + jitter * b`` with ``a, b`` uniform in [-1, 1].

    Examples
    --------
    >>> import torch
    >>> from skselflabel._data.augment import ImageAugment
    >>> g = torch.Generator().manual_seed(0)
    >>> ImageAugment(flip=True, rotate=10, erase=0.5)(torch.ones(4, 1, 8, 8), g).shape
    torch.Size([4, 1, 8, 8])
    """

    def __init__(self, pad=0.125, flip=False, rotate=0.0, scale=0.0, erase=0.0,
                 erase_size=0.4, jitter=0.2):
        self.pad, self.flip, self.rotate, self.scale = pad, flip, rotate, scale
        self.erase, self.erase_size, self.jitter = erase, erase_size, jitter

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"ImageAugment({args})"

    def __call__(self, x, generator):
        if self.rotate or self.scale:
            x = random_affine(x, generator, self.rotate, self.scale)
        pad = self.pad
        if isinstance(pad, float) and 0 < pad < 1:
            pad = max(1, round(pad * min(x.shape[-2:])))
        if pad:
            x = random_crop(x, generator, int(pad))
        if self.flip:
            x = random_flip(x, generator)
        if self.erase:
            x = random_erase(x, generator, self.erase, self.erase_size)
        if self.jitter:
            x = intensity_jitter(x, generator, self.jitter)
        return x


class TableAugment:
    """Gaussian noise and random feature masking for table batches ``(n, d)``.

    Parameters
    ----------
    noise : float, default=0.1
        Standard deviation of the added Gaussian noise (inputs have unit average variance).
    mask : float, default=0.0
        Probability of zeroing (setting to the column mean) each entry.

    Examples
    --------
    >>> import torch
    >>> from skselflabel._data.augment import TableAugment
    >>> g = torch.Generator().manual_seed(0)
    >>> TableAugment(noise=0.1, mask=0.2)(torch.ones(5, 3), g).shape
    torch.Size([5, 3])
    """

    def __init__(self, noise=0.1, mask=0.0):
        self.noise, self.mask = noise, mask

    def __repr__(self):
        return f"TableAugment(noise={self.noise!r}, mask={self.mask!r})"

    def __call__(self, x, generator):
        if self.noise:
            x = x + self.noise * torch.randn(x.shape, generator=generator, device=x.device,
                                             dtype=x.dtype)
        if self.mask:
            keep = torch.rand(x.shape, generator=generator, device=x.device) >= self.mask
            x = x * keep
        return x


def _uniform(n, generator, device, low=-1.0, high=1.0):
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def random_crop(x, generator, pad):
    """Shift each image by up to ``pad`` pixels: a random crop of the zero-padded batch."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, :, None]  # (n, h, 1)
    cols = (dx + torch.arange(w, device=x.device))[:, None, :]  # (n, 1, w)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indexing on dims 0, 2, 3 around the channel slice yields (n, h, w, c).
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_flip(x, generator):
    """Mirror a random half of the images left-right."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_affine(x, generator, rotate, scale):
    """Rotate by up to ``rotate`` degrees and zoom by up to ``1 +- scale``, one warp per image."""
    n = x.shape[0]
    angle = _uniform(n, generator, x.device) * math.radians(rotate)
    zoom = 1.0 + _uniform(n, generator, x.device) * scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    zeros = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def random_erase(x, generator, p, max_size):
    """Set a random rectangle of each image (with probability ``p``) to zero."""
    n, _, h, w = x.shape
    dev = x.device
    eh = (torch.rand(n, generator=generator, device=dev) * max_size * h).ceil()
    ew = (torch.rand(n, generator=generator, device=dev) * max_size * w).ceil()
    y0 = torch.rand(n, generator=generator, device=dev) * (h - eh + 1)
    x0 = torch.rand(n, generator=generator, device=dev) * (w - ew + 1)
    on = torch.rand(n, generator=generator, device=dev) < p
    ys = torch.arange(h, device=dev)[None, :]
    xs = torch.arange(w, device=dev)[None, :]
    in_rows = (ys >= y0.floor()[:, None]) & (ys < (y0.floor() + eh)[:, None])  # (n, h)
    in_cols = (xs >= x0.floor()[:, None]) & (xs < (x0.floor() + ew)[:, None])  # (n, w)
    mask = in_rows[:, :, None] & in_cols[:, None, :] & on[:, None, None]
    return x.masked_fill(mask[:, None], 0.0)


def intensity_jitter(x, generator, strength):
    """Random contrast and brightness per image: ``x * (1 + s*a) + s*b``, ``a, b ~ U[-1, 1]``."""
    n = x.shape[0]
    shape = (n,) + (1,) * (x.ndim - 1)
    a = _uniform(n, generator, x.device).view(shape).to(x.dtype)
    b = _uniform(n, generator, x.device).view(shape).to(x.dtype)
    return x * (1 + strength * a) + strength * b


def draws_per_sample(augment):
    """Whether ``augment`` draws each sample's randomness in batch order, independently of
    the others (the built-in augmentations): then a data-parallel fit can give every row
    the draws it would get in one process, by augmenting a batch of the whole batch's size
    and keeping its own rows."""
    return isinstance(augment, (ImageAugment, TableAugment))


def resolve_augment(augment, is_image):
    """Turn the estimator's ``augment`` parameter into ``f(batch, generator) -> batch`` or None.

    "auto" gives :class:`ImageAugment` defaults for images and no augmentation for tables
    (there, neighbour views do the work); "none" and None disable it. A user callable taking
    one argument is wrapped so that it is called as ``f(batch)``; one that accepts a
    ``generator`` keyword receives the estimator's generator.
    """
    if augment is None or augment == "none":
        return None
    if augment == "auto":
        return ImageAugment() if is_image else None
    if augment == "images":
        return ImageAugment()
    if augment == "tables":
        return TableAugment()
    if not callable(augment):
        raise TypeError(
            f"augment must be 'auto', 'none', None or a callable, got {type(augment).__name__}."
        )
    try:
        params = inspect.signature(augment).parameters
    except (TypeError, ValueError):
        params = {}
    takes_generator = "generator" in params or any(
        p.kind == p.VAR_KEYWORD for p in params.values()
    )
    if takes_generator:
        return lambda x, generator: augment(x, generator=generator)
    if len([p for p in params.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) >= 2:
        return augment
    return lambda x, generator: augment(x)
