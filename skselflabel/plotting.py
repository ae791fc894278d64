"""Figures for looking at self-labelled clusters: image grids, training curves, confusion
(matplotlib, the ``plot`` extra, imported only when a function is called)."""
import numpy as np
from sklearn.utils import check_random_state

from .metrics import cluster_accuracy, cluster_to_class_mapping

__all__ = ["plot_cluster_grid", "plot_history", "plot_confusion"]

_EXTRA_HINT = "pip install 'skselflabel[plot]'"


_figure_class = None


def _displayable_figure_class():
    """A Figure subclass that Jupyter can display by itself.

    A Figure made without pyplot is shown by Jupyter only once the inline backend has
    registered its formatter (``%matplotlib inline``); ``_repr_png_`` makes a returned
    figure appear in any case, exactly once (pyplot figures would be shown twice: by the
    backend at the end of the cell and as the cell's value).
    """
    global _figure_class
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "skselflabel.plotting needs matplotlib, which is not installed. "
            f"Install the plotting extra: {_EXTRA_HINT}"
        ) from exc
    if _figure_class is None:

        class _SkselflabelFigure(Figure):
            def _repr_png_(self):
                import io

                buffer = io.BytesIO()
                self.savefig(buffer, format="png", bbox_inches="tight")
                return buffer.getvalue()

        # Reachable as skselflabel.plotting._SkselflabelFigure (see __getattr__ below), so
        # returned figures pickle like any matplotlib figure.
        _SkselflabelFigure.__module__ = __name__
        _SkselflabelFigure.__qualname__ = "_SkselflabelFigure"
        _figure_class = _SkselflabelFigure
    return _figure_class


def __getattr__(name):
    # Built on first use so that importing this module does not import matplotlib.
    if name == "_SkselflabelFigure":
        return _displayable_figure_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _new_figure(figsize):
    """A pyplot-free Figure; ImportError naming the extra when matplotlib is missing."""
    return _displayable_figure_class()(figsize=figsize, layout="constrained")


def _figure_and_axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    fig = _new_figure(figsize)
    return fig, fig.add_subplot()


def _as_image_stack(images, image_shape):
    """Images as (n, h, w) greyscale or (n, h, w, 3|4) colour, whatever the input layout."""
    if hasattr(images, "detach"):  # a torch tensor, possibly on a GPU
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if image_shape is not None:
        images = images.reshape((len(images),) + tuple(image_shape))
    if images.ndim == 2:
        side = int(round(np.sqrt(images.shape[1])))
        if side * side != images.shape[1]:
            raise ValueError(
                f"images has {images.shape[1]} columns, which is not a square number: "
                "pass image_shape=(height, width) to say how to reshape each row."
            )
        images = images.reshape(len(images), side, side)
    if images.ndim == 4:
        if images.shape[1] in (1, 3, 4) and images.shape[-1] not in (1, 3, 4):
            images = np.moveaxis(images, 1, -1)  # (n, c, h, w) -> (n, h, w, c)
        if images.shape[-1] == 1:
            images = images[..., 0]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (3, 4)):
        raise ValueError(
            "images must be (n, h, w), (n, 1|3, h, w), (n, h, w, 1|3) or (n, h*w) rows; "
            f"got shape {images.shape}."
        )
    return images


