"""The fit's steps: what they allocate, checked before they allocate it."""
import numpy as np
import pytest

from skselflabel import SelfLabelClusterer
from skselflabel._fit.fit import fit_phases
from skselflabel._runtime.memory import ENV, peak
from skselflabel._solver import sinkhorn
from skselflabel._solver.sinkhorn import solver_needs


def test_estimates_follow_the_sizes():
    # The case: 200,000 x 64 inputs, 3,000 clusters, 10 heads, the default graph.
    phases = fit_phases(200_000, 64, 3000, 10, width=128, n_neighbors=10, diffusion_steps=40)
    total, needs = peak(phases)
    parts = {need.what: need.nbytes for need in needs}
    assert parts["logits of one head"] == 200_000 * 3000 * 4          # 2.4 GB
    # More clusters than features: the walk runs on the 128 features, not the logits.
    assert parts["diffusion scratch"] == 200_000 * 128 * 4
    knn = {need.what: need.nbytes for need in phases[0]}
    assert knn["k-NN index"] == 200_000 * (64 * 4 + 192)              # beyond 100,000 rows
    small = {need.what: need.nbytes for need in fit_phases(50_000, 64, 3000, 1, 128, 10, 5)[0]}
    assert small["k-NN distance blocks"] == 3 * 2048 * 50_000 * 4
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
