"""Disk faults injected into checkpoint writes (in place of ``open`` in the writer's module):
a disk that fills up half-way through a write, a folder that may not be written."""
import builtins
import errno
import os


class HalfWritten:
    """A file that takes half of the first large write (past the frame's header), then
    fails with the OSError ``code``."""

    def __init__(self, file, code):
        self.file, self.code = file, code

    def write(self, data):
        if len(data) < 1000:
            return self.file.write(data)
        self.file.write(bytes(data[:len(data) // 2]))
        raise OSError(self.code, os.strerror(self.code))

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def failing_open(code, at=1):
    """An ``open`` whose ``at``-th opening for writing fails with ``code``: at once for
    EACCES (no permission), half-way through the data for any other (ENOSPC, EIO)."""
    openings = []

    def open_(file, mode="r", *args, **kwargs):
        if "w" in mode:
            openings.append(file)
        if len(openings) != at or "w" not in mode:
            return builtins.open(file, mode, *args, **kwargs)
        if code == errno.EACCES:
            raise PermissionError(code, os.strerror(code), str(file))
        return HalfWritten(builtins.open(file, mode, *args, **kwargs), code)

    return open_
