"""Backbones: the built networks, their initialisation and their errors."""
import numpy as np
import pytest
import torch
from torch import nn

from skselflabel._fit.backbones import (MLP, SmallCNN, build_network, init_parameters_,
                                        place_backbone, resolve_backbone)


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
    # Issue #10, item 4: a backbone with zero-width output "fitted" into one cluster.
    class NoFeatures(nn.Module):
        def forward(self, x):
            return x[:, :0]

    with pytest.raises(ValueError, match="0 features per sample"):
        resolve_backbone(NoFeatures(), (4,), _gen())


def test_init_parameters_resets_norm_layers():
    m = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    with torch.no_grad():
        m[1].weight.fill_(5)
    init_parameters_(m, _gen())
    assert torch.equal(m[1].weight, torch.ones(3))


def test_build_network_gives_heads_of_the_cluster_count_on_the_backbone_width():
    backbone, heads, width, n_out = build_network("cnn", (1, 8, 8), 7, 3, _gen())
    assert isinstance(heads, nn.ModuleList) and len(heads) == 3
    assert all(h.in_features == width == 128 and h.out_features == 7 for h in heads)
    assert n_out == 1408                                   # SmallCNN.represent
    _, again, _, _ = build_network("cnn", (1, 8, 8), 7, 3, _gen())
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(heads, again))
    _, _, width, n_out = build_network(nn.Linear(4, 6), (4,), 2, 1, _gen())
    assert width == n_out == 6                             # no represent(): the output


def _conv_weights(module):
    return [m.weight for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_the_small_cnn_runs_channels_last_on_the_cpu_with_the_same_outputs():
    net = SmallCNN(1, (8, 8)).eval()
    x = torch.randn(5, 1, 8, 8, generator=_gen())
    with torch.no_grad():
        before = net(x), net.represent(x)
    place_backbone(net, "cpu")
    # (with one input channel both layouts have the same strides)
    assert all(w.is_contiguous(memory_format=torch.channels_last)
               and (w.shape[1] == 1 or not w.is_contiguous()) for w in _conv_weights(net))
    with torch.no_grad():
        after = net(x), net.represent(x)
    for b, a in zip(before, after):   # the same function, summed in another order
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # A user's module keeps its layout: its code may rely on it (view on a conv output).
    user = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    place_backbone(user, torch.device("cpu"))
    assert user[0].weight.is_contiguous()
