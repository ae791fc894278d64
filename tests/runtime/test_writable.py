"""Whether the memory under a tensor can be written (read-only memory maps)."""
import mmap
import warnings

import numpy as np
import pytest
import torch

from skselflabel._runtime import writable
from skselflabel._runtime.writable import is_writable


def test_read_only_memory_is_recognised(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(bytes(3 * mmap.PAGESIZE + 100))
    with open(path, "r+b") as f:
        ro = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        rw = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_WRITE)
    try:
        for buf, expected in ((ro, False), (rw, True)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")       # torch: "The given NumPy array is not writable"
                t = torch.from_numpy(np.frombuffer(buf, dtype=np.uint8))
            assert is_writable(t) is expected
            assert is_writable(t[mmap.PAGESIZE + 7:]) is expected
            start, stop = t.data_ptr(), t.data_ptr() + t.numel()
            assert writable._probe_pages(start, stop) is expected     # the non-Linux path
            del t                                    # so that the maps can be closed
        assert bytes(rw[:10]) == bytes(10)           # probing wrote back what was there
        assert is_writable(torch.zeros(10)) and is_writable(torch.zeros(0))
    finally:
        ro.close()
        rw.close()


def test_memory_map_parser(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("1000-2000 rw-p 0 0:0 0\n2000-3000 rw-p 0 0:0 0\n4000-5000 r--s 0 0:0 0\n"
                    "5000-6000 rw-p 0 0:0 0\n")
    assert writable._mapped_writable(0x1800, 0x2800, str(maps)) is True     # two mappings
    assert writable._mapped_writable(0x2800, 0x3800, str(maps)) is False    # a hole
    assert writable._mapped_writable(0x4800, 0x4900, str(maps)) is False    # read-only
    assert writable._mapped_writable(0x5800, 0x7000, str(maps)) is False    # runs off the end
    assert writable._mapped_writable(0, 1, str(tmp_path / "none")) is None


def test_memory_torch_allocated_is_writable_without_reading_the_maps(monkeypatch):
    def unread(*args):
        raise AssertionError("the process map was read")

    monkeypatch.setattr(writable, "_mapped_writable", unread)
    monkeypatch.setattr(writable, "_probe_pages", unread)
    assert is_writable(torch.zeros(4, 3)[1:])
    assert is_writable(torch.zeros(5).share_memory_())
    # An array's memory is not torch's: it is still looked up.
    with pytest.raises(AssertionError, match="process map"):
        is_writable(torch.from_numpy(np.zeros(3)))
