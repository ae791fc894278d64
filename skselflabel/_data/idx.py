"""Reading and writing IDX files, the array format of MNIST and Fashion-MNIST: a magic number
``0x00 0x00 <type> <ndim>``, one big-endian ``int32`` per dimension, then the values."""
import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

# Type codes of the IDX format, mapped to big-endian numpy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# Bytes read at a time: a file is never read further than its header allows plus one byte.
_CHUNK = 1 << 20


def _open(path):
    """The file as a binary stream, un-gzipped when it starts with the gzip signature."""
    f = open(path, "rb")
    if f.read(2) == b"\x1f\x8b":
        f.seek(0)
        return gzip.GzipFile(fileobj=f, mode="rb"), f
    f.seek(0)
    return f, f


def _read_exactly(stream, n_bytes):
    """``n_bytes`` from ``stream`` in chunks (a truncated file gives fewer)."""
    chunks, got = [], 0
    while got < n_bytes:
        chunk = stream.read(min(_CHUNK, n_bytes - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _read_header(stream, path, expected_ndim):
    """(dtype, shape) from the magic number and the dimensions, or a ValueError."""
    magic = _read_exactly(stream, 4)
    if len(magic) < 4:
        raise ValueError(f"{path} is not an IDX file: it has only {len(magic)} bytes.")
    zero0, zero1, type_code, ndim = magic
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_DTYPES:
        raise ValueError(
            f"{path} is not an IDX file: its magic number is 0x{magic.hex()}, "
            "expected 0x0000TTDD (TT a type code such as 08 for unsigned bytes, DD the "
            "number of dimensions). The file is damaged or is not what its name says."
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(
            f"{path} declares {ndim} dimension(s) (magic number 0x{magic.hex()}), "
            f"expected {expected_ndim}: is it an image file swapped with a label file?"
        )
    dims = _read_exactly(stream, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise ValueError(f"{path} is truncated: its header needs {4 + 4 * ndim} bytes.")
    shape = struct.unpack(f">{ndim}i", dims) if ndim else ()
    if any(n < 0 for n in shape):
        raise ValueError(f"{path} is damaged: its header declares a negative dimension, "
                         f"shape {tuple(shape)}.")
    return _IDX_DTYPES[type_code], tuple(shape)


def read_idx(path, *, expected_ndim=None):
    """Read one IDX file (gzipped or not) into a numpy array.

    The header is read first and the values only as far as it declares (and one byte
    more, to tell a file with trailing data): a damaged or hostile file costs no more
    memory than its header admits to.

    Parameters
    ----------
    path : str or path-like
        The file. Gzip compression is recognised by its signature, whatever the name.
    expected_ndim : int, default=None
        When given, the number of dimensions the header must declare (3 for an image
        file, 1 for a label file); anything else is reported as a corrupt file.

    Returns
    -------
    array : ndarray
        The values with the shape the header declares, in native byte order.

    Raises
    ------
    ValueError
        If the magic number is not an IDX magic number, the dimensionality differs from
        `expected_ndim`, a dimension is negative, or the file holds fewer or more values
        than its header declares.

    Examples
    --------
    >>> import tempfile, os
    >>> import numpy as np
    >>> from skselflabel.datasets import read_idx, write_idx
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny-images-idx3-ubyte.gz")
    >>> write_idx(path, np.arange(8, dtype=np.uint8).reshape(2, 2, 2))
    >>> read_idx(path, expected_ndim=3).shape
    (2, 2, 2)
    """
    stream, raw = _open(path)
    try:
        dtype, shape = _read_header(stream, path, expected_ndim)
        n_bytes = math.prod(shape) * dtype.itemsize
        data = _read_exactly(stream, n_bytes)
        extra = _read_exactly(stream, 1)
    except (OSError, EOFError, zlib.error) as exc:
        if stream is raw:
            raise
        # A truncated download or a damaged disk: say which file, not just "bad gzip".
        raise ValueError(
            f"{path} starts like a gzip file but cannot be decompressed ({exc}); "
            "the file is damaged: reinstall or re-copy it."
        ) from exc
    finally:
        stream.close()
        raw.close()
    if len(data) != n_bytes or extra:
        held = f"{len(data)}" if not extra else f"more than {n_bytes}"
        raise ValueError(
            f"{path} is damaged: its header declares shape {shape} "
            f"({n_bytes} bytes of values) but it holds {held}."
        )
    # A copy, in native byte order: users expect an ordinary, writable array.
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path, array):
    """Write an unsigned-byte array as an IDX file, gzipped when the name ends in ``.gz``.

    Parameters
    ----------
    path : str or path-like
        The file to write.
    array : array-like of uint8
        Values in 0..255, any number of dimensions (1 for labels, 3 for images).

    Raises
    ------
    ValueError
        If a value would change on the way to an unsigned byte: outside 0..255, not a
        whole number, NaN or inf (they are refused, never cast), or not a number at all.

    Examples
    --------
    >>> import tempfile, os
    >>> import numpy as np
    >>> from skselflabel.datasets import read_idx, write_idx
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny-labels-idx1-ubyte")
    >>> write_idx(path, np.array([3, 1, 4], dtype=np.uint8))
    >>> read_idx(path)
    array([3, 1, 4], dtype=uint8)
    """
    array = np.asarray(array)
    if array.dtype != np.uint8:
        _check_bytes(array)
        array = array.astype(np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + np.ascontiguousarray(array).tobytes()
    if str(path).endswith(".gz"):
        # mtime=0 keeps the output byte-identical between runs.
        payload = gzip.compress(payload, mtime=0)
    Path(path).write_bytes(payload)


def _check_bytes(array):
    """Refuse values that unsigned bytes would change: fractions, NaN, out of 0..255."""
    if array.dtype.kind not in "biuf":
        raise ValueError(f"write_idx writes unsigned bytes; got values of dtype {array.dtype}.")
    if not array.size:
        return
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValueError("write_idx writes unsigned bytes; the values hold NaN or inf.")
        if not np.array_equal(array, np.rint(array)):
            raise ValueError(
                "write_idx writes unsigned bytes; the values are not whole numbers (e.g. "
                f"{array[array != np.rint(array)].flat[0]}). Round them first (np.rint) if "
                "that is what you mean.")
    if array.min() < 0 or array.max() > 255:
        raise ValueError(
            "write_idx writes unsigned bytes: values must lie in 0..255, "
            f"got min {array.min()} and max {array.max()}."
        )
