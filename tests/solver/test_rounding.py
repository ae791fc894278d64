"""Cluster-size bounds of the sized labels."""
import torch

from skselflabel import sinkhorn_knopp
from skselflabel._solver.rounding import size_bounds


def test_bounds_stay_within_the_tolerance():
    # The ImageNet-size case: shares of 427.06 rows give 213.5 and 640.6 at +-50%, so the
    # sizes allowed are 214 to 640, not 213 to 641.
    p = torch.full((3000,), 1 / 3000, dtype=torch.float64)
    low, high = size_bounds(p, 1_281_167, 0.5)
    assert int(low.min()) == int(low.max()) == 214
    assert int(high.min()) == int(high.max()) == 640


def test_bounds_that_could_not_hold_the_samples_round_outwards():
    # 10 clusters of 1.5 samples each: +-50% gives [0.75, 2.25], whose integers 1 to 2
    # hold 10 to 20 samples, so 15 fit; 40 clusters of 0.375 samples each at +-50% have no
    # integer within, so the bounds widen to 0 and 1.
    p = torch.full((10,), 0.1, dtype=torch.float64)
    low, high = size_bounds(p, 15, 0.5)
    assert low.tolist() == [1] * 10 and high.tolist() == [2] * 10
    p = torch.full((40,), 1 / 40, dtype=torch.float64)
    low, high = size_bounds(p, 15, 0.5)
    assert int(low.sum()) <= 15 <= int(high.sum())
    assert low.tolist() == [0] * 40 and high.tolist() == [1] * 40


def test_exact_shares_sum_to_the_samples():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    low, high = size_bounds(p, 7, 0.0)
    assert torch.equal(low, high) and int(low.sum()) == 7


def test_the_result_counts_the_labels_the_rounding_moved():
    # Scores that pile most rows into cluster 0: sizes within +-10% must move many.
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(600, 4, generator=g)
    scores[:, 0] += 3.0
    free = sinkhorn_knopp(scores.numpy(), lam=1.0, tol=1e-3, max_iter=5)
    sized = sinkhorn_knopp(scores.numpy(), lam=1.0, tol=1e-3, max_iter=5, size_tolerance=0.1)
    assert free.n_moved == 0
    assert sized.n_moved == int((free.labels != sized.labels).sum()) > 0
