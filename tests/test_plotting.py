"""Tests for skselflabel.plotting (matplotlib's Agg backend, no display needed)."""
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

matplotlib = pytest.importorskip("matplotlib", reason="the plot extra is not installed")
matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from skselflabel.plotting import plot_cluster_grid, plot_confusion, plot_history  # noqa: E402


def drawn_images(fig):
    """The image arrays drawn on each axes (None for an empty axes), row by row."""
    return [ax.images[0].get_array() if ax.images else None for ax in fig.axes]


def test_import_does_not_import_matplotlib():
    code = (
        "import sys, skselflabel, skselflabel.plotting, skselflabel.datasets\n"
        "assert 'matplotlib' not in sys.modules, sorted(m for m in sys.modules if 'matplotlib' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "call",
    [
        lambda: plot_cluster_grid(np.zeros((4, 8, 8)), [0, 0, 1, 1]),
        lambda: plot_history(pd.DataFrame({"epoch": [1], "loss": [1.0]})),
        lambda: plot_confusion([0, 1], [1, 0]),
    ],
    ids=["grid", "history", "confusion"],
)
def test_missing_matplotlib_names_the_extra(monkeypatch, call):
    # None in sys.modules makes every "import matplotlib..." raise ImportError.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install 'skselflabel\[plot\]'"):
        call()


def test_cluster_grid_rows_hold_members_of_their_cluster():
    rng = np.random.default_rng(0)
    labels = np.repeat([2, 0, 1], [5, 9, 3])  # cluster 1 has fewer images than columns
    # Each image is filled with its own cluster's id, so a misplaced one is visible.
    images = np.broadcast_to(labels[:, None, None], (len(labels), 6, 6)).astype(float)
    images = images + rng.random(images.shape) * 0.1
    fig = plot_cluster_grid(images, labels, n_per_cluster=4)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 * 4
    drawn = drawn_images(fig)
    for row, cluster in enumerate([0, 1, 2]):
        row_images = drawn[4 * row: 4 * row + 4]
        shown = [img for img in row_images if img is not None]
        assert len(shown) == min(4, np.sum(labels == cluster))
        assert all(np.floor(img.min()) == cluster for img in shown)
        assert f"n={np.sum(labels == cluster)}" in fig.axes[4 * row].get_ylabel()


def test_cluster_grid_order_and_subset():
    labels = np.repeat([0, 1, 2], [2, 7, 4])
    images = np.zeros((len(labels), 5, 5))
    fig = plot_cluster_grid(images, labels, n_per_cluster=2, order="size")
    firsts = [fig.axes[2 * r].get_ylabel().split("\n")[0] for r in range(3)]
    assert firsts == ["1", "2", "0"]
    fig = plot_cluster_grid(images, labels, n_per_cluster=2, clusters=[2])
    assert len(fig.axes) == 2


def test_cluster_grid_sample_depends_on_random_state_only():
    labels = np.zeros(50, dtype=int)
    images = np.arange(50, dtype=float)[:, None, None] * np.ones((1, 4, 4))
    picks = [
        [float(img[0, 0]) for img in drawn_images(plot_cluster_grid(images, labels, random_state=s))]
        for s in (0, 0, 1)
    ]
    assert picks[0] == picks[1]
    assert picks[0] != picks[2]


@pytest.mark.parametrize("as_dict", [False, True])
def test_cluster_grid_shows_the_given_examples_in_order(as_dict):
    labels = np.repeat([0, 1, 2], [6, 6, 6])
    images = np.arange(18, dtype=float)[:, None, None] * np.ones((1, 4, 4))
    examples = [np.array([5, 3, 1]), np.array([11]), np.array([], dtype=np.int64)]
    if as_dict:
        examples = dict(enumerate(examples))
    fig = plot_cluster_grid(images, labels, n_per_cluster=2, examples=examples)
    drawn = drawn_images(fig)
    shown = [[None if img is None else float(img[0, 0]) for img in drawn[2 * r: 2 * r + 2]]
             for r in range(3)]
    # The first n_per_cluster examples, in their order; empty cells where there are fewer.
    assert shown == [[5.0, 3.0], [11.0, None], [None, None]]
    assert "n=6" in fig.axes[4].get_ylabel()


def test_cluster_grid_with_a_fitted_clusterers_examples():
    from skselflabel import SelfLabelClusterer

    images = np.random.default_rng(0).random((40, 8, 8)).astype(np.float32)
    images[:20, :4] += 1.0
    clu = SelfLabelClusterer(n_clusters=2, max_epochs=2, random_state=0).fit(images)
    examples = clu.cluster_examples(images, n_examples=3)
    drawn = drawn_images(plot_cluster_grid(images, clu.labels_, n_per_cluster=3,
                                           examples=examples))
    present = np.unique(clu.labels_)
    expected = [images[i] for k in present for i in examples[k]]
    assert len([d for d in drawn if d is not None]) == len(expected)
    for got, want in zip([d for d in drawn if d is not None], expected):
        np.testing.assert_array_equal(got, want)


def test_cluster_grid_rejects_examples_that_are_not_rows():
    with pytest.raises(ValueError, match="not row numbers"):
        plot_cluster_grid(np.zeros((4, 8, 8)), [0, 0, 1, 1], examples=[[0, 9], [2]])


