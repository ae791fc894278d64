"""The limits on the memory a process may take: the host's free memory, its cgroup's limit (v1
or v2), its resource limits (``ulimit -v``), ``SKSELFLABEL_MEMORY_LIMIT`` and, on CUDA, the
device's free memory; the memory check holds an estimate against the tightest."""
from dataclasses import dataclass
import os
from pathlib import Path
import re

import torch

ENV = "SKSELFLABEL_MEMORY_LIMIT"
# Where /proc and the cgroup mounts are read from: "/" but in tests, which point it at a
# fake tree (the cgroup folders of v1 and v2, /proc/self/...).
ROOT = "/"
# cgroup v1 writes "no limit" as the largest page-aligned 64-bit value; anything this big
# is no limit either.
UNLIMITED = 2**60

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "tib": 2**40}


@dataclass(frozen=True)
class Limit:
    """Memory a step may still allocate (``nbytes``) under one limit, and that limit in
    words (``source``)."""

    nbytes: int
    source: str


def parse_size(text):
    """Bytes from ``"8GiB"``, ``"500 MB"``, ``"2e9"`` or ``"123456"`` (a ValueError else)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
        raise ValueError(f"${ENV}={text!r} is not a size: use bytes or a number with a unit "
                         "such as 8GiB or 500MB, or 'off' to turn the memory check off.")
    return int(float(match.group(1)) * _UNITS[unit])


def fmt(nbytes):
    """``nbytes`` in the largest binary unit that keeps it at least 1 (``"2.4 GiB"``)."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} B"


def _read(path):
    """The text of ``path``, or None where it cannot be read."""
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _under(root, path):
    """``path`` (absolute, as the process sees it) inside the tree ``root``."""
    return Path(root, str(path).lstrip("/"))


