"""The self-label step on its own: buffers, diffusion, balance, tensors in and out."""
import numpy as np
import pytest
import torch
from torch import nn

from skselflabel import SelfLabelClusterer, SinkhornAssigner, sinkhorn_knopp
from skselflabel._fit.graph import NeighborGraph, nearest_neighbors
from skselflabel._fit.labelling import NonFiniteOutput, SelfLabeller, _Buffers
from feeding import feeder_of


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
    changed = labeller.relabel_(backbone, heads, 8, feeder_of(X_t), labels)
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
        backbone, heads, 8, feeder_of(_data()), labels)
    np.testing.assert_allclose(np.bincount(labels[0].numpy(), minlength=3) / 90, prior,
                               atol=0.05)
    np.testing.assert_allclose(np.bincount(labels[1].numpy(), minlength=3) / 90,
                               [1 / 3] * 3, atol=0.05)


class _Spy(SinkhornAssigner):
    def assign_tensor(self, scores, **kw):
        self.seen = getattr(self, "seen", []) + [scores.clone()]
        return super().assign_tensor(scores, **kw)


def _diffused_step(n_clusters, feature_walk_steps=None):
    """One self-label step with 3 diffusion steps (and ``feature_walk_steps`` on the
    features), the scores the assigner saw recorded."""
    backbone, heads = _network(n_clusters=n_clusters)
    X_t = _data()
    graph = NeighborGraph(nearest_neighbors(X_t, 5))
    spy = _Spy(lam=10.0)
    labels = torch.zeros((len(n_clusters), 90), dtype=torch.int64)
    SelfLabeller(spy, graph, 3, feature_walk_steps=feature_walk_steps).relabel_(
        backbone, heads, 8, feeder_of(X_t), labels)
    return backbone, heads, X_t, graph, spy, labels


def test_few_clusters_diffuse_each_heads_probabilities():
    backbone, heads, X_t, graph, spy, labels = _diffused_step((3,))   # 3 <= 8 features
    with torch.no_grad():
        p = torch.softmax(heads[0](backbone(X_t)), 1)
    for _ in range(3):
        p = (p + p[graph.indices].mean(1)) / 2
    torch.testing.assert_close(spy.seen[0], p.clamp_min(1e-8).log(), rtol=1e-5, atol=1e-5)
    ref = sinkhorn_knopp(spy.seen[0].numpy(), lam=10.0, tol=1e-3)
    assert np.mean(ref.labels == labels[0].numpy()) > 0.97


@pytest.mark.parametrize("walk", [None, 1, 0])
def test_many_clusters_diffuse_the_features_once_for_all_heads(walk):
    backbone, heads, X_t, graph, spy, _ = _diffused_step((12, 12), walk)   # 12 > 8 features
    with torch.no_grad():
        features = backbone(X_t)
        for _ in range(3 if walk is None else walk):
            features = (features + features[graph.indices].mean(1)) / 2
        for h in range(2):
            torch.testing.assert_close(spy.seen[h], heads[h](features), rtol=1e-5, atol=1e-5)


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


@pytest.mark.parametrize("n_clusters", [2, 10, 300, 1500, 3000])
@pytest.mark.parametrize("diffusion_steps", [0, "auto"])
def test_every_heads_self_labels_hold_their_share(n_clusters, diffusion_steps):
    # Random rows: nothing pulls samples together, and at 1,500 clusters an untrained
    # network's argmax piles into a few; the sizes must hold anyway (+-50% at the end).
    n = max(3000, 2 * n_clusters)
    X = np.random.default_rng(1).standard_normal((n, 8)).astype(np.float32)
    est = SelfLabelClusterer(n_clusters=n_clusters, n_heads=2, max_epochs=1,
                             n_label_updates=3, diffusion_steps=diffusion_steps,
                             random_state=0).fit(X)
    share = n / n_clusters
    for row in est.self_labels_:
        sizes = np.bincount(row, minlength=n_clusters)
        assert sizes.min() >= np.floor(0.5 * share) and sizes.max() <= np.ceil(1.5 * share)


def test_early_steps_may_be_uneven_the_last_one_not():
    # The labeller widens the allowed sizes early in training (2 at the start, none at
    # the end); the assigner applies them (tested in test_assigner).
    seen = []

    class Spy(SinkhornAssigner):
        def assign_tensor(self, scores, **kw):
            seen.append(kw["min_size_tolerance"])
            return super().assign_tensor(scores, **kw)

    backbone, heads = _network()
    for progress in (0.0, 0.75, 1.0):
        SelfLabeller(Spy(), None, 0).relabel_(backbone, heads, 8, feeder_of(_data()),
                                              torch.zeros((1, 90), dtype=torch.int64),
                                              progress=progress)
    assert seen == [2.0, 0.5, 0.0]


def test_an_unconverged_step_is_reported():
    labeller = SelfLabeller(SinkhornAssigner(lam=50.0, tol=1e-9, max_iter=2), None, 0)
    backbone, heads = _network()
    labeller.relabel_(backbone, heads, 8, feeder_of(_data()), torch.zeros((1, 90),
                                                                            dtype=torch.int64))
    assert labeller.last_error > 1e-9
    est = SelfLabelClusterer(n_clusters=3, max_epochs=2, random_state=0,
                             assigner=SinkhornAssigner(lam=50.0, tol=1e-9, max_iter=2))
    est.fit(_data().numpy())
    assert (est.history_["label_error"] > 1e-9).all()


def test_non_finite_outputs_name_the_part_of_the_network():
    backbone, heads = _network(n_clusters=(3, 4))
    X_t = _data()
    labels = torch.zeros((2, 90), dtype=torch.int64)
    labeller = SelfLabeller(SinkhornAssigner(), None, 0)
    with torch.no_grad():
        heads[1].weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteOutput, match="head 1 output holds") as err:
        labeller.relabel_(backbone, heads, 8, feeder_of(X_t), labels)
    assert err.value.part == "head 1" and err.value.n_values == 90 * 4
    assert isinstance(err.value, FloatingPointError)
    with torch.no_grad():
        backbone[0].bias[0] = float("nan")
    with pytest.raises(NonFiniteOutput, match="backbone output holds 90 NaN or inf"):
        labeller.relabel_(backbone, heads, 8, feeder_of(X_t), labels)
