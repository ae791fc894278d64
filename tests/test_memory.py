"""Memory estimates, the check before large allocations, and the writability of buffers."""
import mmap
import os
import warnings

import numpy as np
import pytest
import torch

from skselflabel import SelfLabelClusterer, SinkhornAssigner, sinkhorn_knopp
from skselflabel import _memory
from skselflabel._memory import (ENV, Need, available, fit_phases, fmt, is_writable,
                                 parse_size, peak, require, score_phases, solver_needs)


@pytest.mark.parametrize("text, nbytes", [
    ("123456", 123456), ("8GiB", 8 * 2**30), ("8 gib", 8 * 2**30), ("500MB", 500 * 10**6),
    ("1.5G", 1_500_000_000), ("2e9", 2_000_000_000), (" 64KiB ", 65536),
])
def test_sizes_are_read_with_their_units(text, nbytes):
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("text", ["lots", "8 GiBs", "-1GB", "1.2.3"])
def test_a_size_that_is_not_one_is_refused(text):
    with pytest.raises(ValueError, match=f"{ENV}.*not a size"):
        parse_size(text)


def test_available_memory_and_the_override(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    room, source = available("cpu")
    if os.path.exists("/proc/meminfo"):
        with open("/proc/meminfo") as f:
            listed = next(int(l.split()[1]) * 1024 for l in f if l.startswith("MemAvailable"))
        assert source == "MemAvailable in /proc/meminfo"
        assert abs(room - listed) < 2**30             # it moves a little between reads
    assert available("meta") == (None, "unknown for meta")
    monkeypatch.setenv(ENV, "3GiB")
    assert available("cpu") == (3 * 2**30, f"${ENV}=3GiB")
    monkeypatch.setenv(ENV, "off")
    assert available("cpu")[0] is None


def test_estimates_follow_the_sizes():
    # The case: 200,000 x 64 inputs, 3,000 clusters, 10 heads, the default graph.
    phases = fit_phases(200_000, 64, 3000, 10, width=128, n_neighbors=10, diffusion_steps=40)
    total, needs = peak(phases)
    parts = {need.what: need.nbytes for need in needs}
    assert parts["logits of one head"] == 200_000 * 3000 * 4          # 2.4 GB
    # More clusters than features: the walk runs on the 128 features, not the logits.
    assert parts["diffusion scratch"] == 200_000 * 128 * 4
    knn = {need.what: need.nbytes for need in phases[0]}
    assert knn["k-NN index"] == 200_000 * (64 * 4 + 192)              # beyond 100,000 rows
    small = {need.what: need.nbytes for need in fit_phases(50_000, 64, 3000, 1, 128, 10, 5)[0]}
    assert small["k-NN distance blocks"] == 3 * 2048 * 50_000 * 4
    assert 2.8 * 2**30 < total < 3.3 * 2**30
    # Without graph there is no k-NN phase and no diffusion scratch; heads only add labels.
    bare = fit_phases(200_000, 64, 3000, 10, width=128, n_neighbors=0, diffusion_steps=40)
    assert len(bare) == 1 and peak(bare)[0] < total - 150e6
    one_head = fit_phases(200_000, 64, 3000, 1, width=128, n_neighbors=10, diffusion_steps=40)
    assert peak(one_head)[0] == total - 9 * 200_000 * 8
    # score: one n x K float32 buffer, the features and the solver's warm-up.
    score, _ = peak(score_phases(200_000, 3000, 128))
    assert score < 1.3 * 200_000 * 3000 * 4
    # The solver copies only when it must; a whole-matrix warm-up is its kernel buffer.
    assert (sum(n.nbytes for n in solver_needs(100_000, 1000, copies=True))
            - sum(n.nbytes for n in solver_needs(100_000, 1000))) == 100_000 * 1000 * 4
    assert solver_needs(500, 10, copies=True) == solver_needs(500, 10)


def test_require_says_what_is_needed_what_there_is_and_what_lowers_it(monkeypatch):
    phases = [[Need("a", 2**30, "n_a")], [Need("b", 3 * 2**30, "n_b"), Need("c", 2**20)]]
    monkeypatch.setenv(ENV, "2GiB")
    with pytest.raises(MemoryError) as err:
        require(phases, "cpu", "the task")
    message = str(err.value)
    for part in ("the task", "3.0 GiB", "2.0 GiB is available", f"${ENV}=2GiB",
                 "b 3.0 GiB (lower: n_b)", "c 1.0 MiB", f"{ENV}=32GiB", "'off'"):
        assert part in message, part
    assert "a 1.0 GiB" not in message                   # its phase fits
    monkeypatch.setenv(ENV, "512MiB")
    with pytest.raises(MemoryError, match="b 3.0 GiB .*; a 1.0 GiB .*; c 1.0 MiB"):
        require(phases, "cpu", "the task")             # every phase that does not fit
    monkeypatch.setenv(ENV, "4GiB")
    require(phases, "cpu", "the task")
    monkeypatch.setenv(ENV, "off")
    require([[Need("huge", 2**60)]], "cpu", "the task")
    assert fmt(1536) == "1.5 KiB" and fmt(12) == "12 B"


@pytest.fixture
def blobs():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((3000, 8)) + rng.integers(0, 4, (3000, 1)) * 4).astype("f4")


