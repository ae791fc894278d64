"""The SeLa reference code's float64 self-label loop, written from its published algorithm:
the baseline that benchmarks/sinkhorn.py times beside ``sinkhorn_knopp``."""
import numpy as np


def reference_iteration(logits, lam=25.0, tol=1e-1):
    """The reference loop itself: ``(P, r, c, iterations)`` with ``P`` the K x N float64
    kernel (softmax probabilities raised to ``lam``), two matrix-vector passes per
    iteration, the error ``sum_i |c_i / c_new_i - 1|`` checked every 10 iterations, stop
    below ``tol``."""
    P = logits.astype(np.float64)
    P -= P.max(1, keepdims=True)
    np.exp(P, out=P)
    P /= P.sum(1, keepdims=True)
    P = P.T.copy()
    P **= lam
    K, N = P.shape
    r = np.ones((K, 1)) / K
    c = np.ones((N, 1)) / N
    err, it = np.inf, 0
    while err > tol:
        r = (1.0 / K) / (P @ c)
        c_new = (1.0 / N) / (r.T @ P).T
        if it % 10 == 0:
            err = np.nansum(np.abs(c / c_new - 1))
        c = c_new
        it += 1
    return P, r, c, it


def reference_labels(logits, lam=25.0, tol=1e-1):
    """Labels and iterations of the reference loop (:func:`reference_iteration`)."""
    P, r, c, it = reference_iteration(logits, lam, tol)
    P *= c.squeeze()
    return np.nanargmax(P * r, axis=0), it


def balanced_logits(N, K, seed=0, scale=3.0):
    """float32 logits shaped like a trained head's: each sample leans to one cluster, and the
    clusters are of unequal sizes."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((N, K), dtype=np.float32)
    z *= scale / 3
    home = rng.choice(K, size=N, p=rng.dirichlet(np.ones(K) * 2))
    z[np.arange(N), home] += scale
    return z
