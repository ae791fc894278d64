"""Batch augmentations: what they do to a batch, reproducibility, resolving the parameter."""
import pytest
import torch

from skselflabel._data.augment import (
    ImageAugment,
    TableAugment,
    random_crop,
    random_flip,
    resolve_augment,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_random_crop_is_a_shift_with_zero_fill():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(50, 1, 1, 1)
    out = random_crop(x, _gen(), pad=1)
    assert out.shape == x.shape
    # Every output is the input shifted by (dy, dx) in {-1, 0, 1}^2.
    shifts = set()
    for img in out[:, 0]:
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ref = torch.zeros(6, 6)
                ref[1:5, 1:5] = x[0, 0]
                if torch.equal(img, ref[1 + dy: 5 + dy, 1 + dx: 5 + dx]):
                    shifts.add((dy, dx))
                    break
            else:
                continue
            break
        else:
            pytest.fail("an output is not a shifted copy of the input")
    assert len(shifts) > 3  # shifts differ per sample


def test_flip_mirrors_about_half():
    x = torch.arange(4.0).view(1, 1, 1, 4).repeat(200, 1, 1, 1)
    out = random_flip(x, _gen())
    flipped = (out[:, 0, 0, 0] == 3).float().mean().item()
    assert 0.3 < flipped < 0.7
    assert torch.equal(out.sort(-1).values, x)


def test_augmentations_are_reproducible_and_keep_shape():
    x = torch.randn(8, 3, 10, 10, generator=_gen(5))
    aug = ImageAugment(flip=True, rotate=10, scale=0.1, erase=0.5, jitter=0.2)
    a, b = aug(x, _gen(3)), aug(x, _gen(3))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, aug(x, _gen(4)))
    t = TableAugment(noise=0.1, mask=0.5)(torch.ones(100, 4), _gen())
    assert 0.3 < (t == 0).float().mean().item() < 0.7


def test_resolve_augment():
    assert resolve_augment("auto", is_image=False) is None
    assert isinstance(resolve_augment("auto", is_image=True), ImageAugment)
    assert resolve_augment(None, is_image=True) is None
    one_arg = resolve_augment(lambda x: x + 1, is_image=False)
    assert torch.equal(one_arg(torch.zeros(2), _gen()), torch.ones(2))
    seen = {}

    def with_generator(x, generator=None):
        seen["g"] = generator
        return x

    g = _gen()
    resolve_augment(with_generator, is_image=False)(torch.zeros(2), g)
    assert seen["g"] is g
