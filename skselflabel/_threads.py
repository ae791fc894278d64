"""How many CPU threads torch uses for our own work, set per thread and never process-wide.

``torch.set_num_threads`` looks thread-safe but is not: besides the calling thread's OpenMP
setting it writes a process-wide default that every thread reads at its *first* torch call.
A thread that happens to start using torch while a call of ours has lowered that default
stays at the lowered count for the rest of the process. Here the calling thread's own
OpenMP setting is changed instead (``omp_set_num_threads`` acts on the calling thread only),
through threadpoolctl, which finds the OpenMP runtime torch loaded. Where that runtime
cannot be found the functions fall back to ``torch.set_num_threads``.
"""
from contextlib import contextmanager
import threading

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
    controllers = _openmp_controllers()
    if controllers:
        for lib in controllers:
            lib.set_num_threads(n)
    else:
        torch.set_num_threads(n)


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
    _set_own(int(n))
    try:
        yield previous
    finally:
        _set_own(previous)
