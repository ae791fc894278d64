"""The memory check before large allocations: sizes, what is available, the refusal."""
import os

import numpy as np
import pytest

from skselflabel import SelfLabelClusterer, SinkhornAssigner, sinkhorn_knopp
from skselflabel._runtime.memory import ENV, Need, available, fmt, parse_size, require


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
        # The tightest limit: MemAvailable, or a cgroup or resource limit below it
        # (tests/runtime/test_limits.py checks each); it moves a little between reads.
        assert room < listed + 2**30 and source
    assert available("meta") == (None, "unknown for meta")
    monkeypatch.setenv(ENV, "3MiB")                 # below any real limit: it applies
    assert available("cpu") == (3 * 2**20, f"${ENV}=3MiB")
    monkeypatch.setenv(ENV, "off")
    assert available("cpu")[0] is None


def test_require_says_what_is_needed_what_there_is_and_what_lowers_it(monkeypatch):
    phases = [[Need("a", 2**30, "n_a")], [Need("b", 3 * 2**30, "n_b"), Need("c", 2**20)]]
    monkeypatch.setenv(ENV, "2GiB")
    with pytest.raises(MemoryError) as err:
        require(phases, "cpu", "the task")
    message = str(err.value)
    for part in ("the task", "3.0 GiB", "2.0 GiB is available", f"${ENV}=2GiB",
                 "b 3.0 GiB (lower: n_b)", "c 1.0 MiB", f"{ENV} to 'off'"):
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


def test_score_and_the_solver_check_too(blobs, monkeypatch):
    est = SelfLabelClusterer(50, max_epochs=1, n_neighbors=0, random_state=0).fit(blobs[:400])
    monkeypatch.setenv(ENV, "1MB")
    with pytest.raises(MemoryError, match="SelfLabelClusterer.score.*k-NN"):
        est.score(blobs)
    z = np.zeros((20_000, 1000), np.float32)
    with pytest.raises(MemoryError, match="sinkhorn_knopp.*kernel \\(a copy of the scores"):
        sinkhorn_knopp(z)
    with pytest.raises(MemoryError, match="sinkhorn_knopp"):
        SinkhornAssigner().fit(z)
    monkeypatch.delenv(ENV)
    assert np.isfinite(est.score(blobs))


def test_the_errors_page_shows_the_message_the_estimator_gives(monkeypatch):
    # docs/errors.md quotes a MemoryError; it must be today's, word for word.
    import re
    from pathlib import Path

    import numpy as np

    from skselflabel import SelfLabelClusterer

    page = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text()
    quoted = re.search(r"<!-- BEGIN memory-example[^>]*-->\n```text\n(.*?)```", page,
                       flags=re.S).group(1)
    monkeypatch.setenv("SKSELFLABEL_MEMORY_LIMIT", "2GiB")
    X = np.random.default_rng(0).random((200_000, 64), dtype=np.float32)
    with pytest.raises(MemoryError) as caught:
        SelfLabelClusterer(n_clusters=3000, n_heads=10, device="cpu").fit(X)
    assert " ".join(quoted.split()) == " ".join(str(caught.value).split())


def test_small_steps_do_not_read_the_machine_limits(monkeypatch):
    from skselflabel._runtime import limits
    from skselflabel._runtime.memory import UNCHECKED_BELOW

    def unread(*args, **kwargs):
        raise AssertionError("the machine's limits were read")

    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(limits, "limits", unread)
    require([[Need("small", UNCHECKED_BELOW - 1)]], "cpu", "the task")
    with pytest.raises(AssertionError, match="limits were read"):
        require([[Need("large", UNCHECKED_BELOW)]], "cpu", "the task")
    monkeypatch.undo()
    monkeypatch.setenv(ENV, "1KiB")                  # an explicit limit always applies
    with pytest.raises(MemoryError, match="1.0 KiB is available"):
        require([[Need("small", 2048)]], "cpu", "the task")
