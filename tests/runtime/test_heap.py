"""Freed heap memory goes back to the system after a phase."""
import sys

import numpy as np
import pytest

from skselflabel._runtime import heap


def _anonymous_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")
def test_freed_small_buffers_leave_the_resident_set():
    # 64 KB buffers stay below glibc's mmap threshold, so freeing them keeps them in the
    # heap; one kept after them stops the heap's top from shrinking on its own.
    chunks = [np.ones(8000) for _ in range(3000)]
    kept = np.ones(8000)
    del chunks
    before = _anonymous_bytes()
    assert heap.release_free_heap()
    assert before - _anonymous_bytes() >= 100 * 2**20
    assert kept.sum() == 8000


def test_without_malloc_trim_nothing_happens(monkeypatch):
    monkeypatch.setattr(heap.sys, "platform", "darwin")
    assert heap.release_free_heap() is False
    monkeypatch.setattr(heap.sys, "platform", "linux")

    def no_library(name):
        raise OSError("no C library")

    monkeypatch.setattr(heap.ctypes, "CDLL", no_library)
    assert heap.release_free_heap() is False
    monkeypatch.setattr(heap.ctypes, "CDLL", lambda name: object())   # no malloc_trim
    assert heap.release_free_heap() is False
