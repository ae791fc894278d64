"""Ctrl-C during fit: a flag checked between batches, heads, inference batches and solver
iterations."""
import os
import signal
import threading
import time

import numpy as np
import pytest

from skselflabel import SelfLabelClusterer, SinkhornAssigner
from skselflabel._runtime.interrupt import InterruptFlag, check_interrupt


def test_interrupt_flag_restores_the_handler():
    before = signal.getsignal(signal.SIGINT)
    with InterruptFlag() as flag:
        assert signal.getsignal(signal.SIGINT) != before
        signal.raise_signal(signal.SIGINT)
        assert flag.requested
        with pytest.raises(KeyboardInterrupt):      # a second Ctrl-C interrupts at once
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_check_interrupt_raises_only_inside_a_flagged_block():
    check_interrupt()                                    # no fit: nothing happens
    with InterruptFlag() as flag:
        check_interrupt()
        flag.requested = True
        with pytest.raises(KeyboardInterrupt):
            check_interrupt()
    check_interrupt()


class _SlowAssigner(SinkhornAssigner):
    """A self-label step that would run for minutes; Ctrl-C arrives 1 s into it."""

    def assign_tensor(self, scores, **kwargs):
        if not hasattr(self, "started"):
            self.started = time.perf_counter()
            threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
        return super().assign_tensor(scores, **kwargs)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers need the main thread")
def test_ctrl_c_in_a_large_self_label_step_stops_fit_within_seconds():
    X = np.random.default_rng(0).standard_normal((20_000, 8)).astype(np.float32)
    slow = _SlowAssigner(lam=25.0, tol=1e-12, max_iter=1_000_000)
    est = SelfLabelClusterer(n_clusters=2000, max_epochs=2, n_neighbors=0, assigner=slow,
                             random_state=0)
    with pytest.warns(UserWarning, match="interrupted"):
        est.fit(X)
    stopped = time.perf_counter() - slow.started
    assert stopped < 1.0 + 5.0, f"fit took {stopped:.1f} s after the Ctrl-C"
    assert len(est.history_) == est.n_iter_ == 1       # the partial epoch is recorded
    assert est.labels_.shape == (20_000,)


def test_a_deferred_flag_is_read_not_raised():
    # Data-parallel fits agree on where to stop: check_interrupt must not raise in one
    # process while the others wait for it in a collective.
    from skselflabel._runtime.interrupt import interrupt_requested
    assert not interrupt_requested()
    with InterruptFlag(deferred=True) as flag:
        flag.requested = True
        check_interrupt()
        assert interrupt_requested()
    assert not interrupt_requested()
