"""What the solver accepts (scores, temperature, prior, shapes, limits), checked before it
writes anything, with errors that say what to pass instead."""
import math
import warnings

import numpy as np
import torch

from .._runtime.memory import fmt
from .._runtime.writable import is_writable


def check_lam(lam):
    try:
        lam = float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"lam must be a positive number, got {lam!r}.") from None
    if not (lam > 0 and math.isfinite(lam)):
        raise ValueError(f"lam must be a positive finite number, got {lam!r}.")
    return lam


def as_tensor(scores):
    """(tensor sharing memory with ``scores`` where possible, whether it may be written)."""
    if isinstance(scores, torch.Tensor):
        if scores.is_complex():
            raise ValueError(f"scores must hold real numbers, got a complex tensor "
                             f"({scores.dtype}); pass its real part or magnitude.")
        return scores.detach(), True
    arr = np.asarray(scores)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                   or arr.dtype == np.bool_):
        raise ValueError(f"scores must hold real numbers, got dtype {arr.dtype}.")
    if np.iscomplexobj(arr):
        raise ValueError("scores must hold real numbers, got complex values.")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.flags.writeable:
        return torch.from_numpy(arr), True
    with warnings.catch_warnings():
        # Read-only memory is only ever read here (copy=False then falls back to a copy).
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr), False


def needs_copy(src, copy, writeable, dtype):
    """Whether the kernel needs a buffer of its own: with ``copy=False`` the scores are
    overwritten only when they are writable, contiguous float32 or float64 memory."""
    if copy or src.dtype != dtype or not src.is_contiguous():
        return True
    if writeable and src.device.type == "cpu":
        writeable = is_writable(src)       # a tensor over a read-only memory map, say
    if not writeable:
        warnings.warn(
            "sinkhorn_knopp(copy=False): scores is read-only memory (a read-only array or "
            "memory map), which must not be written; the kernel goes into a buffer of its "
            f"own ({fmt(src.numel() * src.element_size())}). Pass a writable array to work "
            "in place, or copy=True to silence this warning.", UserWarning, stacklevel=4)
    return not writeable


def check_prior(prior, K):
    """``prior`` as a normalised float64 CPU tensor of length ``K``, or a ValueError."""
    p = torch.as_tensor(np.ascontiguousarray(prior, dtype=np.float64)
                        if not isinstance(prior, torch.Tensor)
                        else prior.detach().to("cpu", torch.float64))
    if p.ndim != 1 or p.shape[0] != K:
        raise ValueError(f"prior must be a vector of length n_clusters={K}, got shape "
                         f"{tuple(p.shape)}.")
    if not torch.isfinite(p).all():
        raise ValueError("prior must be finite.")
    if (p < 0).any():
        raise ValueError(f"prior must be non-negative; it has {int((p < 0).sum())} "
                         "negative entries.")
    if p.sum() <= 0:
        raise ValueError("prior must have a positive sum; it is all zeros.")
    return p / p.sum()


def log_prior(prior, K, device):
    """Log of the normalised prior (float64 on ``device``; -inf where it is 0)."""
    if prior is None:
        p = torch.full((K,), 1.0 / K, dtype=torch.float64, device=device)
    else:
        p = check_prior(prior, K).to(device)
    return torch.where(p > 0, p.log(), torch.full_like(p, -math.inf))


def check_shape(src, n_total):
    """``n_total`` (rows over all processes) after checking the shape of the scores."""
    if src.ndim != 2:
        raise ValueError(f"scores must be 2-D (n_samples, n_clusters), got ndim={src.ndim}.")
    N, K = src.shape
    if N == 0 or K == 0:
        raise ValueError(f"scores has an empty axis: shape {tuple(src.shape)}; it needs at "
                         "least one sample and one cluster.")
    n_total = N if n_total is None else int(n_total)
    if n_total < N:
        raise ValueError(f"n_total={n_total} is smaller than the number of rows {N}.")
    return n_total


def check_iterations(max_iter, tol):
    """``max_iter`` (an int >= 1) and ``tol`` (a float >= 0), or a ValueError."""
    if not (isinstance(max_iter, (int, np.integer)) and max_iter >= 1):
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}.")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}.")
    return int(max_iter), float(tol)


def check_tolerance(tolerance):
    """``size_tolerance`` as a non-negative float (1 or more: no lower bound), or None."""
    if tolerance is None:
        return None
    tolerance = float(tolerance)
    if not (0 <= tolerance and math.isfinite(tolerance)):
        raise ValueError(f"size_tolerance must be None or a number >= 0, got {tolerance!r}.")
    return tolerance
