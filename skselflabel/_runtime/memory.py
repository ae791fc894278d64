"""Memory: what a step will allocate (:class:`Need`, estimated by the step's own module) held
against the tightest limit of the device (:mod:`.limits`), before the step allocates it
(:func:`require`); the "Memory" section of docs/errors.md says which limits count."""
from dataclasses import dataclass
import os

import torch

from . import limits
from .limits import ENV, fmt, parse_size  # noqa: F401  (their home is limits)

# Sizes of what is allocated.
FLOAT32, FLOAT64, INT64 = 4, 8, 8
# Steps smaller than this are held only against an explicit $SKSELFLABEL_MEMORY_LIMIT:
# reading the machine's limits (several /proc and cgroup files) takes longer than such a
# step (a small table's self-label step), and if so little cannot be allocated the failure
# still becomes an explained OutOfMemory (skselflabel._runtime.allocation).
UNCHECKED_BELOW = 16 * 2**20


class OutOfMemory(MemoryError):
    """A step would need more memory than its limits leave (:func:`require`), or ran out of
    it (:mod:`skselflabel._runtime.allocation`); the message says which step, what it
    needs, which limit applied and what lowers the peak."""


@dataclass(frozen=True)
class Need:
    """One allocation: what it holds, its size in bytes, and what makes it smaller."""

    what: str
    nbytes: int
    lower: str = ""


def peak(phases):
    """(bytes, needs) of the phase that needs the most."""
    return max(((sum(need.nbytes for need in phase), phase) for phase in phases),
               key=lambda item: item[0])


def available(device):
    """``(bytes, source)``: memory free for new allocations on ``device`` under the tightest
    of its limits (:func:`skselflabel._runtime.limits.tightest`).

    ``bytes`` is None when it is unknown or the check is turned off; ``source`` names the
    limit that applied (or says why there is none).
    """
    found = limits.limits(device)
    if found is None:
        return None, f"${ENV}=off"
    if not found:
        return None, f"unknown for {torch.device(device).type}"
    limit = min(found, key=lambda limit: limit.nbytes)
    return limit.nbytes, limit.source


def require(phases, device, task):
    """Raise a :class:`MemoryError` when the peak of ``phases`` exceeds what is available.

    Parameters
    ----------
    phases : list of list of Need
        What the step allocates, phase by phase (each a list of needs alive at once).
    device : torch.device or str
        Where the step allocates.
    task : str
        The step, as the user called it (``"SelfLabelClusterer.fit"``).

    Steps below ``UNCHECKED_BELOW`` bytes are checked only against an explicit
    ``$SKSELFLABEL_MEMORY_LIMIT``.
    """
    total, _ = peak(phases)
    if total < UNCHECKED_BELOW and not os.environ.get(ENV, "").strip():
        return
    room, source = available(device)
    if room is None or total <= room:
        return
    raise OutOfMemory(
        f"{task} would need about {fmt(total)} of {torch.device(device).type} memory at its "
        f"peak, but {fmt(room)} is available (the tightest limit: {source}). Largest parts: "
        f"{largest_parts(phases, room)}. Lower the parameters named; or, if the limit is "
        f"wrong, set the environment variable {ENV} to 'off' to skip this check.")


def largest_parts(phases, room, count=5):
    """The ``count`` largest needs of every phase that does not fit in ``room`` bytes, with
    what lowers them: lowering only the peak phase's would just move the error to the next
    one."""
    parts = {}
    for phase in phases:
        if sum(need.nbytes for need in phase) > room:
            for need in phase:
                if 0 < need.nbytes and need.nbytes > parts.get(need.what, Need("", 0)).nbytes:
                    parts[need.what] = need
    largest = sorted(parts.values(), key=lambda need: -need.nbytes)[:count]
    return "; ".join(f"{need.what} {fmt(need.nbytes)}"
                     + (f" (lower: {need.lower})" if need.lower else "") for need in largest)
