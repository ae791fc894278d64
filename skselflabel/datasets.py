"""Data sets for trying self-labelling: Fashion-MNIST from local IDX files (nothing
downloads), scikit-learn's digits as images, and four small real tables shipped with the
package."""
import importlib.resources
import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_digits
from sklearn.utils import Bunch

from ._data.idx import read_idx, write_idx

__all__ = [
    "FASHION_MNIST_ENV",
    "FASHION_MNIST_CLASSES",
    "load_fashion_mnist",
    "load_digits_images",
    "load_table",
    "TABLES",
    "fashion_mnist_available",
    "read_idx",
    "write_idx",
]

#: Environment variable naming a directory that holds the Fashion-MNIST IDX files.
FASHION_MNIST_ENV = "SKSELFLABEL_FASHION_MNIST_HOME"

#: Where the Debian package ``dataset-fashion-mnist`` installs the files.
_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

_INSTALL_HINT = "apt-get install dataset-fashion-mnist"

#: Height and width of a Fashion-MNIST image.
_IMAGE_SHAPE = (28, 28)

#: The ten Fashion-MNIST classes, indexed by label.
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# File stems of the standard distribution; each may also be stored with a ".gz" suffix.
_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_FASHION_DESCR = """\
Fashion-MNIST
=============

Zalando's article images: 70,000 greyscale 28x28 pictures of clothing in 10 classes
(60,000 training, 10,000 test), 7,000 per class, a drop-in replacement for MNIST.

Classes: 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt,
7 Sneaker, 8 Bag, 9 Ankle boot.

License: MIT (Zalando SE). Reference: H. Xiao, K. Rasul, R. Vollgraf, "Fashion-MNIST: a
Novel Image Dataset for Benchmarking Machine Learning Algorithms", arXiv:1708.07747, 2017.
"""


def _candidate_dirs(data_home):
    """The directories to search, in order, each with the reason it is searched."""
    candidates = []
    if data_home is not None:
        home = Path(data_home).expanduser()
        if not home.is_dir():
            # A misspelt data_home must not quietly give way to the system copy.
            raise FileNotFoundError(
                f"data_home={str(data_home)!r} is not a directory ({home} "
                f"{'is a file' if home.exists() else 'does not exist'}). Pass the directory "
                "that holds the Fashion-MNIST files, or data_home=None to search "
                f"${FASHION_MNIST_ENV} and {_SYSTEM_DIR}.")
        candidates.append((home, "data_home argument"))
    env_dir = os.environ.get(FASHION_MNIST_ENV)
    if env_dir:
        candidates.append((Path(env_dir).expanduser(), f"${FASHION_MNIST_ENV}"))
    candidates.append((_SYSTEM_DIR, f"system location ({_INSTALL_HINT})"))
    return candidates


def _find_file(directory, stem):
    """The path of ``stem`` or ``stem.gz`` in ``directory``, or None."""
    for name in (stem + ".gz", stem):
        path = directory / name
        if path.is_file():
            return path
    return None


def _locate(stems, data_home):
    """Paths of all ``stems`` from the first candidate directory that has every one."""
    searched = []
    for directory, reason in _candidate_dirs(data_home):
        paths = [_find_file(directory, stem) for stem in stems]
        if all(path is not None for path in paths):
            return directory, paths
        searched.append(f"  {directory}  ({reason})")
    wanted = ", ".join(f"{stem}[.gz]" for stem in stems)
    raise FileNotFoundError(
        "Fashion-MNIST files not found. Looked for " + wanted + " in:\n"
        + "\n".join(searched)
        + f"\nInstall them with `{_INSTALL_HINT}` (Debian/Ubuntu), or put the IDX files "
        f"in a directory and pass it as data_home or set ${FASHION_MNIST_ENV}. "
        "Nothing is downloaded at run time."
    )


