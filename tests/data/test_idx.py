"""IDX files that are damaged, hostile or not what they claim, and lossless writing."""
import gzip
import struct
import tracemalloc

import numpy as np
import pytest

from skselflabel import datasets
from skselflabel.datasets import FASHION_MNIST_ENV, load_fashion_mnist, read_idx, write_idx


@pytest.fixture(autouse=True)
def no_system_files(monkeypatch, tmp_path):
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    empty = tmp_path / "no-system-files"
    empty.mkdir()
    monkeypatch.setattr(datasets, "_SYSTEM_DIR", empty)


def _header(*shape, type_code=0x08):
    return struct.pack(f">BBBB{len(shape)}i", 0, 0, type_code, len(shape), *shape)


def test_an_inflating_gzip_is_stopped_at_what_its_header_declares(tmp_path):
    # Issue #10, item 6: a small gzip whose header declares 784 bytes but which inflates to
    # far more was read whole (1.5 GiB of memory for 768 MiB) before the error.
    path = tmp_path / "bomb-images-idx3-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(_header(1, 28, 28))
        for _ in range(64):
            f.write(bytes(1 << 20))                 # 64 MiB of zeros, ~64 KiB on disk
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"declares shape \(1, 28, 28\).*more than 784"):
            read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_a_raw_file_with_trailing_data_is_refused(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(_header(2, 3) + bytes(6) + b"\x00")
    with pytest.raises(ValueError, match="more than 6"):
        read_idx(path)


@pytest.mark.parametrize("shape", [(-1, 28, 28), (2, -28, 28), (3, 28, -5)])
def test_negative_dimensions_are_named(tmp_path, shape):
    # Issue #10, item 4: a negative dimension gave a numpy reshape error.
    path = tmp_path / "neg"
    path.write_bytes(_header(*shape) + bytes(100))
    with pytest.raises(ValueError, match=r"negative dimension, shape \(" + str(shape[0])):
        read_idx(path)


@pytest.mark.parametrize("n, size, match", [
    (0, (28, 28), "holds no images"),              # was numpy's "cannot reshape array"
    (4, (5, 7), "images of 5 x 7 pixels.*28 x 28"),  # was accepted as Fashion-MNIST
])
def test_images_that_are_not_fashion_mnist_are_refused(tmp_path, n, size, match):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((n, *size), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(n, np.uint8))
    with pytest.raises(ValueError, match=match):
        load_fashion_mnist(tmp_path, split="test")


def test_a_missing_data_home_is_an_error_naming_it(tmp_path, monkeypatch):
    # Issue #10, item 4: load_fashion_mnist("fashion-mnst") quietly loaded the system copy.
    system = tmp_path / "system"
    system.mkdir()
    write_idx(system / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    write_idx(system / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    monkeypatch.setattr(datasets, "_SYSTEM_DIR", system)
    assert load_fashion_mnist(split="test").images.shape == (2, 28, 28)
    with pytest.raises(FileNotFoundError, match="data_home='fashion-mnst'.*does not exist"):
        load_fashion_mnist("fashion-mnst", split="test")
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file"):
        load_fashion_mnist(tmp_path / "a-file", split="test")


@pytest.mark.parametrize("values, match", [
    (np.array([0.5, 1.7]), "not whole numbers.*0.5"),   # was written as [0, 1]
    (np.array([np.nan, 1.0]), "NaN or inf"),            # NaN was written as 0
    (np.array([np.inf]), "NaN or inf"),
    (np.array([-1, 3]), "0..255"),
    (np.array([1.0, 300.0]), "0..255"),
    (np.array(["a"]), "dtype <U1"),
    (np.array([1 + 1j]), "dtype complex128"),
])
def test_write_idx_refuses_lossy_casts(tmp_path, values, match):
    with pytest.raises(ValueError, match=match):
        write_idx(tmp_path / "x", values)
    assert not (tmp_path / "x").exists()


def test_write_idx_keeps_values_that_are_bytes(tmp_path):
    for values in (np.array([0.0, 255.0, 7.0]), np.array([True, False]), np.array([3, 9])):
        write_idx(tmp_path / "x", values)
        np.testing.assert_array_equal(read_idx(tmp_path / "x"), values.astype(np.uint8))
