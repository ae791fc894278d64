"""Memory: what a step will allocate (:class:`Need`, estimated by the step's own module) held
against what the device has, before the step allocates it (:func:`require`); the user
guide's "Memory" section says what "available" means and how to override it."""
from dataclasses import dataclass
import os
import re

import torch

ENV = "SKSELFLABEL_MEMORY_LIMIT"

# Sizes of what is allocated.
FLOAT32, FLOAT64, INT64 = 4, 8, 8

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "tib": 2**40}


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


def parse_size(text):
    """Bytes from ``"8GiB"``, ``"500 MB"``, ``"2e9"`` or ``"123456"`` (a ValueError else)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
        raise ValueError(f"${ENV}={text!r} is not a size: use bytes or a number with a unit "
                         "such as 8GiB or 500MB, or 'off' to turn the memory check off.")
    return int(float(match.group(1)) * _UNITS[unit])


def _mem_available():
    """MemAvailable of /proc/meminfo in bytes, or None where there is no such file."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available(device):
    """``(bytes, source)``: memory free for new allocations on ``device``.

    ``bytes`` is None when it is unknown or the check is turned off; ``source`` says where
    the number comes from (or why there is none).
    """
    limit = os.environ.get(ENV, "").strip()
    if limit.lower() == "off":
        return None, f"${ENV}=off"
    if limit:
        return parse_size(limit), f"${ENV}={limit}"
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached, f"free memory of {device}"
    if device.type == "cpu":
        return _mem_available(), "MemAvailable in /proc/meminfo"
    return None, f"unknown for {device.type}"


def fmt(nbytes):
    """``nbytes`` in the largest binary unit that keeps it at least 1 (``"2.4 GiB"``)."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} B"


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
    """
    total, _ = peak(phases)
    room, source = available(device)
    if room is None or total <= room:
        return
    # The largest parts of every phase that does not fit: lowering only the peak phase's
    # would just move the error to the next one.
    parts = {}
    for phase in phases:
        if sum(need.nbytes for need in phase) > room:
            for need in phase:
                if need.nbytes > parts.get(need.what, Need("", -1)).nbytes:
                    parts[need.what] = need
    largest = sorted(parts.values(), key=lambda need: -need.nbytes)[:5]
    parts = "; ".join(f"{need.what} {fmt(need.nbytes)}"
                      + (f" (lower: {need.lower})" if need.lower else "") for need in largest)
    raise MemoryError(
        f"{task} would need about {fmt(total)} of {torch.device(device).type} memory at its "
        f"peak, but {fmt(room)} is available ({source}). Largest parts: {parts}. Lower the "
        f"parameters named, or set the environment variable {ENV} to the memory the step "
        f"may use (e.g. {ENV}=32GiB), or to 'off' to skip this check.")
