"""CPU threads: torch's thread count set for the calling thread only, never process-wide,
and ``n_jobs`` applied for the length of an estimator's call."""
from contextlib import contextmanager
import functools
import threading

import joblib
import torch

_lock = threading.Lock()
_openmp = None          # the OpenMP runtimes' threadpoolctl controllers, found once


def _openmp_controllers():
    global _openmp
    with _lock:
        if _openmp is None:
            try:
                from threadpoolctl import ThreadpoolController

                _openmp = [lib for lib in ThreadpoolController().lib_controllers
                           if lib.user_api == "openmp"]
            except Exception:  # an unusual runtime must never break a fit
                _openmp = []
        return _openmp


def _set_own(n):
    """Set the calling thread's count to ``n`` (an int, or one int per controller as
    returned by this function); returns the counts in force before, to restore them."""
    controllers = _openmp_controllers()
    if not controllers:
        previous = torch.get_num_threads()
        torch.set_num_threads(n if isinstance(n, int) else n[0])
        return [previous]
    # Each OpenMP runtime (torch's, and one that scikit-learn may have loaded) keeps its
    # own per-thread setting: each is restored to its own value.
    counts = [n] * len(controllers) if isinstance(n, int) else n
    previous = [lib.num_threads for lib in controllers]
    for lib, count in zip(controllers, counts):
        lib.set_num_threads(count)
    return previous


def limit_own_threads(n):
    """Set the calling thread's torch intra-op thread count to ``n`` (for threads we own).

    ``torch.get_num_threads()`` first makes torch initialise this thread's setting from its
    process-wide default; otherwise torch would do so at the thread's first parallel
    operation and overwrite the limit.
    """
    torch.get_num_threads()
    _set_own(int(n))


@contextmanager
def own_threads(n):
    """Limit the calling thread to ``n`` torch intra-op threads for the ``with`` block.

    Other threads, and threads started meanwhile, keep their own settings. ``n=None``
    changes nothing. Yields the count that was in force before.
    """
    previous = torch.get_num_threads()
    if n is None or int(n) == previous:
        yield previous
        return
    restore = _set_own(int(n))
    try:
        yield previous
    finally:
        _set_own(restore)


def effective_threads(n_jobs):
    """The number of threads ``n_jobs`` means, by scikit-learn's convention.

    None is 1 unless a :func:`joblib.parallel_config` context sets ``n_jobs``; -1 is every
    CPU available to the process (its affinity and cgroup quota counted), -2 all but one,
    and so on; a positive count is taken as it is. 0 is an error.
    """
    if n_jobs is not None and int(n_jobs) == 0:
        raise ValueError("n_jobs == 0 has no meaning: use None, a positive count or -1.")
    return int(joblib.effective_n_jobs(n_jobs))


def uses_n_jobs(method):
    """Decorate an estimator method to run with ``effective_threads(self.n_jobs)`` torch
    threads in the calling thread, restored when it returns (other threads untouched)."""

    @functools.wraps(method)
    def with_own_threads(self, *args, **kwargs):
        with own_threads(effective_threads(getattr(self, "n_jobs", None))):
            return method(self, *args, **kwargs)

    return with_own_threads
