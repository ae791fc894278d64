"""The neighbour graph: exact k-NN search, the neighbour space, neighbour views, diffusion."""
import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

import skselflabel._fit.graph as graph_module
from skselflabel._fit.graph import (EXACT_MAX_SAMPLES, IVFSearch, NeighborGraph, knn_needs,
                                    nearest_neighbors, neighbor_points, search_method)
from feeding import feeder_of


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
    X_t = torch.rand(70, 1, 8, 8, generator=_gen())
    torch.testing.assert_close(neighbor_points(feeder_of(X_t), "input"), X_t.flatten(1))
    hog = neighbor_points(feeder_of(X_t), "gradients")          # 81 wide: projected on 64
    assert hog.shape == (70, 64)
    torch.testing.assert_close(hog.mean(0), torch.zeros(64), atol=1e-5, rtol=0)
    emb = neighbor_points(feeder_of(X_t), lambda x: x.flatten(1)[:, :3].double())
    assert emb.dtype == torch.float32 and emb.shape == (70, 3)
    given = neighbor_points(feeder_of(X_t), np.ones((70, 2)))
    assert given.shape == (70, 2)


def test_wide_spaces_project_the_same_in_memory_and_streamed(monkeypatch):
    import skselflabel._fit.graph as graph_module

    X_t = torch.rand(300, 1, 16, 16, generator=_gen(1))
    in_memory = neighbor_points(feeder_of(X_t), "gradients")
    monkeypatch.setattr(graph_module, "IN_MEMORY_BYTES", 0)
    monkeypatch.setattr("skselflabel._data.sources.READ_ROWS", 64)
    streamed = neighbor_points(feeder_of(X_t), "gradients")
    # Same principal axes up to sign: the same distances.
    torch.testing.assert_close(torch.cdist(in_memory, in_memory), torch.cdist(streamed, streamed),
                               atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("features, match", [
    ("gradients", "needs images"),
    (lambda x: x[:1], r"tensor for a batch of 2 samples"),
    (lambda x: x * float("inf"), "NaN or inf"),
])
def test_neighbor_points_errors(features, match):
    with pytest.raises(ValueError, match=match):
        neighbor_points(feeder_of(torch.ones(5, 3)), features)


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
    values = torch.randn(50, 3, generator=g) * 3
    indices = nearest_neighbors(torch.randn(50, 2, generator=g), 5)
    graph = NeighborGraph(indices)
    expected = values.clone()
    for _ in range(3):
        expected = (expected + expected[indices].mean(1)) / 2
    out = values.clone()
    scratch = torch.empty_like(out)
    # Chunks of 7 rows (uneven last one) give the same result as one pass.
    result = graph.walk_(out, 3, scratch, chunk_elements=7 * 5 * 3)
    assert result.data_ptr() == out.data_ptr()               # in place
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_build_uses_the_chosen_space():
    X_t = torch.zeros(40, 2)
    X_t[20:, 0] = 10.0
    X_t += torch.randn(40, 2, generator=_gen()) * 0.1
    # In a space that puts the halves the other way round, neighbours follow that space.
    parity = (torch.arange(40) % 2).float()[:, None].numpy()
    swapped = NeighborGraph.build(feeder_of(X_t), parity, 3)
    assert ((swapped.indices % 2) == (torch.arange(40) % 2)[:, None]).all()
    plain = NeighborGraph.build(feeder_of(X_t), "input", 3)
    assert ((plain.indices >= 20) == (torch.arange(40) >= 20)[:, None]).all()


def test_probability_diffusion_is_the_walk_of_the_softmax():
    g = _gen(4)
    logits = torch.randn(50, 3, generator=g) * 3
    graph = NeighborGraph(nearest_neighbors(torch.randn(50, 2, generator=g), 5))
    p = torch.softmax(logits, 1)
    for _ in range(3):
        p = (p + p[graph.indices].mean(1)) / 2
    out = logits.clone()
    graph.diffuse_(out, 3, torch.empty_like(out), chunk_elements=7 * 5 * 3)
    torch.testing.assert_close(out, p.clamp_min(1e-8).log(), rtol=1e-5, atol=1e-5)


def _needs_faiss():
    pytest.importorskip("faiss", reason="faiss (the 'faiss' extra) is not installed")


def _without_faiss(monkeypatch):
    # None in sys.modules makes "import faiss" raise ImportError.
    monkeypatch.setitem(sys.modules, "faiss", None)


@pytest.mark.parametrize("method", ["exact", "ivf"])
def test_a_process_searches_the_neighbours_of_its_rows_among_all(method, monkeypatch):
    if method == "ivf":
        _needs_faiss()
    monkeypatch.setattr(graph_module, "LIST_SIZE", 30)
    points = torch.randn(300, 6, generator=_gen())
    whole = nearest_neighbors(points, 5, batch_size=64, method=method)
    parts = [nearest_neighbors(points, 5, batch_size=64, method=method, rows=rows)
             for rows in [(0, 101), (101, 300)]]
    assert torch.equal(torch.cat(parts), whole)
    assert not (parts[1] == torch.arange(101, 300)[:, None]).any()


def _blobs(n, seed=0):
    """``n`` points around 40 centres in 16 dimensions, and their exact 10 neighbours."""
    g = _gen(seed)
    x = (torch.randn(40, 16, generator=g) * 3)[torch.randint(40, (n,), generator=g)]
    x += torch.randn(n, 16, generator=g)
    return x, nearest_neighbors(x, 10, method="exact")


def _recall(found, exact):
    return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.tolist(), exact.tolist())])


