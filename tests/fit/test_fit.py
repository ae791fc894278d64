"""The fit's steps: what they allocate, checked before they allocate it."""
import numpy as np
import pytest
import torch

from skselflabel import SelfLabelClusterer
from skselflabel._fit import graph
from skselflabel._fit.config import default_assigner
from skselflabel._fit.fit import fit_phases
from skselflabel._runtime.memory import ENV, peak
from skselflabel._solver import sinkhorn
from skselflabel._solver.sinkhorn import solver_needs


def test_estimates_follow_the_sizes(monkeypatch):
    # The estimate of faiss's index needs no faiss: the search is chosen as if installed.
    monkeypatch.setattr(graph, "_faiss", lambda: graph)
    # The case: 200,000 x 64 inputs, 3,000 clusters, 10 heads, the default graph.
    phases = fit_phases(200_000, 64, 3000, 10, width=128, n_neighbors=10, diffusion_steps=40)
    total, needs = peak(phases)
    parts = {need.what: need.nbytes for need in needs}
    assert parts["logits of one head"] == 200_000 * 3000 * 4          # 2.4 GB
    # More clusters than features: the walk runs on the 128 features, not the logits.
    assert parts["diffusion scratch"] == 200_000 * 128 * 4
    knn = {need.what: need.nbytes for need in phases[0]}
    # Beyond 20,000 rows, faiss's IVF index: a copy of the points, an id and a list per
    # point, 200 centroids, a block of 65,536 queries and their 11 results, all results.
    assert knn["k-NN index"] == (200_000 * (64 * 4 + 2 * 8) + 200 * 64 * 4
                                 + 2**16 * (64 * 4 + 11 * (4 + 8)) + 200_000 * 11 * 8)
    small = {need.what: need.nbytes for need in fit_phases(20_000, 64, 3000, 1, 128, 10, 5)[0]}
    assert small["k-NN distance blocks"] == 3 * 2048 * 20_000 * 4
    assert 2.8 * 2**30 < total < 3.3 * 2**30
    # Without graph there is no k-NN phase and no diffusion scratch; heads only add labels.
    bare = fit_phases(200_000, 64, 3000, 10, width=128, n_neighbors=0, diffusion_steps=40)
    assert len(bare) == 1 and peak(bare)[0] < total - 150e6
    one_head = fit_phases(200_000, 64, 3000, 1, width=128, n_neighbors=10, diffusion_steps=40)
    assert peak(one_head)[0] == total - 9 * 200_000 * 8
    # The solver copies only when it must; a whole-matrix warm-up is its kernel buffer.
    assert (sum(n.nbytes for n in solver_needs(100_000, 1000, copies=True))
            - sum(n.nbytes for n in solver_needs(100_000, 1000))) == 100_000 * 1000 * 4
    assert solver_needs(500, 10, copies=True) == solver_needs(500, 10)


def test_shrinking_the_warm_up_shrinks_its_memory_estimate(monkeypatch):
    # The solver's warm-up constants have one home: what tests (and users) change there,
    # the estimates of the solve and the self-label step follow.
    def warm_up(phases):
        return sum(n.nbytes for phase in phases for n in phase if n.what == "solver warm-up")

    before = warm_up(fit_phases(100_000, 64, 100, 1, 128, 10, 5))
    assert before == 2 * (4_000_000 // 100) * 100 * 4
    monkeypatch.setattr(sinkhorn, "_WARMUP_ELEMENTS", 100_000)
    assert warm_up(fit_phases(100_000, 64, 100, 1, 128, 10, 5)) == 2 * 1000 * 100 * 4
    assert warm_up([solver_needs(100_000, 100)]) == 2 * 1000 * 100 * 4


@pytest.fixture
def blobs():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((3000, 8)) + rng.integers(0, 4, (3000, 1)) * 4).astype("f4")


def test_fit_refuses_what_does_not_fit_before_allocating_it(blobs, monkeypatch):
    # Issue #10, item 2: nothing estimated memory; a fit allocated until the OOM killer came.
    fitted = SelfLabelClusterer(3, max_epochs=1, random_state=0).fit(blobs[:500])
    labels = fitted.labels_.copy()
    monkeypatch.setenv(ENV, "50MB")       # k-NN blocks 70 MiB, label step about 35 MiB
    with pytest.raises(MemoryError, match=r"SelfLabelClusterer.fit would need about \d+\.\d "
                       r"MiB.*47.7 MiB is available.*k-NN distance blocks.*n_neighbors=0"):
        fitted.set_params(n_clusters=500).fit(blobs)
    assert fitted.labels_.shape == (500,) and np.array_equal(fitted.labels_, labels)
    # What the message suggests works: no graph, no k-NN blocks, no diffusion.
    fitted.set_params(n_neighbors=0, max_epochs=1).fit(blobs)
    assert fitted.labels_.shape == (3000,)


