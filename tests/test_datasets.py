"""Tests for skselflabel.datasets: IDX reading, the Fashion-MNIST search order, digits."""
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from skselflabel import datasets
from skselflabel.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ENV,
    load_digits_images,
    load_fashion_mnist,
    read_idx,
    write_idx,
)

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
SYSTEM_FILES = [
    SYSTEM_DIR / f"{stem}.gz"
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
]


@pytest.fixture(autouse=True)
def isolated_search(monkeypatch, tmp_path):
    """No test sees the user's environment variable or the machine's installed files
    unless it asks for them: the system location points to an empty directory."""
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    empty = tmp_path / "no-system-files"
    empty.mkdir()
    monkeypatch.setattr(datasets, "_SYSTEM_DIR", empty)


def make_split(directory, prefix, n, *, seed, gz=True):
    """Write a random split of n images and labels; return them."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


def test_idx_header_is_the_standard_one(tmp_path):
    # Written by hand from the format description, not by write_idx, so a bug shared by
    # the writer and the reader cannot hide.
    values = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = struct.pack(">BBBB3i", 0, 0, 0x08, 3, 2, 3, 4) + values.tobytes()
    (tmp_path / "a").write_bytes(raw)
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), values)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), values)
    write_idx(tmp_path / "b", values)
    assert (tmp_path / "b").read_bytes() == raw


def test_idx_reads_wider_types_in_native_order(tmp_path):
    values = np.array([1, -2, 70000], dtype=">i4")
    raw = struct.pack(">BBBBi", 0, 0, 0x0C, 1, 3) + values.tobytes()
    (tmp_path / "ints").write_bytes(raw)
    out = read_idx(tmp_path / "ints")
    assert out.dtype == np.dtype("int32") and out.dtype.isnative
    np.testing.assert_array_equal(out, [1, -2, 70000])


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("as_float", [False, True])
def test_round_trip_train_and_test(tmp_path, gz, as_float):
    train_x, train_y = make_split(tmp_path, "train", 7, seed=0, gz=gz)
    test_x, test_y = make_split(tmp_path, "t10k", 4, seed=1, gz=gz)

    bunch = load_fashion_mnist(tmp_path, split="train", as_float=as_float)
    expected = train_x.astype(np.float32) / 255 if as_float else train_x
    assert bunch.images.dtype == (np.float32 if as_float else np.uint8)
    np.testing.assert_allclose(bunch.images, expected, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(bunch.target, train_y)
    assert bunch.target.dtype == np.int64
    assert bunch.data.shape == (7, 784)
    np.testing.assert_array_equal(bunch.data, bunch.images.reshape(7, -1))
    assert bunch.target_names == list(FASHION_MNIST_CLASSES)
    assert Path(bunch.data_dir) == tmp_path
    assert "Fashion-MNIST" in bunch.DESCR

    X, y = load_fashion_mnist(tmp_path, split="test", return_X_y=True, as_float=as_float)
    assert X.shape == (4, 28, 28)
    np.testing.assert_array_equal(y, test_y)

    X, y = load_fashion_mnist(tmp_path, split="all", return_X_y=True)
    np.testing.assert_array_equal(X, np.concatenate([train_x, test_x]))
    np.testing.assert_array_equal(y, np.concatenate([train_y, test_y]))


def test_float_images_span_zero_to_one(tmp_path):
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[1] = 255
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1], dtype=np.uint8))
    X, _ = load_fashion_mnist(tmp_path, split="test", as_float=True, return_X_y=True)
    assert X[0].max() == 0.0 and X[1].min() == 1.0


def test_search_order_argument_then_env_then_system(tmp_path, monkeypatch):
    arg_dir, env_dir, sys_dir = tmp_path / "arg", tmp_path / "env", tmp_path / "sys"
    _, arg_y = make_split(arg_dir, "t10k", 3, seed=10)
    _, env_y = make_split(env_dir, "t10k", 5, seed=11)
    _, sys_y = make_split(sys_dir, "t10k", 6, seed=12)
    monkeypatch.setattr(datasets, "_SYSTEM_DIR", sys_dir)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(env_dir))

    _, y = load_fashion_mnist(arg_dir, split="test", return_X_y=True)
    np.testing.assert_array_equal(y, arg_y)
    _, y = load_fashion_mnist(split="test", return_X_y=True)
    np.testing.assert_array_equal(y, env_y)
    monkeypatch.delenv(FASHION_MNIST_ENV)
    _, y = load_fashion_mnist(split="test", return_X_y=True)
    np.testing.assert_array_equal(y, sys_y)


def test_directory_missing_one_file_is_skipped(tmp_path, monkeypatch):
    # The env directory has the test images but not the labels: it must not be used
    # half-way; the next complete directory wins.
    env_dir, sys_dir = tmp_path / "env", tmp_path / "sys"
    make_split(env_dir, "t10k", 3, seed=0)
    (env_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    _, sys_y = make_split(sys_dir, "t10k", 4, seed=1)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(env_dir))
    monkeypatch.setattr(datasets, "_SYSTEM_DIR", sys_dir)
    bunch = load_fashion_mnist(split="test")
    np.testing.assert_array_equal(bunch.target, sys_y)
    assert Path(bunch.data_dir) == sys_dir


def test_missing_files_error_names_every_path_and_the_install_command(tmp_path, monkeypatch):
    arg_dir, env_dir = tmp_path / "given", tmp_path / "from-env"
    arg_dir.mkdir()                 # it exists, but holds no files
    monkeypatch.setenv(FASHION_MNIST_ENV, str(env_dir))
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist(arg_dir, split="all")
    message = str(info.value)
    assert str(arg_dir) in message
    assert str(env_dir) in message
    assert str(datasets._SYSTEM_DIR) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert FASHION_MNIST_ENV in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"\x00\x00\x08", "only 3 bytes"),
        (b"\x1f\x00\x08\x03" + b"\x00" * 12, "magic number is 0x1f000803"),
        (b"\x00\x00\x42\x03" + b"\x00" * 12, "magic number is 0x00004203"),
        (struct.pack(">BBBB", 0, 0, 8, 1) + struct.pack(">i", 10) + b"\x00" * 10,
         "declares 1 dimension"),
        (struct.pack(">BBBB3i", 0, 0, 8, 3, 2, 28, 28) + b"\x00" * 100, "is damaged"),
    ],
)
def test_corrupt_image_file_raises_a_clear_error(tmp_path, raw, fragment):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, dtype=np.uint8))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte") as info:
        load_fashion_mnist(tmp_path, split="test")
    assert fragment in str(info.value)


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(path, np.zeros(1000, dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match="cannot be decompressed") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_image_and_label_counts_must_agree(tmp_path):
    make_split(tmp_path, "t10k", 5, seed=0)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8))
    with pytest.raises(ValueError, match="5 images but .* 4 labels"):
        load_fashion_mnist(tmp_path, split="test")


def test_labels_out_of_range_are_rejected(tmp_path):
    make_split(tmp_path, "t10k", 3, seed=0)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 10, 1], dtype=np.uint8))
    with pytest.raises(ValueError, match="label 10"):
        load_fashion_mnist(tmp_path, split="test")


def test_bad_split_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="split must be"):
        load_fashion_mnist(tmp_path, split="validation")


def test_write_idx_rejects_values_outside_bytes(tmp_path):
    with pytest.raises(ValueError, match="0..255"):
        write_idx(tmp_path / "x", np.array([1, 256]))


def test_digits_images():
    from sklearn.datasets import load_digits

    bunch = load_digits_images()
    assert bunch.images.shape == (1797, 8, 8) and bunch.images.dtype == np.float32
    assert bunch.images.min() == 0.0 and bunch.images.max() == 1.0
    raw = load_digits()
    np.testing.assert_allclose(bunch.images * 16, raw.images, atol=1e-5)
    np.testing.assert_array_equal(bunch.target, raw.target)
    assert bunch.data.shape == (1797, 64)
    assert bunch.target_names == [str(d) for d in range(10)]
    X, y = load_digits_images(return_X_y=True)
    np.testing.assert_array_equal(X, bunch.images)


@pytest.mark.skipif(
    not all(path.is_file() for path in SYSTEM_FILES),
    reason="Fashion-MNIST is not installed in /usr/share/datasets/fashion-mnist "
    "(apt-get install dataset-fashion-mnist); CI installs it",
)
def test_real_fashion_mnist_from_the_debian_package(monkeypatch):
    monkeypatch.setattr(datasets, "_SYSTEM_DIR", SYSTEM_DIR)
    X, y = load_fashion_mnist(split="test", return_X_y=True)
    assert X.shape == (10000, 28, 28) and X.dtype == np.uint8
    # The published test set is exactly balanced: 1,000 images of each class.
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 1000))
    assert X.max() == 255 and X.min() == 0
    bunch = load_fashion_mnist(split="all", as_float=True)
    assert bunch.images.shape == (70000, 28, 28)
    np.testing.assert_array_equal(np.bincount(bunch.target), np.full(10, 7000))
    np.testing.assert_array_equal(bunch.target[60000:], y)


def test_fashion_mnist_available_says_whether_the_files_are_there(tmp_path):
    # The system location is an empty directory here (isolated_search).
    assert datasets.fashion_mnist_available() is False
    make_split(tmp_path / "home", "t10k", n=3, seed=0)
    assert datasets.fashion_mnist_available(tmp_path / "home") is True


# --------------------------------------------------------------------- small real tables
@pytest.mark.parametrize("name, shape, sizes", [
    ("penguins", (342, 4), [151, 123, 68]), ("olive", (572, 8), [323, 98, 151]),
    ("crabs", (200, 5), [50, 50, 50, 50]), ("glass", (214, 9), [70, 76, 17, 13, 9, 29])])
def test_the_shipped_tables_load_as_their_readme_says(name, shape, sizes):
    from skselflabel.datasets import load_table

    bunch = load_table(name)
    assert bunch.data.shape == shape and bunch.data.dtype == np.float64
    assert np.bincount(bunch.target).tolist() == sizes
    assert len(bunch.target_names) == len(sizes) and len(bunch.feature_names) == shape[1]
    assert "licence" in bunch.DESCR and f"{name}.csv" in bunch.DESCR
    X, y = load_table(name, return_X_y=True, as_frame=True)
    assert list(X.columns) == bunch.feature_names and (y == bunch.target).all()


def test_an_unknown_table_is_refused():
    from skselflabel.datasets import load_table

    with pytest.raises(ValueError, match="penguins"):
        load_table("iris")