def plot_cluster_grid(
    images,
    labels,
    *,
    n_per_cluster=8,
    examples=None,
    clusters=None,
    order="label",
    image_shape=None,
    cmap="gray",
    random_state=0,
    figsize=None,
):
    """Show images of each cluster, one row per cluster: chosen ones or a random sample.

    Parameters
    ----------
    images : array-like or torch.Tensor
        The images: (n, h, w), (n, c, h, w) or (n, h, w, c) with c in {1, 3}, or
        (n, h*w) rows of square images (see `image_shape` otherwise).
    labels : array-like of shape (n,)
        The cluster of each image, for example ``SelfLabelClusterer.labels_``.
    n_per_cluster : int, default=8
        Images shown per cluster (columns of the grid).
    examples : sequence or dict of index arrays, default=None
        The images to show for each cluster, in order: ``examples[k]`` holds row numbers
        of ``images`` for cluster ``k``, as returned by
        :meth:`SelfLabelClusterer.cluster_examples` (the most typical members first); at
        most `n_per_cluster` of them are shown. Default: a random sample of each cluster.
    clusters : sequence of int, default=None
        Which clusters to show, in this order. Default: every cluster present.
    order : {"label", "size"}, default="label"
        Row order when `clusters` is None: by cluster label, or largest cluster first.
    image_shape : tuple of int, default=None
        Shape of one image, used to reshape flat rows, e.g. ``(8, 8)`` for the digits
        table.
    cmap : str, default="gray"
        Colour map for greyscale images.
    random_state : int, RandomState instance or None, default=0
        Which members of each cluster are shown when `examples` is None.
    figsize : tuple of float, default=None
        Figure size in inches; by default about 0.8 inch per image.

    Returns
    -------
    fig : matplotlib.figure.Figure
        The figure; each row's label gives the cluster and its size.

    Examples
    --------
    >>> import numpy as np
    >>> from skselflabel.plotting import plot_cluster_grid
    >>> images = np.random.default_rng(0).random((30, 8, 8))
    >>> labels = np.arange(30) % 3
    >>> fig = plot_cluster_grid(images, labels, n_per_cluster=4)
    >>> len(fig.axes)
    12

    The most typical members of each cluster of a fitted ``SelfLabelClusterer``:

    >>> from skselflabel import SelfLabelClusterer
    >>> clu = SelfLabelClusterer(n_clusters=3, max_epochs=2, random_state=0).fit(images)
    >>> fig = plot_cluster_grid(images, clu.labels_, n_per_cluster=4,
    ...                         examples=clu.cluster_examples(images, n_examples=4))
    """
    images = _as_image_stack(images, image_shape)
    labels = np.asarray(labels).ravel()
    if len(labels) != len(images):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels.")
    if int(n_per_cluster) < 1:
        raise ValueError(f"n_per_cluster must be at least 1, got {n_per_cluster}.")
    n_per_cluster = int(n_per_cluster)
    present, sizes = np.unique(labels, return_counts=True)
    if clusters is None:
        if order == "size":
            clusters = present[np.argsort(-sizes, kind="stable")]
        elif order == "label":
            clusters = present
        else:
            raise ValueError(f"order must be 'label' or 'size', got {order!r}.")
    clusters = list(clusters)
    if not clusters:
        raise ValueError("no cluster to show: labels is empty.")
    shown_of = _shown_members(labels, examples, n_per_cluster, random_state)
    if figsize is None:
        figsize = (0.8 * n_per_cluster + 0.8, 0.8 * len(clusters) + 0.3)
    fig = _new_figure(figsize)
    axes = np.asarray(fig.subplots(len(clusters), n_per_cluster, squeeze=False))
    low, high = float(np.min(images)), float(np.max(images))
    for row, cluster in enumerate(clusters):
        shown = shown_of(cluster)
        for col in range(n_per_cluster):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(shown):
                image = images[shown[col]]
                if image.ndim == 2:
                    # One shared scale so brightness is comparable between clusters.
                    ax.imshow(image, cmap=cmap, vmin=low, vmax=high)
                else:
                    ax.imshow(image)
        axes[row, 0].set_ylabel(
            f"{cluster}\n(n={np.count_nonzero(labels == cluster)})", rotation=0, ha="right", va="center", fontsize=8
        )
    return fig


