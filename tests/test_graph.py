"""The neighbour graph: exact k-NN search, the neighbour space, neighbour views, diffusion."""
import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from skselflabel._graph import NeighborGraph, nearest_neighbors, neighbor_points


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


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




def test_neighbor_points_spaces():
    X_t = torch.rand(6, 1, 16, 16, generator=_gen())
    assert neighbor_points(X_t, "input") is X_t
    hog = neighbor_points(X_t, "gradients")
    assert hog.shape[0] == 6 and hog.ndim == 2
    torch.testing.assert_close(hog.mean(0), torch.zeros(hog.shape[1]), atol=1e-6, rtol=0)
    emb = neighbor_points(X_t, lambda x: x.flatten(1)[:, :3].double())
    assert emb.dtype == torch.float32 and emb.shape == (6, 3)


@pytest.mark.parametrize("features, match", [
    ("gradients", "needs images"),
    (lambda x: x[:2], r"tensor for 5 samples"),
    (lambda x: x * float("inf"), "NaN or inf"),
])
def test_neighbor_points_errors(features, match):
    with pytest.raises(ValueError, match=match):
        neighbor_points(torch.ones(5, 3), features)


def test_views_pick_neighbours_with_the_given_probability():
    indices = torch.tensor([[1, 2], [0, 2], [0, 1]])
    graph = NeighborGraph(indices)
    idx = torch.tensor([0, 1, 2] * 400)
    always = graph.views(idx, 1.0, _gen())
    assert (always != idx).all() and (indices[idx] == always[:, None]).any(1).all()
    assert torch.equal(graph.views(idx, 0.0, _gen()), idx)
    half = graph.views(idx, 0.5, _gen())
    assert 0.4 < (half != idx).float().mean() < 0.6
    assert torch.equal(half, graph.views(idx, 0.5, _gen()))      # the generator decides


def test_diffusion_is_a_lazy_random_walk_in_chunks():
    g = _gen(3)
    logits = torch.randn(50, 3, generator=g) * 3
    indices = nearest_neighbors(torch.randn(50, 2, generator=g), 5)
    graph = NeighborGraph(indices)
    p = torch.softmax(logits, 1)
    for _ in range(3):
        p = (p + p[indices].mean(1)) / 2
    out = logits.clone()
    scratch = torch.empty_like(out)
    # Chunks of 7 rows (uneven last one) give the same result as one pass.
    result = graph.diffuse_(out, 3, scratch, chunk_elements=7 * 5 * 3)
    assert result.data_ptr() == out.data_ptr()               # in place
    torch.testing.assert_close(out, p.clamp_min(1e-8).log(), rtol=1e-5, atol=1e-5)


def test_build_uses_the_chosen_space():
    X_t = torch.zeros(40, 2)
    X_t[20:, 0] = 10.0
    X_t += torch.randn(40, 2, generator=_gen()) * 0.1
    # In a space that puts the halves the other way round, neighbours follow that space.
    swapped = NeighborGraph.build(X_t, lambda x: (torch.arange(40) % 2).float()[:, None], 3)
    assert ((swapped.indices % 2) == (torch.arange(40) % 2)[:, None]).all()
    plain = NeighborGraph.build(X_t, "input", 3)
    assert ((plain.indices >= 20) == (torch.arange(40) >= 20)[:, None]).all()
