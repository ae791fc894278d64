"""Thread limits apply to our own threads only, never to the rest of the process."""
import threading

import numpy as np
import torch

from skselflabel import _sinkhorn, sinkhorn_knopp
from skselflabel._threads import limit_own_threads, own_threads


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
    finish = _sinkhorn.finish

    def probing_finish(*args, **kwargs):
        seen["inside"] = torch.get_num_threads()
        seen["other"] = _in_new_thread(torch.get_num_threads)
        return finish(*args, **kwargs)

    monkeypatch.setattr(_sinkhorn, "finish", probing_finish)
    z = np.random.default_rng(0).standard_normal((4000, 50)).astype(np.float32)
    sinkhorn_knopp(z, lam=5.0)
    assert seen == {"inside": 1, "other": default}
    assert torch.get_num_threads() == default