def _kib_field(text, name):
    """The value of a ``Name:   1234 kB`` line of a /proc file, in bytes (None if absent)."""
    match = re.search(rf"^{name}:\s+(\d+)\s*kB", text or "", re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def mem_available(root=None):
    """``MemAvailable`` of /proc/meminfo, or None where there is no such file."""
    nbytes = _kib_field(_read(_under(root or ROOT, "/proc/meminfo")), "MemAvailable")
    return None if nbytes is None else Limit(nbytes, "MemAvailable in /proc/meminfo")


def resource_limits(root=None, getrlimit=None):
    """``RLIMIT_AS`` (``ulimit -v``) and ``RLIMIT_DATA`` (``ulimit -d``) less what the
    process already maps under each (``VmSize``, ``VmData`` of /proc/self/status)."""
    if getrlimit is None:
        try:
            import resource
        except ImportError:      # Windows
            return []
        getrlimit = {"RLIMIT_AS": lambda: resource.getrlimit(resource.RLIMIT_AS)[0],
                     "RLIMIT_DATA": lambda: resource.getrlimit(resource.RLIMIT_DATA)[0]}
    status = _read(_under(root or ROOT, "/proc/self/status"))
    found = []
    for name, field, ulimit in (("RLIMIT_AS", "VmSize", "-v"), ("RLIMIT_DATA", "VmData", "-d")):
        soft = getrlimit[name]()
        if soft is None or soft < 0 or soft >= UNLIMITED:   # RLIM_INFINITY is -1
            continue
        used = _kib_field(status, field) or 0
        found.append(Limit(max(0, soft - used),
                           f"{name} (ulimit {ulimit}) of {fmt(soft)}, of which the process "
                           f"maps {fmt(used)} ({field})"))
    return found


def _own_cgroups(root):
    """``(version, path)`` of the process's own memory cgroups, from /proc/self/cgroup:
    version 1 for the ``memory`` controller's hierarchy, 2 for the unified one."""
    found = []
    for line in (_read(_under(root, "/proc/self/cgroup")) or "").splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            found.append((2, path))
        elif "memory" in controllers.split(","):
            found.append((1, path))
    return found


def _mounts(root):
    """``(version, mount root, mount point)`` of the cgroup file systems, from
    /proc/self/mountinfo (v1 ones only where they carry the memory controller)."""
    found = []
    for line in (_read(_under(root, "/proc/self/mountinfo")) or "").splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if dash < 5 or len(fields) < dash + 3:
            continue
        kind, options = fields[dash + 1], fields[dash + 3].split(",")
        if kind == "cgroup2":
            found.append((2, fields[3], fields[4]))
        elif kind == "cgroup" and "memory" in options:
            found.append((1, fields[3], fields[4]))
    return found


def _cgroup_folder(root, mount_root, mount_point, path):
    """The folder of cgroup ``path`` under a mount of the hierarchy's ``mount_root``."""
    if mount_root != "/" and (path + "/").startswith(mount_root.rstrip("/") + "/"):
        path = path[len(mount_root.rstrip("/")):]       # a container's own part
    elif mount_root != "/":
        path = "/"                                        # a cgroup namespace: its root
    return _under(root, mount_point) / path.lstrip("/")


def _number(text):
    text = (text or "").strip()
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= UNLIMITED else value


def _stat_field(folder, names):
    """The first of ``names`` found in ``folder``'s memory.stat (bytes), or 0."""
    stat = dict(line.split()[:2] for line in (_read(folder / "memory.stat") or "").splitlines()
                if len(line.split()) >= 2)
    for name in names:
        if name in stat and stat[name].isdigit():
            return int(stat[name])
    return 0


# Per version: the limit file, the usage file, and the memory.stat field of the page cache
# the kernel reclaims before it fails an allocation (what `docker stats` and the kubelet
# leave out of a container's usage).
_FILES = {1: ("memory.limit_in_bytes", "memory.usage_in_bytes",
              ("total_inactive_file", "inactive_file")),
          2: ("memory.max", "memory.current", ("inactive_file",))}


def cgroup_limits(root=None):
    """The limit of each memory cgroup the process is in (and of the cgroups above it, whose
    limits apply too) less the cgroup's usage, for cgroup v1 and v2."""
    root = root or ROOT
    mounts = _mounts(root)
    found = []
    for version, path in _own_cgroups(root):
        limit_file, usage_file, reclaimable = _FILES[version]
        for mount_version, mount_root, mount_point in mounts:
            if mount_version != version:
                continue
            folder = _cgroup_folder(root, mount_root, mount_point, path)
            top = _under(root, mount_point)
            while True:
                limit = _number(_read(folder / limit_file))
                if limit is not None:
                    usage = _number(_read(folder / usage_file)) or 0
                    usage = max(0, usage - _stat_field(folder, reclaimable))
                    shown = "/" + str(folder.relative_to(top)).lstrip(".")
                    found.append(Limit(max(0, limit - usage), (
                        f"the memory limit of cgroup v{version} {shown!r} ({limit_file}) of "
                        f"{fmt(limit)}, of which {fmt(usage)} is in use")))
                if folder == top or top not in folder.parents:
                    break
                folder = folder.parent
            break
    return found


def cuda_free(device):
    """The free memory of CUDA ``device``, and what torch's caching allocator holds unused."""
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return Limit(free + cached, f"free memory of {device}")


def limits(device, root=None):
    """Every limit that applies to allocations on ``device`` (none: unknown), or None when
    ``SKSELFLABEL_MEMORY_LIMIT=off`` turns the check off."""
    text = os.environ.get(ENV, "").strip()
    if text.lower() == "off":
        return None
    found = [Limit(parse_size(text), f"${ENV}={text}")] if text else []
    device = torch.device(device)
    if device.type == "cuda":
        found.append(cuda_free(device))
    elif device.type == "cpu":
        found += [limit for limit in [mem_available(root)] if limit is not None]
        found += cgroup_limits(root) + resource_limits(root)
    return found


def tightest(device, root=None):
    """The :class:`Limit` with the least room on ``device``; None when none is known or the
    check is turned off."""
    found = limits(device, root)
    return min(found, key=lambda limit: limit.nbytes) if found else None
