"""Allocation failures turned into a MemoryError that names the call, the step, the estimate,
the limit and what lowers the peak."""
import pytest
import torch

from skselflabel._runtime import allocation
from skselflabel._runtime.allocation import (is_allocation_failure, memory_call, memory_step,
                                             plan, record)
from skselflabel._runtime.limits import ENV
from skselflabel._runtime.memory import Need, OutOfMemory

CPU_FAILURE = ("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate "
               "memory: you tried to allocate 2400000000 bytes. Error code 12 (Cannot "
               "allocate memory)")


def test_what_counts_as_an_allocation_failure():
    assert is_allocation_failure(RuntimeError(CPU_FAILURE))
    assert is_allocation_failure(torch.OutOfMemoryError("CUDA out of memory. Tried to "
                                                        "allocate 2.00 GiB"))
    assert is_allocation_failure(MemoryError())
    assert not is_allocation_failure(OutOfMemory("already said"))
    assert not is_allocation_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_allocation_failure(ValueError("out of memory"))

    class Report(RuntimeError):
        """An error that quotes another's words (a failing process's report)."""

    assert not is_allocation_failure(Report(CPU_FAILURE))


def test_a_failure_in_nested_steps_names_them_the_estimates_and_the_limit(monkeypatch):
    monkeypatch.setenv(ENV, "3GiB")
    phases = [[Need("a", 2**30, "n_a")], [Need("b", 2 * 2**30, "n_b"), Need("c", 2**20)]]
    with pytest.raises(OutOfMemory) as err:
        with memory_call("Thing.fit") as call:
            plan(phases, "cpu", "Thing.fit")
            assert call.phases is phases
            with memory_step("the big step", [Need("buffer", 2**30, "n_buffer")]):
                with memory_step(lambda: "its part 3"):
                    raise RuntimeError(CPU_FAILURE)
    message = str(err.value)
    assert message.startswith(
        "Thing.fit ran out of cpu memory in the big step, its part 3 (RuntimeError: [enforce "
        "fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: you "
        "tried to allocate 2400000000 bytes.")
    for part in ("This step needs about 1.0 GiB: buffer 1.0 GiB (lower: n_buffer).",
                 "The estimate of Thing.fit is 2.0 GiB at its peak: b 2.0 GiB (lower: n_b); "
                 "c 1.0 MiB.",
                 f"The limit: 3.0 GiB available under the tightest, ${ENV}=3GiB."):
        assert part in message, part
    assert isinstance(err.value.__cause__, RuntimeError)
    assert allocation._call.get() is None and allocation._steps.get() == ()


def test_the_call_names_failures_outside_steps_and_inner_calls_change_nothing(monkeypatch):
    monkeypatch.setenv(ENV, "off")
    with pytest.raises(OutOfMemory, match=r"^Thing.predict ran out of cuda memory \("
                       r"OutOfMemoryError: CUDA out of memory.*The estimate of "
                       r"Thing.predict is 1.0 KiB.*none is checked \(\$SKSELFLABEL_"):
        with memory_call("Thing.predict"):
            record([[Need("features", 1024)]], "cuda")
            with memory_call("sinkhorn_knopp") as inner:
                assert inner.name == "Thing.predict"      # the outer call stays
                record([[Need("other", 1)]], "cpu")        # its estimate too
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_errors_that_are_not_allocation_failures_pass_unchanged():
    with pytest.raises(ValueError, match="^bad$"):
        with memory_call("Thing.fit"), memory_step("a step"):
            raise ValueError("bad")
    already = OutOfMemory("would need more")
    with pytest.raises(OutOfMemory) as err:
        with memory_call("Thing.fit"), memory_step("a step"), memory_step("inner"):
            raise already
    assert err.value is already


def test_a_refusal_inside_another_call_names_both(monkeypatch):
    monkeypatch.setenv(ENV, "1KiB")
    with pytest.raises(OutOfMemory, match=r"^sinkhorn_knopp in Thing.fit \(the self-label "
                       r"step, head 2 of 3\) would need about 2.0 KiB"):
        with memory_call("Thing.fit"), memory_step("the self-label step"), \
                memory_step("head 2 of 3"):
            plan([[Need("kernel", 2048)]], "cpu", "sinkhorn_knopp")
