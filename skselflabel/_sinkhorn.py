"""Sinkhorn-Knopp self-labelling solver (starter version; to be optimised)."""
from dataclasses import dataclass
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning


@dataclass
class SinkhornResult:
    labels: np.ndarray
    log_u: np.ndarray
    log_v: np.ndarray
    n_iter: int
    marginal_error: float
    converged: bool


def sinkhorn_knopp(scores, *, lam=25.0, prior=None, tol=1e-3, max_iter=1000, copy=True):
    """Balanced assignment Q = diag(u) exp(lam * scores) diag(v) (starter implementation)."""
    t = torch.as_tensor(scores)
    if t.ndim != 2:
        raise ValueError(f"scores must be 2-D (n_samples, n_clusters), got ndim={t.ndim}.")
    N, K = t.shape
    if N == 0 or K == 0:
        raise ValueError(f"scores has an empty axis: shape {tuple(t.shape)}.")
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam}.")
    t = t.to(torch.float64)
    bad = (~torch.isfinite(t)).sum().item()
    if bad:
        raise ValueError(f"scores contains {bad} NaN or inf values.")
    if prior is None:
        p = torch.full((K,), 1.0 / K, dtype=torch.float64)
    else:
        p = torch.as_tensor(np.asarray(prior, dtype=np.float64))
        if p.shape != (K,) or (p < 0).any() or p.sum() <= 0:
            raise ValueError("prior must be a non-negative vector of length n_clusters with a positive sum.")
        p = p / p.sum()
    s = lam * t
    shift = s.max(1, keepdim=True).values
    s = s - shift
    log_r = torch.full((N,), -np.log(N), dtype=torch.float64)
    log_c = torch.log(p)
    log_v = torch.zeros(K, dtype=torch.float64)
    err = np.inf
    for it in range(1, max_iter + 1):
        log_u = log_r - torch.logsumexp(s + log_v, 1)
        log_v = log_c - torch.logsumexp(s + log_u[:, None], 0)
        lq = s + log_u[:, None] + log_v
        q = lq.exp()
        row = q.sum(1) * N
        col = q.sum(0)
        err = max((row - 1).abs().max().item(), ((col - p).abs() / p.clamp_min(1e-300)).max().item())
        if err <= tol:
            break
    converged = err <= tol
    if not converged:
        warnings.warn(f"sinkhorn_knopp did not converge in {max_iter} iterations "
                      f"(marginal error {err:.3g} > tol {tol}).", ConvergenceWarning)
    labels = (s + log_v).argmax(1).numpy().astype(np.int64)
    log_u_out = (log_u - lam * 0 - shift.squeeze(1)).numpy()
    return SinkhornResult(labels, log_u_out, log_v.numpy(), it, float(err), converged)
