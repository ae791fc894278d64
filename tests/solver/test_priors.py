"""prior="auto": cluster proportions estimated from the scores, floored against collapse."""
import numpy as np
import torch
from sklearn.datasets import make_blobs

from skselflabel import SelfLabelClusterer, SinkhornAssigner
from skselflabel._fit.config import default_assigner
from skselflabel._solver.priors import FLOOR, estimate_proportions


def _mixture_scores(weights, n=3000, separation=3.0, seed=0):
    """Log-posteriors of a 1-D Gaussian mixture under equal weights, and the true labels."""
    rng = np.random.default_rng(seed)
    k = len(weights)
    y = rng.choice(k, size=n, p=weights)
    x = rng.normal(loc=y * separation)
    log_lik = -0.5 * (x[:, None] - np.arange(k)[None] * separation) ** 2
    return torch.from_numpy(log_lik), y


def test_successive_estimates_approach_the_mixture_weights():
    weights = np.array([0.6, 0.3, 0.1])
    scores, _ = _mixture_scores(weights)
    pi = torch.full((3,), 1 / 3, dtype=torch.float64)
    for _ in range(8):                       # one estimate per self-label step
        pi = estimate_proportions(scores, pi)
    np.testing.assert_allclose(pi.numpy(), weights, atol=0.03)
    assert abs(float(pi.sum()) - 1) < 1e-12


def test_a_cluster_nobody_wants_keeps_its_floor():
    scores = torch.zeros((500, 4), dtype=torch.float64)
    scores[:, 3] = -50.0                     # no sample fits cluster 3
    pi = torch.full((4,), 0.25, dtype=torch.float64)
    for _ in range(10):
        pi = estimate_proportions(scores, pi)
    assert float(pi[3]) >= FLOOR / 4 * 0.99 and float(pi[3]) < 0.1


def test_the_estimator_reports_the_proportions_it_solved_for():
    X, y = make_blobs(n_samples=[300, 150, 50], centers=[[0, 0], [5, 0], [0, 5]],
                      random_state=0)
    # 40 epochs: 100 self-label steps, for the estimate to move.
    kw = dict(n_clusters=3, max_epochs=40, random_state=0)
    # The default assigner given explicitly: on tables, the default also tries estimated
    # sizes (tests/fit/test_size_choice.py).
    equal = SelfLabelClusterer(**kw, assigner=default_assigner()).fit(X)
    np.testing.assert_allclose(equal.cluster_sizes_, [1 / 3] * 3)
    fixed = SelfLabelClusterer(**kw, assigner=SinkhornAssigner(lam=10.0, prior=[3, 2, 1]))
    np.testing.assert_allclose(fixed.fit(X).cluster_sizes_, [0.5, 1 / 3, 1 / 6])
    auto = SelfLabelClusterer(**kw, assigner=SinkhornAssigner(lam=10.0, tol=1e-2,
                                                              prior="auto")).fit(X)
    sizes = auto.cluster_sizes_
    assert abs(sizes.sum() - 1) < 1e-9 and sizes.min() >= FLOOR / 3 * (1 - 1e-9)
    assert auto.sizes_estimated_ and not equal.sizes_estimated_
    assert np.abs(sizes - 1 / 3).max() > 0.01        # the estimate moved off equal sizes
    # The last self-labels were solved for the proportions reported.
    for model in (equal, fixed, auto):
        shares = np.bincount(model.self_labels_[0], minlength=3) / len(X)
        np.testing.assert_allclose(shares, model.cluster_sizes_, atol=0.02)
    # A standalone assigner estimates the proportions of its scores once.
    scores, _ = _mixture_scores(np.array([0.7, 0.3]))
    fitted = SinkhornAssigner(prior="auto").fit(scores.numpy())
    assert fitted.cluster_sizes_[0] > 0.55 and abs(fitted.cluster_sizes_.sum() - 1) < 1e-9
