"""Score matrices and plan checks shared by the solver tests."""
import numpy as np


def plan(scores, res, lam):
    """Q rebuilt in float64 from the returned log-scalings and the scores as given."""
    s = np.asarray(scores, dtype=np.float64)
    return np.exp(lam * s + res.log_u[:, None] + res.log_v[None, :])


def marginal_error(Q, prior=None):
    N, K = Q.shape
    p = np.full(K, 1.0 / K) if prior is None else np.asarray(prior, float) / np.sum(prior)
    rows = np.abs(Q.sum(1) * N - 1).max()
    pos = p > 0
    cols = np.abs(Q.sum(0)[pos] / p[pos] - 1).max()
    assert np.all(Q.sum(0)[~pos] == 0)
    return max(rows, cols)


def head_logits(N, K, seed=0, scale=3.0, dtype=np.float32):
    """Logits like a trained head's: each row leans to one of unequally popular clusters."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((N, K)) * scale / 3
    home = rng.choice(K, size=N, p=rng.dirichlet(np.ones(K) * 2))
    z[np.arange(N), home] += scale
    return z.astype(dtype)


def peaked(N, K, gap, seed, n_home=3):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((N, K)).astype(np.float32)
    z[np.arange(N), rng.integers(0, n_home, N)] += gap     # most clusters: nobody's first
    return z