# ------------------------------------------------------------------ n_init: starts
@pytest.fixture
def three_blobs():
    from sklearn.datasets import make_blobs
    X, _ = make_blobs(n_samples=150, centers=3, n_features=4, random_state=0)
    return X.astype(np.float32)


def _rank_starts(monkeypatch, prefer):
    """Make the neighbour agreement rank the starts of a fit: ``prefer`` gives the score of
    the i-th start judged."""
    from skselflabel._fit import graph
    calls = []

    def agreement(self, labels, n_clusters):
        calls.append(len(calls))
        return prefer(len(calls) - 1)
    monkeypatch.setattr(graph.NeighborGraph, "agreement", agreement)
    return calls


def test_the_chosen_start_goes_on_as_if_it_had_never_paused(three_blobs, monkeypatch):
    kw = dict(n_clusters=3, max_epochs=5, random_state=0, assigner=default_assigner())
    single = SelfLabelClusterer(n_init=1, **kw).fit(three_blobs)
    assert not hasattr(single, "start_agreement_")
    calls = _rank_starts(monkeypatch, lambda i: 1.0 - i)      # the first start wins
    first = SelfLabelClusterer(n_init=3, **kw).fit(three_blobs)
    assert len(calls) == 3 and first.start_agreement_.tolist() == [1.0, 0.0, -1.0]
    np.testing.assert_array_equal(first.labels_, single.labels_)
    np.testing.assert_array_equal(first.transform(three_blobs), single.transform(three_blobs))
    assert first.history_["loss"].tolist() == single.history_["loss"].tolist()
    assert first.n_iter_ == 5 and list(first.history_["epoch"]) == [1, 2, 3, 4, 5]


def test_another_start_is_kept_when_it_agrees_best(three_blobs, monkeypatch):
    kw = dict(n_clusters=3, max_epochs=5, random_state=0, assigner=default_assigner())
    single = SelfLabelClusterer(n_init=1, **kw).fit(three_blobs)
    _rank_starts(monkeypatch, lambda i: float(i))              # the last start wins
    last = SelfLabelClusterer(n_init=3, **kw).fit(three_blobs)
    assert int(np.argmax(last.start_agreement_)) == 2
    assert not np.array_equal(last.transform(three_blobs), single.transform(three_blobs))
    np.testing.assert_array_equal(last.predict(three_blobs), last.labels_)
    # Reproducible: the other starts' seeds derive from random_state.
    again = SelfLabelClusterer(n_init=3, **kw).fit(three_blobs)
    np.testing.assert_array_equal(again.transform(three_blobs), last.transform(three_blobs))


def test_the_real_criterion_keeps_the_start_that_agrees_best(three_blobs):
    clu = SelfLabelClusterer(n_clusters=3, max_epochs=5, n_init=3, random_state=0)
    clu.fit(three_blobs)
    assert clu.start_agreement_.shape == (3,) and np.all(clu.start_agreement_ <= 1)
    assert 0 < clu.start_agreement_.max() and clu.score(three_blobs) > 0.9


class _CountingNet(torch.nn.Module):
    """A backbone whose copies (the fit deep-copies it for every start) share one count of
    training forward passes, and that interrupts at the ``at``-th of them."""

    passes = []

    def __init__(self, at):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
        self.at = at

    def forward(self, x):
        if self.training:
            _CountingNet.passes.append(1)
            if len(_CountingNet.passes) == self.at:
                raise KeyboardInterrupt
        return self.net(x)


def test_ctrl_c_during_the_trials_keeps_the_best_start_so_far(three_blobs, monkeypatch):
    # Trials of 2 epochs of 10 batches: the 25th pass is in the second start's trial.
    _rank_starts(monkeypatch, lambda i: 1.0 - i)
    monkeypatch.setattr(_CountingNet, "passes", [])
    clu = SelfLabelClusterer(n_clusters=3, max_epochs=10, n_init=3, batch_size=15,
                             backbone=_CountingNet(25), random_state=0,
                             assigner=default_assigner())
    with pytest.warns(UserWarning, match="interrupted"):
        clu.fit(three_blobs)
    assert len(_CountingNet.passes) == 25
    assert clu.start_agreement_.tolist() == [1.0, 0.0]     # the second was judged as it stood
    assert clu.n_iter_ == 2 and len(clu.history_) == 2      # the first start's trial
    np.testing.assert_array_equal(clu.predict(three_blobs), clu.labels_)
