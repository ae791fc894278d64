"""Ctrl-C during ``fit``: a flag that training and the slow steps check, so that a fit
stops promptly at a safe place (deferred to an agreed batch under data-parallel training);
the same checks stop a process of a data-parallel fit when another has failed."""
from contextvars import ContextVar
import signal
import threading

from .failures import check_other_processes

_current = ContextVar("skselflabel_interrupt", default=None)


class InterruptFlag:
    """Turns the first Ctrl-C into a flag for the length of the ``with`` block.

    Only the main thread can install signal handlers; elsewhere a KeyboardInterrupt is
    caught where it lands instead. ``deferred=True``: :func:`check_interrupt` does not
    raise (the caller reads :func:`interrupt_requested` at points all processes reach).
    """

    def __init__(self, deferred=False):
        self.requested = False
        self.deferred = deferred
        self._previous = None
        self._token = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            try:
                self._previous = signal.signal(signal.SIGINT, self._handle)
            except ValueError:  # e.g. embedded interpreters without signal support
                self._previous = None
        self._token = _current.set(self)
        return self

    def __exit__(self, *exc):
        _current.reset(self._token)
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def interrupt_requested():
    """Whether a Ctrl-C arrived during the current fit."""
    flag = _current.get()
    return flag is not None and flag.requested


def check_interrupt():
    """Raise KeyboardInterrupt if a Ctrl-C arrived during the current fit (cheap), unless
    the flag is deferred; or the error of another process of a data-parallel fit that
    failed (:func:`~.failures.check_other_processes`)."""
    check_other_processes()
    flag = _current.get()
    if flag is not None and flag.requested and not flag.deferred:
        raise KeyboardInterrupt