def test_fit_refuses_what_does_not_fit_before_allocating_it(blobs, monkeypatch):
    # Issue #10, item 2: nothing estimated memory; a fit allocated until the OOM killer came.
    fitted = SelfLabelClusterer(3, max_epochs=1, random_state=0).fit(blobs[:500])
    labels = fitted.labels_.copy()
    monkeypatch.setenv(ENV, "50MB")       # k-NN blocks 70 MiB, label step about 35 MiB
    with pytest.raises(MemoryError, match=r"SelfLabelClusterer.fit would need about \d+\.\d "
                       r"MiB.*47.7 MiB is available.*k-NN distance blocks.*n_neighbors=0"):
        fitted.set_params(n_clusters=500).fit(blobs)
    assert fitted.labels_.shape == (500,) and np.array_equal(fitted.labels_, labels)
    # What the message suggests works: no graph, no k-NN blocks, no diffusion.
    fitted.set_params(n_neighbors=0, max_epochs=1).fit(blobs)
    assert fitted.labels_.shape == (3000,)


def test_score_and_the_solver_check_too(blobs, monkeypatch):
    est = SelfLabelClusterer(50, max_epochs=1, n_neighbors=0, random_state=0).fit(blobs[:400])
    monkeypatch.setenv(ENV, "1MB")
    with pytest.raises(MemoryError, match="SelfLabelClusterer.score.*logits"):
        est.score(blobs)
    z = np.zeros((20_000, 1000), np.float32)
    with pytest.raises(MemoryError, match="sinkhorn_knopp.*kernel \\(a copy of the scores"):
        sinkhorn_knopp(z)
    with pytest.raises(MemoryError, match="sinkhorn_knopp"):
        SinkhornAssigner().fit(z)
    monkeypatch.delenv(ENV)
    assert np.isfinite(est.score(blobs))


def test_read_only_memory_is_recognised(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(bytes(3 * mmap.PAGESIZE + 100))
    with open(path, "r+b") as f:
        ro = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        rw = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_WRITE)
    try:
        for buf, writable in ((ro, False), (rw, True)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")       # torch: "The given NumPy array is not writable"
                t = torch.from_numpy(np.frombuffer(buf, dtype=np.uint8))
            assert is_writable(t) is writable
            assert is_writable(t[mmap.PAGESIZE + 7:]) is writable
            start, stop = t.data_ptr(), t.data_ptr() + t.numel()
            assert _memory._probe_pages(start, stop) is writable     # the non-Linux path
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
    assert _memory._mapped_writable(0x1800, 0x2800, str(maps)) is True     # two mappings
    assert _memory._mapped_writable(0x2800, 0x3800, str(maps)) is False    # a hole
    assert _memory._mapped_writable(0x4800, 0x4900, str(maps)) is False    # read-only
    assert _memory._mapped_writable(0x5800, 0x7000, str(maps)) is False    # runs off the end
    assert _memory._mapped_writable(0, 1, str(tmp_path / "none")) is None