def _read_split(images_path, labels_path):
    images = read_idx(images_path, expected_ndim=3)
    labels = read_idx(labels_path, expected_ndim=1)
    if images.shape[0] == 0:
        raise ValueError(f"{images_path} holds no images (its header declares 0); "
                         "Fashion-MNIST has 60,000 for training and 10,000 for testing.")
    if images.shape[1:] != _IMAGE_SHAPE:
        raise ValueError(
            f"{images_path} holds images of {images.shape[1]} x {images.shape[2]} pixels; "
            "Fashion-MNIST's are 28 x 28. Is it another data set's file?")
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise ValueError(
            f"{images_path} and {labels_path} must hold unsigned bytes (IDX type 0x08), "
            f"got {images.dtype} and {labels.dtype}."
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels: the files come from different sets."
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(
            f"{labels_path} has label {labels.max()}, but Fashion-MNIST labels are 0..9."
        )
    return images, labels.astype(np.int64)


def load_fashion_mnist(data_home=None, *, split="train", return_X_y=False, as_float=False):
    """Load Fashion-MNIST from IDX files on disk (never downloads).

    The files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally gzipped with a
    ``.gz`` suffix) are looked up in `data_home`, then in the directory named by the
    environment variable ``SKSELFLABEL_FASHION_MNIST_HOME``, then in
    ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist`` package). The
    first directory holding every file the split needs is used.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Directory to look in first. It must exist: a missing one is an error, never a
        reason to look elsewhere.
    split : {"train", "test", "all"}, default="train"
        ``"train"``: the 60,000 training images; ``"test"``: the 10,000 test images;
        ``"all"``: the training images followed by the test images (70,000).
    return_X_y : bool, default=False
        If True, return ``(images, target)`` instead of a Bunch.
    as_float : bool, default=False
        If False, images are ``uint8`` in 0..255. If True, ``float32`` scaled to [0, 1],
        the form :class:`~skselflabel.SelfLabelClusterer` trains on.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With attributes

        images : ndarray of shape (n_samples, 28, 28)
            The images.
        data : ndarray of shape (n_samples, 784)
            The same images flattened (a view of `images`).
        target : ndarray of shape (n_samples,), dtype int64
            The class of each image, 0..9.
        target_names : list of str
            The ten class names, indexed by label.
        data_dir : str
            The directory the files were read from.
        DESCR : str
            A description of the data set.

    (images, target) : tuple
        If `return_X_y` is True.

    Raises
    ------
    FileNotFoundError
        If `data_home` is given but is not a directory, or no searched directory holds the
        files; the message lists every directory searched and the install command.
    ValueError
        If a file is not a valid IDX file (wrong magic number, negative dimension,
        truncated, trailing data, damaged gzip), holds no images or images that are not
        28 x 28, or the image and label files disagree.

    See Also
    --------
    load_digits_images : The 8x8 digits bundled with scikit-learn.

    Examples
    --------
    Any directory holding files in the standard layout works; here a tiny one written on
    the spot:

    >>> import tempfile, os
    >>> import numpy as np
    >>> from skselflabel.datasets import load_fashion_mnist, write_idx
    >>> home = tempfile.mkdtemp()
    >>> write_idx(os.path.join(home, "t10k-images-idx3-ubyte.gz"),
    ...           np.full((3, 28, 28), 255, dtype=np.uint8))
    >>> write_idx(os.path.join(home, "t10k-labels-idx1-ubyte.gz"),
    ...           np.array([9, 0, 3], dtype=np.uint8))
    >>> fm = load_fashion_mnist(home, split="test", as_float=True)
    >>> fm.images.shape, fm.images.dtype, float(fm.images.max())
    ((3, 28, 28), dtype('float32'), 1.0)
    >>> [fm.target_names[k] for k in fm.target]
    ['Ankle boot', 'T-shirt/top', 'Dress']
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}.")
    parts = ["train", "test"] if split == "all" else [split]
    stems = [stem for part in parts for stem in _SPLIT_FILES[part]]
    directory, paths = _locate(stems, data_home)

    images_parts, target_parts = [], []
    for i in range(len(parts)):
        images, target = _read_split(paths[2 * i], paths[2 * i + 1])
        images_parts.append(images)
        target_parts.append(target)
    images = images_parts[0] if len(parts) == 1 else np.concatenate(images_parts)
    target = target_parts[0] if len(parts) == 1 else np.concatenate(target_parts)
    if as_float:
        images = images.astype(np.float32)
        images /= 255.0

    return _images_or_bunch(images, target, return_X_y,
                            target_names=list(FASHION_MNIST_CLASSES), data_dir=str(directory),
                            DESCR=_FASHION_DESCR)


def fashion_mnist_available(data_home=None):
    """Whether the Fashion-MNIST test split can be loaded from local files.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Searched first, as in :func:`load_fashion_mnist`.

    Returns
    -------
    available : bool
        False when the files are missing (``apt-get install dataset-fashion-mnist``).
    """
    try:
        load_fashion_mnist(data_home, split="test", return_X_y=True)
    except FileNotFoundError:
        return False
    return True


def load_digits_images(*, return_X_y=False):
    """Load scikit-learn's 8x8 handwritten digits as float32 images in [0, 1].

    The 1,797 images of :func:`sklearn.datasets.load_digits` (pixel values 0..16), divided
    by 16 so they lie in [0, 1] like the other image loaders' output.

    Parameters
    ----------
    return_X_y : bool, default=False
        If True, return ``(images, target)`` instead of a Bunch.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With attributes

        images : ndarray of shape (1797, 8, 8), dtype float32
            The images, values in [0, 1].
        data : ndarray of shape (1797, 64), dtype float32
            The same images flattened (a view of `images`).
        target : ndarray of shape (1797,), dtype int64
            The digit, 0..9.
        target_names : list of str
            ``["0", ..., "9"]``.
        DESCR : str
            scikit-learn's description of the data set.

    (images, target) : tuple
        If `return_X_y` is True.

    See Also
    --------
    sklearn.datasets.load_digits : The source, as a 64-column table with values 0..16.
    load_fashion_mnist : Larger, harder 28x28 images.

    Examples
    --------
    >>> from skselflabel.datasets import load_digits_images
    >>> images, target = load_digits_images(return_X_y=True)
    >>> images.shape, images.dtype, float(images.min()), float(images.max())
    ((1797, 8, 8), dtype('float32'), 0.0, 1.0)
    >>> target[:5]
    array([0, 1, 2, 3, 4])
    """
    digits = load_digits()
    images = digits.images.astype(np.float32) / np.float32(16.0)
    target = digits.target.astype(np.int64)
    return _images_or_bunch(images, target, return_X_y,
                            target_names=[str(d) for d in range(10)], DESCR=digits.DESCR)


def _images_or_bunch(images, target, return_X_y, **fields):
    """``(images, target)``, or a Bunch with the images, their flat rows and ``fields``."""
    if return_X_y:
        return images, target
    return Bunch(images=images, data=images.reshape(len(images), -1), target=target, **fields)


#: The small real tables that :func:`load_table` loads.
TABLES = ("penguins", "olive", "crabs", "glass")


def _table_descr(name):
    """The table's row of the shipped README (source, licence), under its header."""
    readme = importlib.resources.files("skselflabel").joinpath("_tables", "README.md")
    lines = readme.read_text().splitlines()
    header = [line for line in lines if line.startswith("| file |")]
    row = [line for line in lines if line.startswith(f"| {name}.csv |")]
    intro = "\n".join(lines[2:7])
    return f"{name}\n{'=' * len(name)}\n\n{intro}\n\n" + "\n".join(header + row) + "\n"


def load_table(name, *, return_X_y=False, as_frame=False):
    """Load one of four small real labelled tables shipped with the package (no download).

    ``penguins`` (342 x 4, 3 species), ``olive`` (572 x 8, 3 regions of Italy), ``crabs``
    (200 x 5, 4 species-and-sex groups) and ``glass`` (214 x 9, 6 glass types): tables of
    measurements whose classes differ in size, from R packages (sources and licences are
    in ``DESCR``). Feature columns are returned as they are: standardise them before
    clustering. The benchmarks page measures :class:`~skselflabel.SelfLabelClusterer` on
    them.

    Parameters
    ----------
    name : {"penguins", "olive", "crabs", "glass"}
        The table.
    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch.
    as_frame : bool, default=False
        If True, ``data`` is a pandas DataFrame with the column names (and ``frame`` holds
        the label column too).

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With attributes

        data : ndarray of shape (n_samples, n_features) or DataFrame
            The measurements, float64.
        target : ndarray of shape (n_samples,), dtype int64
            The class of each row, ``0 .. n_classes - 1`` in order of first appearance.
        target_names : list of str
            The class names, indexed by target.
        feature_names : list of str
            The column names.
        frame : DataFrame
            The whole CSV, label column included.
        DESCR : str
            Source, licence and class sizes.

    (data, target) : tuple
        If `return_X_y` is True.

    Raises
    ------
    ValueError
        If `name` is not one of the four tables.

    Examples
    --------
    >>> from sklearn.preprocessing import StandardScaler
    >>> from skselflabel.datasets import load_table
    >>> X, y = load_table("penguins", return_X_y=True)
    >>> X.shape, [int(n) for n in np.bincount(y)]
    ((342, 4), [151, 123, 68])
    >>> X = StandardScaler().fit_transform(X)
    """
    if name not in TABLES:
        raise ValueError(f"name must be one of {', '.join(map(repr, TABLES))}; got {name!r}.")
    path = importlib.resources.files("skselflabel").joinpath("_tables", f"{name}.csv")
    with importlib.resources.as_file(path) as csv:
        frame = pd.read_csv(csv)
    codes, names = pd.factorize(frame["label"])
    features = frame.drop(columns=["label"]).astype(np.float64)
    data = features if as_frame else features.to_numpy()
    target = codes.astype(np.int64)
    if return_X_y:
        return data, target
    return Bunch(data=data, target=target, target_names=[str(n) for n in names],
                 feature_names=list(features.columns), frame=frame,
                 DESCR=_table_descr(name))