def test_the_approximate_search_reaches_the_recall_asked_for(monkeypatch):
    _needs_faiss()
    monkeypatch.setattr(graph_module, "LIST_SIZE", 50)
    x, exact = _blobs(3000)
    loose, tight = IVFSearch(x, 10, 0.5), IVFSearch(x, 10, 0.97)
    assert loose.n_lists == 60 and loose.nprobe < tight.nprobe
    for index in (loose, tight):
        found = index.search(0, 3000)
        assert not (found == torch.arange(3000)[:, None]).any()
        assert abs(_recall(found, exact) - index.estimated_recall) < 0.03
    assert _recall(tight.search(0, 3000), exact) >= 0.95
    # The same search through nearest_neighbors, and reproducible.
    assert torch.equal(nearest_neighbors(x, 10, method="ivf", recall=0.97),
                       tight.search(0, 3000))


def test_a_recall_out_of_reach_warns(monkeypatch):
    _needs_faiss()
    monkeypatch.setattr(graph_module, "LIST_SIZE", 50)
    monkeypatch.setattr(graph_module, "MAX_NPROBE", 1)
    x = torch.rand(2000, 32, generator=_gen())        # no structure: lists cut neighbours off
    with pytest.warns(UserWarning, match="short of neighbor_recall=0.99"):
        index = IVFSearch(x, 10, 0.99)
    assert index.nprobe == 1 and index.estimated_recall < 0.99


def test_search_method_and_its_memory(monkeypatch):
    _needs_faiss()
    big = EXACT_MAX_SAMPLES + 1
    assert search_method(EXACT_MAX_SAMPLES, 64, "cpu") == "exact"
    assert search_method(big, 64, "cpu") == "ivf"
    assert search_method(big, 64, "cpu", recall=1.0) == "exact"
    assert search_method(big, 64, "cpu", method="exact") == "exact"
    # On a GPU the exact search is kept wherever its blocks fit in free memory.
    blocks = graph_module.exact_bytes(big, 64)
    for room, expected in [(blocks, "exact"), (blocks - 1, "ivf"), (None, "ivf")]:
        monkeypatch.setattr(graph_module, "available", lambda device, room=room: (room, "t"))
        assert search_method(big, 64, "cuda:0") == expected
        assert search_method(big, 64, "cpu") == "ivf"
        needs = {need.what for need in knn_needs(big, 64, 10, device="cuda:0")}
        assert ("k-NN distance blocks" in needs) == (expected == "exact")
        assert ("k-NN index" in needs) == (expected == "ivf")
    index = {need.what: need.nbytes for need in knn_needs(big, 64, 10)}["k-NN index"]
    assert big * 64 * 4 < index < blocks


def test_without_faiss_the_search_stays_exact_and_says_so(monkeypatch):
    _without_faiss(monkeypatch)
    monkeypatch.setattr(graph_module, "EXACT_MAX_SAMPLES", 200)
    points = torch.randn(300, 6, generator=_gen())
    assert search_method(300, 6, "cpu") == "exact"
    needs = {need.what for need in knn_needs(300, 6, 5)}
    assert "k-NN distance blocks" in needs and "k-NN index" not in needs
    with pytest.warns(UserWarning, match=r"skselflabel\[faiss\]"):
        found = nearest_neighbors(points, 5)
    assert torch.equal(found, nearest_neighbors(points, 5, method="exact"))
    # Below the threshold, or asked to be exact, there is nothing to say.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nearest_neighbors(points[:200], 5)
        nearest_neighbors(points, 5, recall=1.0)
    with pytest.raises(ImportError, match="faiss"):
        nearest_neighbors(points, 5, method="ivf")


def test_graph_estimate_counts_the_joined_points_and_the_batch_being_read():
    from skselflabel._data.sources import READ_ROWS
    # 28 x 28 images give 1,521 gradient-histogram values: projected on 64 axes, streamed
    # at 300,000 rows, in memory at 20,000 (the wide points then count too).
    for n, wide in ((300_000, 0), (20_000, 20_000 * 1521 * 4)):
        needs = {need.what: need.nbytes for need in knn_needs(n, 1521, 10, recall=1.0)}
        assert needs["k-NN points"] == 2 * (wide + n * 64 * 4)
        assert needs["k-NN batch being read"] == READ_ROWS * 1521 * (4 + 8)
    tiny = {need.what: need.nbytes for need in knn_needs(100, 5, 3)}
    assert tiny["k-NN batch being read"] == 100 * 5 * 12
