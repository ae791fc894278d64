"""A process of a data-parallel fit that fails stops the others, which name it: the failing
process's report in the store, the watch that finds it while a process computes, and the
error each process raises (torchrun: tests/integration/test_distributed.py)."""
import threading
import time

import pytest

from skselflabel._runtime import failures
from skselflabel._runtime.failures import ProcessFailedError, SharedFailures, lost_contact
from skselflabel._runtime.interrupt import check_interrupt


class FakeStore:
    """The part of torch.distributed's key-value store the failure reports use."""

    def __init__(self):
        self.values, self.lock = {}, threading.Lock()

    def set(self, key, value):
        with self.lock:
            self.values[key] = value.encode() if isinstance(value, str) else value

    def get(self, key):
        with self.lock:
            return self.values[key]

    def check(self, keys):
        with self.lock:
            return all(key in self.values for key in keys)

    def compare_set(self, key, expected, desired):
        with self.lock:
            if key not in self.values and expected == "":
                self.values[key] = desired.encode()
            return self.values[key]

    def wait(self, keys, timeout):
        deadline = time.monotonic() + timeout.total_seconds()
        while not self.check(keys):
            if time.monotonic() > deadline:
                raise RuntimeError("Socket Timeout")
            time.sleep(0.01)


class FakeTeam:
    rank, world, closed = 0, 2, 0

    def broadcast_(self, tensor, src=0):
        return tensor.fill_(42)

    def close(self):
        self.closed += 1


@pytest.fixture
def store(monkeypatch):
    store = FakeStore()
    monkeypatch.setattr(failures, "_store", lambda: store)
    monkeypatch.setattr(failures, "POLL_SECONDS", 0.02)
    monkeypatch.setattr(failures, "REPORT_SECONDS", 0.2)
    monkeypatch.setattr(failures, "STOP_SECONDS", 0.2)
    return store


PREFIX = "skselflabel/fit/42/"


def test_what_counts_as_lost_contact():
    assert lost_contact(RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:553] "
                                     "Connection closed by peer [127.0.0.1]:20693"))
    assert lost_contact(ProcessFailedError(1, "ValueError: bad", 2, 0))
    assert not lost_contact(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not lost_contact(MemoryError("Connection closed by peer"))


def test_a_process_that_computes_stops_within_a_poll_naming_the_failed_one(store):
    team = FakeTeam()
    began = time.monotonic()
    with pytest.raises(ProcessFailedError) as err:
        with SharedFailures(team):
            # Process 1 fails while this one computes (a solve, checking between steps).
            store.set(PREFIX + "failed", "1\nOutOfMemory: SelfLabelClusterer.fit ran out")
            while True:
                check_interrupt()
                time.sleep(0.001)
    assert time.monotonic() - began < 2
    assert (err.value.rank, err.value.error) == (1, "OutOfMemory: SelfLabelClusterer.fit "
                                                    "ran out")
    assert str(err.value).startswith(
        "Process 1 of this data-parallel fit of 2 processes failed with OutOfMemory: "
        "SelfLabelClusterer.fit ran out\nProcess 0 stopped with it")
    assert store.get(PREFIX + "end/0") == b"stopped" and team.closed == 1
    check_interrupt()                          # outside the fit: nothing to raise


def test_the_failing_process_reports_its_error_and_raises_it(store):
    team = FakeTeam()
    store.set(PREFIX + "end/1", "stopped")     # the other process has stopped
    with pytest.raises(ValueError, match="^bad") as err:
        with SharedFailures(team):
            raise ValueError("bad")
    assert store.get(PREFIX + "failed") == b"0\nValueError: bad"
    assert store.get(PREFIX + "error/0") == b"ValueError: bad"
    assert store.get(PREFIX + "end/0") == b"failed" and team.closed == 1
    assert "the other processes stopped with this error" in err.value.__notes__[0]


def test_a_process_that_loses_contact_without_a_report(store):
    team = FakeTeam()
    with pytest.raises(ProcessFailedError, match="lost contact with another, which stopped "
                       "without reporting an error") as err:
        with SharedFailures(team):
            raise RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer")
    assert err.value.rank is None and team.closed == 1


def test_a_fit_that_ends_well_says_so_and_closes_the_team(store):
    team = FakeTeam()
    with SharedFailures(team):
        pass
    assert store.get(PREFIX + "end/0") == b"done" and team.closed == 1


def test_one_process_does_nothing(store):
    class Solo(FakeTeam):
        world = 1

    with pytest.raises(ValueError):
        with SharedFailures(Solo()):
            raise ValueError("bad")
    assert store.values == {}
