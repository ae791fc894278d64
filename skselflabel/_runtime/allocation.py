"""Allocation failures inside a call (torch's CPU allocator, CUDA out of memory, MemoryError)
become an :class:`~.memory.OutOfMemory` that names the step, its estimate, the limit that
applied and the parameters that lower the peak."""
from contextvars import ContextVar
from dataclasses import dataclass
import functools

import torch

from . import limits
from .limits import ENV, fmt
from .memory import OutOfMemory, largest_parts, peak, require

# How torch's CPU allocator (and faiss) word an allocation failure raised as RuntimeError.
ALLOCATION_WORDS = ("DefaultCPUAllocator", "can't allocate memory", "not enough memory",
                    "out of memory", "bad_alloc", "Cannot allocate memory")
# Characters of the original error quoted in the message.
QUOTED_CHARS = 300

_call = ContextVar("skselflabel_memory_call", default=None)
_steps = ContextVar("skselflabel_memory_steps", default=())


@dataclass
class Call:
    """The public call in progress (``"SelfLabelClusterer.fit"``), its device and its
    memory estimate (phases of needs, as for :func:`~.memory.require`)."""

    name: str
    device: object = None
    phases: list = None


def is_allocation_failure(exc):
    """Whether ``exc`` says that an allocation failed (not an :class:`OutOfMemory` already,
    nor another error that quotes one, such as a failing process's report)."""
    if isinstance(exc, OutOfMemory):
        return False
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    return type(exc) is RuntimeError and any(word in str(exc) for word in ALLOCATION_WORDS)


class memory_call:
    """Name the public call whose steps run in the ``with`` block, so that an allocation
    failure there, in a named step or not, becomes an :class:`OutOfMemory` naming it.
    Inside another call (the solver within a fit) it changes nothing; the ``with`` gives
    the :class:`Call` in force."""

    def __init__(self, name, device=None):
        self.call, self.token = Call(name, device), None

    def __enter__(self):
        outer = _call.get()
        if outer is not None:
            return outer
        self.token = _call.set(self.call)
        return self.call

    def __exit__(self, kind, exc, traceback):
        if self.token is None:
            return False
        try:
            if exc is not None and is_allocation_failure(exc):
                raise out_of_memory(exc, ()) from exc
        finally:
            _call.reset(self.token)
            self.token = None
        return False


def reports_memory_failures(method):
    """Run an estimator method as a :class:`memory_call` named after it."""

    @functools.wraps(method)
    def in_memory_call(self, *args, **kwargs):
        with memory_call(f"{type(self).__name__}.{method.__name__}"):
            return method(self, *args, **kwargs)

    return in_memory_call


class memory_step:
    """A large step of the current call (``name``: words, or a function giving them, called
    only on failure); an allocation failure in it becomes an :class:`OutOfMemory` naming it,
    with its own ``needs`` (a list of Need, or a function giving one) when given. Steps
    nest: the message names each, outermost first."""

    __slots__ = ("name", "needs", "token")

    def __init__(self, name, needs=None):
        self.name, self.needs, self.token = name, needs, None

    def __enter__(self):
        self.token = _steps.set(_steps.get() + (self,))
        return self

    def __exit__(self, kind, exc, traceback):
        try:
            if exc is not None and is_allocation_failure(exc):
                raise out_of_memory(exc, _steps.get()) from exc
        finally:
            _steps.reset(self.token)
            # The context variable's cache may keep this step: it must not keep what its
            # words come from (a trainer, and the process group it trains over).
            self.name = self.needs = self.token = None
        return False


def record(phases, device):
    """Keep ``phases`` as the current call's memory estimate, unless it has one (a fit's
    estimate stays while its solver runs)."""
    call = _call.get()
    if call is not None and call.phases is None:
        call.phases, call.device = phases, device


def plan(phases, device, task):
    """:func:`record` the estimate ``phases``, then refuse it with an OutOfMemory when its
    peak exceeds the tightest limit (:func:`~.memory.require`); ``task`` names the step,
    and the call and steps it runs in when they are others (the solver in a fit)."""
    record(phases, device)
    call = _call.get()
    if call is not None and call.name != task:
        where = ", ".join(str(_evaluate(step.name)) for step in _steps.get())
        task = f"{task} in {call.name}" + (f" ({where})" if where else "")
    require(phases, device, task)


def _evaluate(value):
    return value() if callable(value) else value


def _limit_words(device):
    try:
        found = limits.limits(device)
    except ValueError as exc:          # a malformed $SKSELFLABEL_MEMORY_LIMIT
        return str(exc)
    if found is None:
        return f"none is checked (${ENV}=off)"
    if not found:
        return f"unknown for {device.type}"
    limit = min(found, key=lambda limit: limit.nbytes)
    return f"{fmt(limit.nbytes)} available under the tightest, {limit.source}"


def out_of_memory(exc, steps):
    """The :class:`OutOfMemory` that replaces the allocation failure ``exc`` in ``steps``
    (outermost first) of the current call."""
    call = _call.get() or Call("skselflabel")
    device = torch.device(call.device if call.device is not None else
                          "cuda" if "CUDA" in str(exc) else "cpu")
    where = ", ".join(str(_evaluate(step.name)) for step in steps)
    said = (str(exc).strip().splitlines() or [""])[0][:QUOTED_CHARS].rstrip(". ")
    text = (f"{call.name} ran out of {device.type} memory" + (f" in {where}" if where else "")
            + f" ({type(exc).__name__}: {said or 'no message'}).")
    needs = next((_evaluate(step.needs) for step in reversed(steps)
                  if step.needs is not None), None)
    if needs:
        text += (f" This step needs about {fmt(sum(need.nbytes for need in needs))}: "
                 f"{largest_parts([needs], -1, count=len(needs))}.")
    if call.phases:
        total, phase = peak(call.phases)
        # Its parts, unless the step's own list already shows the largest of them.
        shown = needs and max(phase, key=lambda need: need.nbytes) in needs
        text += f" The estimate of {call.name} is {fmt(total)} at its peak" + (
            "." if shown else f": {largest_parts([phase], -1)}.")
    text += (f" The limit: {_limit_words(device)}. Lower the parameters named; memory "
             "that the estimate does not count (a custom backbone's activations, other data "
             "of the process) may have taken the rest.")
    return OutOfMemory(text)
