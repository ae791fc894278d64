"""Whether memory can be written: torch does not know when a tensor wraps read-only memory
(a read-only memory map), and writing there crashes the process."""
import os


def is_writable(tensor):
    """Whether the memory under a contiguous CPU tensor can be written.

    torch does not record that a tensor wraps read-only memory (``torch.from_numpy`` of a
    read-only memory map, for instance), and writing there kills the process with a
    segmentation fault. On Linux the process's own memory map says; on other POSIX
    systems the kernel is asked page by page (:func:`_probe_pages`); elsewhere (Windows)
    the memory is taken as writable.

    Memory torch allocated itself (a resizable storage: ``torch.empty``, a network's
    outputs, shared memory) is writable: reading the process's map, which torch's many
    libraries make long, would cost more than a small self-label step.
    """
    if tensor.untyped_storage().resizable():
        return True
    start = tensor.data_ptr()
    stop = start + tensor.numel() * tensor.element_size()
    if stop <= start:
        return True
    verdict = _mapped_writable(start, stop)
    if verdict is None and hasattr(os, "readv"):
        verdict = _probe_pages(start, stop)
    return True if verdict is None else verdict


def _mapped_writable(start, stop, maps="/proc/self/maps"):
    """Whether ``[start, stop)`` lies in writable mappings, per ``maps``; None without it."""
    try:
        with open(maps) as f:
            lines = f.readlines()
    except OSError:
        return None
    covered = start
    for line in lines:
        bounds, perms = line.split()[:2]
        lo, hi = (int(x, 16) for x in bounds.split("-"))
        if hi <= covered or lo >= stop:
            continue
        if lo > covered or "w" not in perms:     # a hole, or a mapping we may not write
            return False
        covered = hi
        if covered >= stop:
            return True
    return False


def _probe_pages(start, stop):
    """Whether every page of ``[start, stop)`` can be written, asked of the kernel.

    One byte of each page goes into a pipe and is read back into place: ``readv`` fails
    with EFAULT (or stops short) at a page that cannot be written, where a store from
    Python would crash. The bytes written back are the bytes that were there.
    """
    import ctypes

    page = os.sysconf("SC_PAGE_SIZE")
    batch = max(1, os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024)
    addresses = [start] + list(range((start // page + 1) * page, stop, page))
    read_fd, write_fd = os.pipe()
    try:
        for i in range(0, len(addresses), batch):
            cells = [(ctypes.c_char * 1).from_address(a) for a in addresses[i:i + batch]]
            os.write(write_fd, b"".join(bytes(cell) for cell in cells))
            try:
                if os.readv(read_fd, cells) != len(cells):
                    return False
            except OSError:
                return False
    finally:
        os.close(read_fd)
        os.close(write_fd)
    return True
