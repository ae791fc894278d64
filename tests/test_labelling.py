"""The self-label step on its own: buffers, diffusion, balance, tensors in and out."""
import numpy as np
import pytest
import torch
from torch import nn

from skselflabel import SinkhornAssigner, sinkhorn_knopp
from skselflabel._graph import NeighborGraph, nearest_neighbors
from skselflabel._labelling import NonFiniteOutput, SelfLabeller, _Buffers


def _network(n_in=4, width=8, n_clusters=(3,), seed=0):
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Linear(n_in, width), nn.ReLU())
    heads = nn.ModuleList(nn.Linear(width, k) for k in n_clusters)
    return backbone, heads


def _data(n=90, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0, 0, 0], [4, 0, 0, 0], [0, 4, 0, 0]])
    return centres.repeat_interleave(n // 3, 0) + torch.randn(n, 4, generator=g) * 0.5


def test_labels_are_balanced_written_in_place_and_stay_tensors():
    backbone, heads = _network(n_clusters=(3, 5))
    X_t = _data()
    labels = torch.zeros((2, 90), dtype=torch.int64)
    storage = labels.data_ptr()
    labeller = SelfLabeller(SinkhornAssigner(lam=50.0, tol=1e-3), None, 0)
    changed = labeller.relabel_(backbone, heads, 8, X_t, labels)
    assert labels.data_ptr() == storage
    assert isinstance(changed, torch.Tensor) and changed.dtype == torch.float64
    assert np.bincount(labels[0].numpy(), minlength=3).min() >= 28
    assert np.bincount(labels[1].numpy(), minlength=5).min() >= 14
    # The reported change is the mean over heads of the fraction that moved off label 0.
    expected = ((labels[0] != 0).float().mean() + (labels[1] != 0).float().mean()) / 2
    torch.testing.assert_close(changed.float(), expected)
    assert not backbone.training and not heads.training


def test_first_head_follows_the_prior_auxiliary_heads_are_uniform():
    backbone, heads = _network(n_clusters=(3, 3))
    labels = torch.zeros((2, 90), dtype=torch.int64)
    prior = [0.6, 0.2, 0.2]
    SelfLabeller(SinkhornAssigner(lam=50.0, prior=prior, tol=1e-4), None, 0).relabel_(
        backbone, heads, 8, _data(), labels)
    np.testing.assert_allclose(np.bincount(labels[0].numpy(), minlength=3) / 90, prior,
                               atol=0.05)
    np.testing.assert_allclose(np.bincount(labels[1].numpy(), minlength=3) / 90,
                               [1 / 3] * 3, atol=0.05)


def test_diffused_logits_are_what_the_assigner_solves():
    backbone, heads = _network()
    X_t = _data()
    graph = NeighborGraph(nearest_neighbors(X_t, 5))
    seen = []

    class Spy(SinkhornAssigner):
        def assign_tensor(self, scores, **kw):
            seen.append(scores.clone())
            return super().assign_tensor(scores, **kw)

    labels = torch.zeros((1, 90), dtype=torch.int64)
    SelfLabeller(Spy(lam=10.0), graph, 3).relabel_(backbone, heads, 8, X_t, labels)
    with torch.no_grad():
        p = torch.softmax(heads[0](backbone(X_t)), 1)
    for _ in range(3):
        p = (p + p[graph.indices].mean(1)) / 2
    torch.testing.assert_close(seen[0], p.clamp_min(1e-8).log(), rtol=1e-5, atol=1e-5)
    ref = sinkhorn_knopp(seen[0].numpy(), lam=10.0, tol=1e-3)
    assert np.mean(ref.labels == labels[0].numpy()) > 0.97


def test_buffers_are_reused_across_steps_and_narrower_heads():
    buffers = _Buffers()
    cpu = torch.device("cpu")
    wide = buffers.matrix("logits", 10, 6, cpu)
    narrow = buffers.matrix("logits", 10, 4, cpu)
    assert narrow.is_contiguous() and narrow.shape == (10, 4)
    assert narrow.data_ptr() == wide.data_ptr()
    assert buffers.matrix("scratch", 10, 4, cpu).data_ptr() != wide.data_ptr()
    f = buffers.features(10, 3, cpu)
    assert buffers.features(10, 3, cpu) is f


def test_non_finite_outputs_name_the_part_of_the_network():
    backbone, heads = _network(n_clusters=(3, 4))
    X_t = _data()
    labels = torch.zeros((2, 90), dtype=torch.int64)
    labeller = SelfLabeller(SinkhornAssigner(), None, 0)
    with torch.no_grad():
        heads[1].weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteOutput, match="head 1 output holds") as err:
        labeller.relabel_(backbone, heads, 8, X_t, labels)
    assert err.value.part == "head 1" and err.value.n_values == 90 * 4
    assert isinstance(err.value, FloatingPointError)
    with torch.no_grad():
        backbone[0].bias[0] = float("nan")
    with pytest.raises(NonFiniteOutput, match="backbone output holds 90 NaN or inf"):
        labeller.relabel_(backbone, heads, 8, X_t, labels)
