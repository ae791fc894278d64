"""Ctrl-C during ``fit``: a flag that long steps check, so that training stops promptly.

During training the first Ctrl-C does not raise where it lands (that could be anywhere,
half-way through an optimiser step); it sets a flag. The trainer checks the flag after
every batch, and the slow parts of a self-label step check it too, through
:func:`check_interrupt`: between inference batches, diffusion steps, heads and solver
iterations. A second Ctrl-C raises at once.

Under data-parallel training the processes must stop at the same batch (a process that
stopped alone would leave the others waiting in a collective), so the flag is *deferred*:
:func:`check_interrupt` never raises, and the trainer stops when, after a batch, any
process's flag is set (:func:`interrupt_requested`, agreed through the team).
"""
from contextvars import ContextVar
import signal
import threading

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
    the flag is deferred."""
    flag = _current.get()
    if flag is not None and flag.requested and not flag.deferred:
        raise KeyboardInterrupt
