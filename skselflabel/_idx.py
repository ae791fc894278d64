"""Reading and writing IDX files, the array format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number, one big-endian ``int32`` per dimension, then the values
in C order. The magic number is two zero bytes, a type code and the number of dimensions::

    0x00 0x00 <type> <ndim>

Only the unsigned-byte type (code ``0x08``) is used by the image data sets, so it is the
only one written here; reading also accepts the other documented types.
"""
import gzip
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


def _read_bytes(path):
    """The file's bytes, un-gzipped when it starts with the gzip signature."""
    raw = Path(path).read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        # A truncated download or a damaged disk: say which file, not just "bad gzip".
        raise ValueError(
            f"{path} starts like a gzip file but cannot be decompressed ({exc}); "
            "the file is damaged: reinstall or re-copy it."
        ) from exc


def read_idx(path, *, expected_ndim=None):
    """Read one IDX file (gzipped or not) into a numpy array.

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
        `expected_ndim`, or the file holds fewer or more values than its header declares.

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
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path} is not an IDX file: it has only {len(data)} bytes.")
    zero0, zero1, type_code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_DTYPES:
        raise ValueError(
            f"{path} is not an IDX file: its magic number is 0x{data[:4].hex()}, "
            "expected 0x0000TTDD (TT a type code such as 08 for unsigned bytes, DD the "
            "number of dimensions). The file is damaged or is not what its name says."
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(
            f"{path} declares {ndim} dimension(s) (magic number 0x{data[:4].hex()}), "
            f"expected {expected_ndim}: is it an image file swapped with a label file?"
        )
    header_end = 4 + 4 * ndim
    if len(data) < header_end:
        raise ValueError(f"{path} is truncated: its header needs {header_end} bytes.")
    shape = struct.unpack(f">{ndim}i", data[4:header_end]) if ndim else ()
    dtype = _IDX_DTYPES[type_code]
    n_values = int(np.prod(shape, dtype=np.int64))
    n_bytes = len(data) - header_end
    if n_bytes != n_values * dtype.itemsize:
        raise ValueError(
            f"{path} is damaged: its header declares shape {tuple(shape)} "
            f"({n_values * dtype.itemsize} bytes of values) but it holds {n_bytes}."
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_end).reshape(shape)
    # frombuffer gives a read-only view of the bytes; users expect an ordinary array.
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path, array):
    """Write an unsigned-byte array as an IDX file, gzipped when the name ends in ``.gz``.

    Parameters
    ----------
    path : str or path-like
        The file to write.
    array : array-like of uint8
        Values in 0..255, any number of dimensions (1 for labels, 3 for images).

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
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(
                "write_idx writes unsigned bytes: values must lie in 0..255, "
                f"got min {array.min()} and max {array.max()}."
            )
        array = array.astype(np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + np.ascontiguousarray(array).tobytes()
    if str(path).endswith(".gz"):
        # mtime=0 keeps the output byte-identical between runs.
        payload = gzip.compress(payload, mtime=0)
    Path(path).write_bytes(payload)
