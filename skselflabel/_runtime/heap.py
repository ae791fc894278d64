"""Freed heap memory handed back to the operating system after a phase whose temporary
buffers are not needed again at that size: glibc otherwise keeps them in the process."""
import ctypes
import sys


def release_free_heap():
    """Ask the C allocator to return the freed parts of its heap to the system (glibc's
    ``malloc_trim``).

    Without it, the many buffers of a phase that are freed (the neighbour search's chunks
    of distances, for example) stay in the process's resident memory until the allocator
    reuses them. Returns True when the call was made, False where the C library has no
    such call (macOS, Windows, musl): nothing else changes there.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True