def _shown_members(labels, examples, n_per_cluster, random_state):
    """A function giving the rows shown for a cluster: its first `n_per_cluster`
    `examples`, or a random sample of its members when `examples` is None."""
    if examples is None:
        rng = check_random_state(random_state)

        def sample(cluster):
            members = np.flatnonzero(labels == cluster)
            return rng.choice(members, size=min(n_per_cluster, len(members)), replace=False)

        return sample

    def chosen(cluster):
        if isinstance(examples, dict):
            rows = examples.get(cluster, [])
        else:
            rows = examples[cluster] if 0 <= cluster < len(examples) else []
        rows = np.asarray(rows, dtype=np.int64).ravel()[:n_per_cluster]
        if rows.size and (rows.min() < 0 or rows.max() >= len(labels)):
            raise ValueError(f"examples of cluster {cluster} are not row numbers of images "
                             f"(0 to {len(labels) - 1}): {rows.tolist()}.")
        return rows

    return chosen


def _history_table(history):
    """``history`` as {column: 1-D array} plus the x axis values and name."""
    history = getattr(history, "history_", history)  # accept a fitted estimator too
    if hasattr(history, "to_dict") and hasattr(history, "columns"):
        columns = {str(c): np.asarray(history[c]) for c in history.columns}
    elif isinstance(history, dict):
        columns = {str(k): np.asarray(v) for k, v in history.items()}
    else:
        raise TypeError(
            "history must be a pandas DataFrame such as SelfLabelClusterer.history_, a "
            f"dict of columns or a fitted estimator with history_; got {type(history).__name__}."
        )
    if not columns or min(len(v) for v in columns.values()) == 0:
        raise ValueError("history is empty: fit the estimator for at least one epoch.")
    x_name = "epoch" if "epoch" in columns else None
    x = columns.pop("epoch") if x_name else np.arange(1, len(next(iter(columns.values()))) + 1)
    return columns, x, x_name or "epoch"


def plot_history(history, *, columns=None, figsize=None):
    """Plot training curves, one panel per recorded quantity, against the epoch.

    Parameters
    ----------
    history : pandas.DataFrame, dict or fitted estimator
        ``SelfLabelClusterer.history_`` (or the estimator itself): one row per epoch, an
        ``epoch`` column used as the x axis when present.
    columns : sequence of str, default=None
        Which columns to plot. Default: every numeric column except ``epoch``.
    figsize : tuple of float, default=None
        Figure size in inches.

    Returns
    -------
    fig : matplotlib.figure.Figure
        One axes per column, sharing the x axis.

    Examples
    --------
    >>> import pandas as pd
    >>> from skselflabel.plotting import plot_history
    >>> history = pd.DataFrame({"epoch": [1, 2, 3], "loss": [2.3, 1.1, 0.7],
    ...                         "label_change": [0.9, 0.2, 0.05]})
    >>> fig = plot_history(history)
    >>> [ax.get_ylabel() for ax in fig.axes]
    ['loss', 'label_change']
    """
    table, x, x_name = _history_table(history)
    if columns is None:
        columns = [
            name for name, values in table.items()
            if np.issubdtype(values.dtype, np.number) or values.dtype == bool
        ]
    else:
        missing = [c for c in columns if c not in table]
        if missing:
            raise ValueError(f"history has no column(s) {missing}; it has {list(table)}.")
    if not columns:
        raise ValueError(f"history has no numeric column to plot; it has {list(table)}.")
    if figsize is None:
        figsize = (6.0, 1.9 * len(columns) + 0.4)
    fig = _new_figure(figsize)
    axes = np.atleast_1d(fig.subplots(len(columns), 1, sharex=True, squeeze=False)[:, 0])
    for ax, name in zip(axes, columns):
        ax.plot(x, np.asarray(table[name], dtype=float), marker="o", markersize=3)
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel(x_name)
    if np.issubdtype(np.asarray(x).dtype, np.integer):
        from matplotlib.ticker import MaxNLocator

        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 1.25"
    return fig


