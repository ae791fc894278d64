"""Backbones, augmentations, neighbour views and the label schedule."""
import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors
from torch import nn

from skselflabel._augment import (
    ImageAugment,
    TableAugment,
    random_crop,
    random_flip,
    resolve_augment,
)
from skselflabel._backbones import MLP, SmallCNN, init_parameters_, resolve_backbone
from skselflabel._schedule import label_update_steps
from skselflabel._views import nearest_neighbors


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "backbone, shape, kind",
    [("auto", (7,), MLP), ("mlp", (1, 8, 8), MLP), ("auto", (1, 8, 8), SmallCNN),
     ("cnn", (3, 28, 28), SmallCNN), ("auto", (2, 5, 6), SmallCNN)],
)
def test_resolve_builds_the_right_network(backbone, shape, kind):
    module, width = resolve_backbone(backbone, shape, _gen())
    assert isinstance(module, kind)
    module.eval()
    assert module(torch.zeros((3, *shape))).shape == (3, width)


def test_initialisation_follows_the_generator_not_the_global_rng():
    state = torch.random.get_rng_state()
    a, _ = resolve_backbone("cnn", (1, 8, 8), _gen(1))
    b, _ = resolve_backbone("cnn", (1, 8, 8), _gen(1))
    c, _ = resolve_backbone("cnn", (1, 8, 8), _gen(2))
    assert torch.equal(torch.random.get_rng_state(), state)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_module_instance_is_deep_copied():
    user = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
    module, width = resolve_backbone(user, (4,), _gen())
    assert width == 6
    assert module is not user
    assert module[0].weight is not user[0].weight
    assert torch.equal(module[0].weight, user[0].weight)  # weights kept, not re-initialised


def test_callable_backbone_gets_the_sample_shape():
    seen = []

    def build(shape):
        seen.append(shape)
        return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), 5))

    module, width = resolve_backbone(build, (1, 4, 4), _gen())
    assert seen == [(1, 4, 4)] and width == 5


def test_backbone_errors_are_explained():
    with pytest.raises(TypeError, match="must return a torch.nn.Module"):
        resolve_backbone(lambda shape: "not a module", (4,), _gen())
    with pytest.raises(ValueError, match="2-D tensor"):
        resolve_backbone(nn.Identity(), (1, 4, 4), _gen())
    with pytest.raises(ValueError, match="needs images"):
        resolve_backbone("cnn", (4,), _gen())
    with pytest.raises(ValueError, match="failed on a batch of shape"):
        resolve_backbone(nn.Linear(3, 2), (4,), _gen())


def test_init_parameters_resets_norm_layers():
    m = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    with torch.no_grad():
        m[1].weight.fill_(5)
    init_parameters_(m, _gen())
    assert torch.equal(m[1].weight, torch.ones(3))


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


def test_nearest_neighbors_match_sklearn():
    rng = np.random.RandomState(0)
    X = rng.randn(300, 5).astype(np.float32)
    ours = nearest_neighbors(torch.from_numpy(X), 4, batch_size=64).numpy()
    ref = NearestNeighbors(n_neighbors=5).fit(X).kneighbors(X, return_distance=False)[:, 1:]
    assert (np.sort(ours, 1) == np.sort(ref, 1)).mean() > 0.99
    assert not (ours == np.arange(300)[:, None]).any()


def test_nearest_neighbors_project_wide_inputs():
    rng = np.random.RandomState(0)
    centers = rng.randn(3, 100) * 10
    X = np.repeat(centers, 20, axis=0) + rng.randn(60, 100)
    idx = nearest_neighbors(torch.from_numpy(X).float(), 5, max_dim=8).numpy()
    assert (idx // 20 == np.arange(60)[:, None] // 20).all()


def test_label_update_schedule_is_quadratic_and_starts_at_zero():
    steps = label_update_steps(11, 1000)
    assert steps[0] == 0 and (np.diff(steps) > 0).all() and steps[-1] < 1000
    gaps = np.diff(steps)
    assert gaps[0] < gaps[-1]  # dense early
    assert steps[5] == round(0.25 * 1000)
    assert label_update_steps(1, 10).tolist() == [0]
    assert label_update_steps(50, 10).tolist() == list(range(10))
    with pytest.raises(ValueError):
        label_update_steps(0, 10)
