"""Thread limits apply to our own threads only, never to the rest of the process."""
import threading

import joblib
import numpy as np
import pytest
import torch

from skselflabel import sinkhorn_knopp
from skselflabel._runtime import threads
from skselflabel._runtime.threads import (effective_threads, limit_own_threads, own_threads,
                                          uses_n_jobs)
from skselflabel._solver import sinkhorn


def _in_new_thread(fn):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("value", fn()))
    t.start()
    t.join()
    return out["value"]


def test_own_threads_limits_the_calling_thread_only():
    default = torch.get_num_threads()
    with own_threads(1) as previous:
        assert previous == default and torch.get_num_threads() == 1
        # A thread whose first torch call falls inside the block keeps the default.
        assert _in_new_thread(torch.get_num_threads) == default
    assert torch.get_num_threads() == default
    assert _in_new_thread(torch.get_num_threads) == default
    with own_threads(None):
        assert torch.get_num_threads() == default


def test_limit_own_threads_in_a_worker():
    def worker():
        limit_own_threads(1)
        return torch.get_num_threads()

    assert _in_new_thread(worker) == 1
    assert _in_new_thread(torch.get_num_threads) == torch.get_num_threads()


def test_a_solve_leaves_other_threads_alone(monkeypatch):
    default = torch.get_num_threads()
    seen = {}
    finish = sinkhorn.finish

    def probing_finish(*args, **kwargs):
        seen["inside"] = torch.get_num_threads()
        seen["other"] = _in_new_thread(torch.get_num_threads)
        return finish(*args, **kwargs)

    monkeypatch.setattr(sinkhorn, "finish", probing_finish)
    z = np.random.default_rng(0).standard_normal((4000, 50)).astype(np.float32)
    sinkhorn_knopp(z, lam=5.0)
    assert seen == {"inside": 1, "other": default}
    assert torch.get_num_threads() == default


def test_effective_threads_follows_scikit_learns_convention():
    assert effective_threads(None) == 1
    assert effective_threads(3) == 3
    assert effective_threads(-1) == joblib.cpu_count()
    assert effective_threads(-joblib.cpu_count() - 5) == 1
    with joblib.parallel_config(n_jobs=2):
        assert effective_threads(None) == 2
    with pytest.raises(ValueError, match="n_jobs == 0"):
        effective_threads(0)


def test_own_threads_restores_every_openmp_runtime_to_its_own_count(monkeypatch):
    # Two runtimes whose counts differ (torch's and, say, scikit-learn's): each gets its
    # own count back, not the other's.
    class FakeRuntime:
        def __init__(self, n):
            self.num_threads = n

        def set_num_threads(self, n):
            self.num_threads = n

    runtimes = [FakeRuntime(torch.get_num_threads()), FakeRuntime(7)]
    monkeypatch.setattr(threads, "_openmp", runtimes)
    with own_threads(torch.get_num_threads() + 1):
        assert [r.num_threads for r in runtimes] == [torch.get_num_threads() + 1] * 2
    assert [r.num_threads for r in runtimes][1] == 7


def test_uses_n_jobs_wraps_a_method_and_keeps_its_name_and_docstring():
    class Estimator:
        n_jobs = 1

        @uses_n_jobs
        def method(self):
            """Doc."""
            return torch.get_num_threads()

    assert Estimator().method() == 1
    assert Estimator.method.__name__ == "method" and Estimator.method.__doc__ == "Doc."