def _matched_confusion(y_true, y_pred):
    """Counts (classes x clusters) with the columns ordered so that the cluster matched to
    each class (skselflabel.metrics' Hungarian matching) sits under it, and the ACC."""
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} entries but y_pred has {len(y_pred)}.")
    if len(y_true) == 0:
        raise ValueError("y_true and y_pred are empty.")
    mapping = cluster_to_class_mapping(y_true, y_pred)  # {cluster: class}
    classes, true_idx = np.unique(y_true, return_inverse=True)
    clusters, pred_idx = np.unique(y_pred, return_inverse=True)
    counts = np.zeros((len(classes), len(clusters)), dtype=np.int64)
    np.add.at(counts, (true_idx, pred_idx), 1)
    column_of = {cluster: j for j, cluster in enumerate(clusters.tolist())}
    row_of = {cls: i for i, cls in enumerate(classes.tolist())}
    matched = sorted((row_of[cls], column_of[cluster]) for cluster, cls in mapping.items())
    order = [column for _, column in matched]
    # Clusters left over (more clusters than classes) go last, grouped by their main class.
    rest = sorted(set(range(len(clusters))) - set(order), key=lambda c: np.argmax(counts[:, c]))
    order += rest
    return counts[:, order], classes, clusters[order], cluster_accuracy(y_true, y_pred)


def plot_confusion(
    y_true,
    y_pred,
    *,
    normalize=None,
    class_names=None,
    annotate=None,
    cmap="Blues",
    ax=None,
    figsize=None,
):
    """Confusion matrix of classes against clusters matched one-to-one (Hungarian).

    Cluster numbers are arbitrary, so the columns are reordered: the cluster matched to
    each class by the assignment that maximises the number of agreements sits on the
    diagonal (the matching that defines clustering accuracy, ACC, shown in the title).
    Clusters left without a class (when there are more clusters than classes) follow.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        True classes.
    y_pred : array-like of shape (n,)
        Cluster labels, e.g. ``SelfLabelClusterer.labels_``.
    normalize : {None, "true"}, default=None
        None shows counts; "true" divides each row by the class size.
    class_names : sequence of str, default=None
        Names of the sorted unique classes (e.g. ``load_fashion_mnist().target_names``).
    annotate : bool, default=None
        Write the value in each cell. Default: when the matrix has at most 20 columns.
    cmap : str, default="Blues"
        Colour map.
    ax : matplotlib.axes.Axes, default=None
        Axes to draw on; a new figure when None.
    figsize : tuple of float, default=None
        Size of a new figure in inches.

    Returns
    -------
    fig : matplotlib.figure.Figure
        The figure holding the matrix.

    Examples
    --------
    >>> from skselflabel.plotting import plot_confusion
    >>> fig = plot_confusion([0, 0, 1, 1, 2, 2], [5, 5, 3, 3, 3, 7])
    >>> fig.axes[0].get_title()
    'ACC = 0.833'
    >>> [t.get_text() for t in fig.axes[0].get_xticklabels()]
    ['5', '3', '7']
    """
    if normalize not in (None, "true"):
        raise ValueError(f"normalize must be None or 'true', got {normalize!r}.")
    counts, classes, clusters, accuracy = _matched_confusion(y_true, y_pred)
    if class_names is None:
        class_names = [str(c) for c in classes]
    elif len(class_names) != len(classes):
        raise ValueError(
            f"class_names has {len(class_names)} names but y_true has {len(classes)} classes."
        )
    values = counts / counts.sum(axis=1, keepdims=True) if normalize == "true" else counts
    if figsize is None:
        figsize = (0.45 * len(clusters) + 2.5, 0.4 * len(classes) + 1.5)
    fig, ax = _figure_and_axes(ax, figsize)
    image = ax.imshow(values, cmap=cmap, aspect="auto")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(len(clusters)), [str(c) for c in clusters])
    ax.set_yticks(range(len(classes)), list(class_names))
    ax.set_xlabel("cluster (in the order of the classes they are matched to)")
    ax.set_ylabel("true class")
    ax.set_title(f"ACC = {accuracy:.3f}")
    if annotate is None:
        annotate = len(clusters) <= 20
    if annotate:
        threshold = values.max() / 2 if values.size else 0
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                text = f"{values[i, j]:.2f}" if normalize else str(values[i, j])
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if values[i, j] > threshold else "black")
    return fig