@pytest.mark.parametrize(
    "shape, kwargs, expected",
    [
        ((6, 64), {}, (8, 8)),               # square rows
        ((6, 12), {"image_shape": (3, 4)}, (3, 4)),
        ((6, 1, 8, 8), {}, (8, 8)),          # (n, c, h, w) greyscale
        ((6, 3, 8, 8), {}, (8, 8, 3)),       # (n, c, h, w) colour
        ((6, 8, 8, 3), {}, (8, 8, 3)),       # (n, h, w, c) colour
    ],
)
def test_cluster_grid_image_layouts(shape, kwargs, expected):
    images = np.random.default_rng(0).random(shape)
    fig = plot_cluster_grid(images, np.arange(6) % 2, n_per_cluster=3, **kwargs)
    assert drawn_images(fig)[0].shape == expected


def test_cluster_grid_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    fig = plot_cluster_grid(torch.rand(6, 1, 8, 8), torch.tensor([0, 1] * 3), n_per_cluster=2)
    assert drawn_images(fig)[0].shape == (8, 8)


@pytest.mark.parametrize(
    "images, labels, kwargs, match",
    [
        (np.zeros((4, 10)), [0, 0, 1, 1], {}, "not a square number"),
        (np.zeros((4, 8, 8)), [0, 1], {}, "4 images but 2 labels"),
        (np.zeros((4, 8, 8)), [0, 0, 1, 1], {"n_per_cluster": 0}, "at least 1"),
        (np.zeros((4, 8, 8)), [0, 0, 1, 1], {"order": "random"}, "order must be"),
        (np.zeros((4, 2, 8, 8)), [0, 0, 1, 1], {}, "images must be"),
    ],
)
def test_cluster_grid_bad_input(images, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plot_cluster_grid(images, labels, **kwargs)


def test_history_panels_follow_the_columns():
    history = pd.DataFrame(
        {"epoch": [1, 2, 3, 4], "loss": [2.0, 1.5, 1.0, 0.8],
         "label_change": [1.0, 0.3, 0.1, 0.0], "seconds": [3.0, 2.9, 3.1, 3.0]}
    )
    fig = plot_history(history)
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "label_change", "seconds"]
    x, y = fig.axes[0].lines[0].get_data()
    np.testing.assert_array_equal(x, [1, 2, 3, 4])
    np.testing.assert_array_equal(y, [2.0, 1.5, 1.0, 0.8])
    assert fig.axes[-1].get_xlabel() == "epoch"

    fig = plot_history(history, columns=["seconds"])
    assert [ax.get_ylabel() for ax in fig.axes] == ["seconds"]


def test_history_from_dict_and_fitted_estimator():
    class Fitted:
        history_ = pd.DataFrame({"loss": [3.0, 2.0], "note": ["a", "b"]})

    fig = plot_history(Fitted())
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss"]  # text column skipped
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_data()[0], [1, 2])
    fig = plot_history({"epoch": [0, 1], "loss": [1.0, 0.5]})
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_data()[0], [0, 1])


def test_history_bad_input():
    with pytest.raises(TypeError, match="pandas DataFrame"):
        plot_history([1, 2, 3])
    with pytest.raises(ValueError, match="no column"):
        plot_history(pd.DataFrame({"loss": [1.0]}), columns=["accuracy"])
    with pytest.raises(ValueError, match="empty"):
        plot_history(pd.DataFrame({"loss": []}))


def test_confusion_puts_matched_clusters_on_the_diagonal():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, size=400)
    permutation = np.array([2, 0, 3, 1])
    y_pred = permutation[y_true]
    noisy = rng.random(400) < 0.1
    y_pred[noisy] = rng.integers(0, 4, size=noisy.sum())
    fig = plot_confusion(y_true, y_pred)
    ax = fig.axes[0]
    matrix = ax.images[0].get_array()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "0", "3", "1"]
    # The diagonal holds the matched agreements: the largest entry of every row.
    np.testing.assert_array_equal(np.argmax(matrix, axis=1), np.arange(4))
    accuracy = np.mean(permutation[y_true] == y_pred)
    assert ax.get_title() == f"ACC = {accuracy:.3f}"
    assert matrix.sum() == 400


def test_confusion_more_clusters_than_classes_and_normalised():
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    y_pred = np.array([7, 7, 7, 9, 8, 8, 5, 5])
    fig = plot_confusion(y_true, y_pred, normalize="true", class_names=["cat", "dog"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()][:2] in (["7", "8"], ["7", "5"])
    assert len(ax.get_xticklabels()) == 4
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog"]
    np.testing.assert_allclose(ax.images[0].get_array().sum(axis=1), [1.0, 1.0])
    assert ax.get_title() == "ACC = 0.625"


def test_confusion_draws_on_given_axes_and_pickles():
    from matplotlib.figure import Figure as PlainFigure

    fig = PlainFigure()
    ax = fig.add_subplot()
    assert plot_confusion([0, 1, 1], [1, 0, 0], ax=ax) is fig
    again = pickle.loads(pickle.dumps(plot_confusion([0, 1, 1], [1, 0, 0])))
    assert again.axes[0].get_title() == "ACC = 1.000"


def test_figures_render_as_png_for_jupyter():
    png = plot_confusion([0, 1], [0, 1])._repr_png_()
    assert png.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"y_true": [0, 1], "y_pred": [0]}, "2 entries"),
        ({"y_true": [], "y_pred": []}, "empty"),
        ({"y_true": [0, 1], "y_pred": [0, 1], "normalize": "all"}, "normalize"),
        ({"y_true": [0, 1], "y_pred": [0, 1], "class_names": ["a"]}, "1 names"),
    ],
)
def test_confusion_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plot_confusion(**kwargs)
