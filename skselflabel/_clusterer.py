"""``SelfLabelClusterer``: SeLa (self-labelling via simultaneous clustering and representation
learning) as a scikit-learn estimator.
"""
import copy
import math
import signal
import threading
import time
import warnings
from numbers import Integral, Real

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from ._augment import resolve_augment
from ._backbones import (build_quietly, init_parameters_, representation_width,
                         resolve_backbone)
from ._progress import make_progress
from ._schedule import label_update_steps
from ._sinkhorn import sinkhorn_knopp
from ._descriptors import gradient_histograms
from ._views import nearest_neighbors

_MODULE_ATTRIBUTES = ("backbone_", "heads_")


class SelfLabelClusterer(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, BaseEstimator
):
    r"""Deep clustering by self-labelling (SeLa, Asano et al., ICLR 2020).

    A backbone network with ``n_heads`` linear heads is trained with cross-entropy on
    self-labels, and the self-labels are recomputed now and then as the balanced assignment
    that best agrees with the network: with logits :math:`z_{ik}` of head :math:`h` on the
    whole training set,

    .. math::

        Q = \operatorname{diag}(u)\, \exp(\lambda z)\, \operatorname{diag}(v), \qquad
        Q \mathbf 1 = \tfrac{1}{N}\mathbf 1, \quad Q^\top \mathbf 1 = \pi,

    solved by Sinkhorn-Knopp (:func:`skselflabel.sinkhorn_knopp`), and sample :math:`i`
    gets the label :math:`\arg\max_k Q_{ik}`. The column marginal :math:`\pi` (``prior``,
    uniform by default) is what keeps the clusters from collapsing into one.

    Self-labels are computed on the plain (non-augmented) inputs with the network in
    evaluation mode, head by head into one reused ``(n_samples, n_clusters)`` buffer, at
    ``n_label_updates`` steps spaced quadratically (dense early): the ``t``-th at the
    fraction :math:`(t / (T-1))^2` of training, the first before any gradient step, and
    once more at the end.

    Two uses of a k-nearest-neighbour graph of the training inputs make this work where
    augmentations are weak or absent (tables, tiny images): before Sinkhorn, each head's
    probabilities are diffused over the graph (``diffusion_steps``), so neighbours share
    self-labels; and each gradient step feeds, with probability ``neighbor_prob``, a random
    neighbour of a sample in place of the sample ("neighbour views"), optionally augmented,
    with the sample's own self-label as target.

    Parameters
    ----------
    n_clusters : int, default=10
        Number of clusters of the first head, the one behind :meth:`predict`.

    n_heads : int, default=1
        Number of linear heads on the shared backbone; each has its own self-labels and the
        loss is their mean cross-entropy. ``n_clusters=3000, n_heads=10`` is the paper's
        "SeLa [3k x 10]".

    backbone : {"auto", "mlp", "cnn"}, nn.Module or callable, default="auto"
        The shared network. "auto" uses an MLP for tables (2-D ``X``) and a small CNN for
        images (3-D ``(n, h, w)`` or 4-D ``(n, c, h, w)`` ``X``). An ``nn.Module`` mapping a
        batch to ``(batch, features)`` is deep-copied in ``fit`` and never trained in place.
        A callable is called with the shape of one sample and must return such a module;
        its Linear, Conv and Norm layers are then initialised from ``random_state``.

    lam : float, default=10.0
        Inverse temperature :math:`\lambda` of the self-label step; larger values follow
        the network's predictions more closely. The paper uses 10 (CIFAR) to 25
        (ImageNet).

    prior : array-like of shape (n_clusters,), default=None
        Target cluster proportions of the first head (normalised to sum to 1). None means
        equal sizes. Auxiliary heads always use equal sizes.

    max_epochs : int or "auto", default="auto"
        Passes over the training data. "auto" aims at about 600 gradient steps, within
        [10, 100] epochs (40 epochs for the 1,797 digits, 10 for 60,000 images).

    n_label_updates : int or "auto", default="auto"
        Number of self-label steps over the run (plus a final one after training). "auto"
        is 100 (the paper's count) up to 2,000 training samples, falling to 10 from 20,000
        samples on, where each step costs a pass over the data.

    batch_size : int or "auto", default="auto"
        Samples per gradient step. "auto" is 128, reduced for small data sets so that an
        epoch has at least 8 steps (and never below 16).

    optimizer : {"adam", "adamw", "sgd"}, default="adam"
        Optimiser; SGD uses Nesterov momentum ``momentum``.

    lr : float or "auto", default="auto"
        Initial learning rate, decayed by a cosine schedule to zero. "auto" is 1e-3 for
        Adam/AdamW and 0.05 for SGD.

    momentum : float, default=0.9
        Momentum of SGD (ignored by Adam).

    weight_decay : float, default=1e-4
        L2 penalty (decoupled for AdamW).

    n_neighbors : int or "auto", default="auto"
        Size of the k-nearest-neighbour graph of the training inputs (Euclidean, after
        centring; inputs wider than 64 are projected on their top 64 principal axes),
        built once per fit and used for neighbour views and label diffusion. 0 disables
        both. "auto" is 10 (fewer for tiny data sets).

    neighbor_features : {"auto", "input", "gradients"} or callable, default="auto"
        The space in which the neighbour graph is built. "input" is the training inputs
        themselves; "gradients" (images only) is histograms of gradient orientations over
        small cells (HOG-like, :func:`skselflabel._descriptors.gradient_histograms`), where
        neighbours are less fooled by shifts and contrast than in pixel space: on 20,000
        Fashion-MNIST images the share of the 10 nearest neighbours from the same class
        rose from 0.79 to 0.85. "auto" is "gradients" for images of at least 16 x 16
        pixels and "input" otherwise (tables, and tiny images such as 8x8 digits).
        A callable maps the prepared float32 training tensor (``(n, c, h, w)`` images or
        ``(n, d)`` rows, on the training device) to an ``(n, m)`` tensor, for example an
        embedding from a pretrained network.

    neighbor_prob : float in [0, 1] or "auto", default="auto"
        Probability that a training input is replaced by a random neighbour (else the
        sample itself is used). "auto" is 0.5 for tables and 1.0 for images (on 8x8 digit
        images, always training on a neighbour made five seeds' mean NMI 0.901 against 0.890
        at 0.5).

    diffusion_steps : int or "auto", default="auto"
        Graph diffusion in the self-label step: each head's probabilities
        :math:`P = \operatorname{softmax}(z)` on the training set are smoothed over the
        neighbour graph ``diffusion_steps`` times, :math:`P \leftarrow (P + \bar P_{nb})/2`
        (a lazy random walk), and Sinkhorn-Knopp runs on :math:`\log P`. Neighbours thus
        get the same self-label unless the network clearly disagrees. "auto" grows with
        the training set, :math:`20 \sqrt{n / 2000}` clipped to [20, 60] (20 for 2,000
        samples, 60 from 18,000); 0 disables it. Only used with ``n_neighbors > 0``.

    augment : {"auto", "none"}, callable or None, default="auto"
        Batch augmentation applied on the training device after the neighbour view. "auto"
        is random shifts and intensity jitter for images and nothing for tables. A callable
        receives a float32 batch tensor (and the estimator's ``torch.Generator`` if it
        accepts a ``generator`` argument) and returns a batch of the same shape.

    device : str or torch.device, default="auto"
        Where to train: "auto" is CUDA when available, else the CPU. A model fitted on a
        GPU predicts on the CPU when no GPU is present.

    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, initial labels, shuffling, neighbour picks and
        augmentation through private generators; the global RNGs of torch, numpy and
        ``random`` are never used. Pass an int for reproducible results on the CPU.

    verbose : int, default=0
        0 prints nothing; 1 shows a progress bar (tqdm, terminal or Jupyter; plain lines
        without tqdm) with the loss and the fraction of labels changed.

    warm_start : bool, default=False
        When True and already fitted on samples of the same shape, ``fit`` continues
        training the current network instead of starting afresh.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training sample, equal to ``predict(X)`` on the training data.

    self_labels_ : ndarray of shape (n_heads, n_samples)
        The balanced self-labels of the last self-label step, one row per head.

    n_iter_ : int
        Number of epochs run (the last one partial if fitting was interrupted).

    history_ : pandas.DataFrame
        One row per epoch: ``epoch``, ``loss`` (mean cross-entropy over heads),
        ``label_change`` (fraction of labels the latest self-label step changed, averaged
        over heads), ``seconds`` (wall time of the epoch, self-labelling included).

    backbone_ : torch.nn.Module
        The trained backbone; its output is what :meth:`transform` returns.

    heads_ : torch.nn.ModuleList
        The trained linear heads.

    n_features_in_ : int
        Number of features (tables) or of channels (images; 1 for ``(n, h, w)`` input)
        seen in ``fit``.

    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names of ``X`` when it is a DataFrame with string column names.

    See Also
    --------
    skselflabel.sinkhorn_knopp : The balanced assignment solver of the self-label step.
    sklearn.cluster.KMeans : Clustering in input space.

    Notes
    -----
    Ctrl-C (``KeyboardInterrupt``) during ``fit`` stops after the current batch and leaves
    a fitted estimator, with a warning that says how far training got. A second Ctrl-C
    interrupts at once.

    References
    ----------
    Y. M. Asano, C. Rupprecht and A. Vedaldi. Self-labelling via simultaneous clustering
    and representation learning. ICLR 2020. https://arxiv.org/abs/1911.05371

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from skselflabel import SelfLabelClusterer
    >>> X, y = make_blobs(n_samples=120, centers=3, random_state=0)
    >>> clu = SelfLabelClusterer(n_clusters=3, max_epochs=5, random_state=0).fit(X)
    >>> clu.labels_.shape, clu.transform(X).shape
    ((120,), (120, 128))
    >>> clu.predict_proba(X[:2]).shape
    (2, 3)
    """

    _parameter_constraints = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "n_heads": [Interval(Integral, 1, None, closed="left")],
        "backbone": [StrOptions({"auto", "mlp", "cnn"}), nn.Module, callable],
        "lam": [Interval(Real, 0, None, closed="neither")],
        "prior": ["array-like", None],
        "max_epochs": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "n_label_updates": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "batch_size": [Interval(Integral, 2, None, closed="left"), StrOptions({"auto"})],
        "optimizer": [StrOptions({"sgd", "adam", "adamw"})],
        "lr": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "n_neighbors": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "neighbor_prob": [Interval(Real, 0, 1, closed="both"), StrOptions({"auto"})],
        "neighbor_features": [StrOptions({"auto", "input", "gradients"}), callable],
        "diffusion_steps": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "augment": [StrOptions({"auto", "none"}), callable, None],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
    }

    def __init__(
        self,
        n_clusters=10,
        *,
        n_heads=1,
        backbone="auto",
        lam=10.0,
        prior=None,
        max_epochs="auto",
        n_label_updates="auto",
        batch_size="auto",
        optimizer="adam",
        lr="auto",
        momentum=0.9,
        weight_decay=1e-4,
        n_neighbors="auto",
        neighbor_features="auto",
        neighbor_prob="auto",
        diffusion_steps="auto",
        augment="auto",
        device="auto",
        random_state=None,
        verbose=0,
        warm_start=False,
    ):
        self.n_clusters = n_clusters
        self.n_heads = n_heads
        self.backbone = backbone
        self.lam = lam
        self.prior = prior
        self.max_epochs = max_epochs
        self.n_label_updates = n_label_updates
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.n_neighbors = n_neighbors
        self.neighbor_features = neighbor_features
        self.neighbor_prob = neighbor_prob
        self.diffusion_steps = diffusion_steps
        self.augment = augment
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start

    # ------------------------------------------------------------------ input handling
    def _check_X(self, X, *, reset):
        """Validate ``X`` into a float32 array of shape (n, d) or (n, c, h, w)."""
        if isinstance(X, torch.Tensor):
            # numpy cannot read GPU tensors or tensors that require grad.
            X = X.detach().cpu().numpy()
        if getattr(X, "ndim", None) == 3:
            # Gray images (n, h, w) become (n, 1, h, w) before validation, so that
            # n_features_in_ counts channels whichever of the two forms is passed.
            X = X[:, None]
        X = validate_data(
            self, X, reset=reset, dtype=np.float32, allow_nd=True,
            ensure_min_samples=2 if reset else 1,
        )
        if X.ndim not in (2, 4):
            raise ValueError(
                "X must be a table (n_samples, n_features) or images (n_samples, height, "
                f"width) or (n_samples, channels, height, width); got {X.ndim}-D input of "
                f"shape {X.shape}."
            )
        if reset:
            self._sample_shape = tuple(X.shape[1:])
        elif tuple(X.shape[1:]) != self._sample_shape:
            raise ValueError(
                f"X has samples of shape {tuple(X.shape[1:])}, but {type(self).__name__} was "
                f"fitted on samples of shape {self._sample_shape}."
            )
        return X

    def _to_tensor(self, X, device):
        """Centre and scale a validated array with the statistics of the training data."""
        t = torch.from_numpy(np.require(X, dtype=np.float32, requirements=["C", "W"]))
        t = t.to(device, non_blocking=True)
        mean = torch.as_tensor(self._input_mean, device=device)
        scale = torch.as_tensor(self._input_scale, device=device)
        return (t - mean) / scale

    def _fit_input_statistics(self, X):
        if X.ndim == 2:
            # Per-column centring but one common scale: the geometry (and with it the
            # neighbour graph) stays that of the user's input.
            mean = X.mean(0, dtype=np.float64)
            scale = np.sqrt(X.var(0, dtype=np.float64).mean())
        else:
            mean = X.mean((0, 2, 3), dtype=np.float64)[:, None, None]
            scale = X.std((0, 2, 3), dtype=np.float64)[:, None, None]
        scale = np.where(np.asarray(scale) > 0, scale, 1.0)
        self._input_mean = mean.astype(np.float32)
        self._input_scale = np.asarray(scale, dtype=np.float32)

    # ------------------------------------------------------------------ devices
    def _training_device(self):
        if isinstance(self.device, str) and self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(
                f"device must be 'auto' or a torch device such as 'cpu' or 'cuda:0', got "
                f"{self.device!r}."
            ) from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device={self.device!r} was requested but CUDA is not available; use "
                "device='auto' or 'cpu'."
            )
        return device

    def _inference_device(self):
        """The training device if it exists on this machine, else the CPU."""
        device = torch.device(self._device)
        if device.type == "cuda" and not torch.cuda.is_available():
            return torch.device("cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            return torch.device("cpu")
        return device

    # ------------------------------------------------------------------ fitting
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Train the network and self-label ``X``.

        Parameters
        ----------
        X : array-like, DataFrame or torch.Tensor
            Table of shape (n_samples, n_features), or images of shape
            (n_samples, height, width) or (n_samples, channels, height, width).
        y : None
            Ignored; present for API consistency.

        Returns
        -------
        self : SelfLabelClusterer
            The fitted estimator.
        """
        continuing = (
            self.warm_start and hasattr(self, "backbone_")
            and hasattr(self, "_sample_shape")
        )
        previous_shape = getattr(self, "_sample_shape", None)
        X = self._check_X(X, reset=True)
        continuing = continuing and previous_shape == self._sample_shape
        n_samples = X.shape[0]
        prior = self._check_prior()

        rng = check_random_state(self.random_state)
        seeds = rng.randint(0, 2**31 - 1, size=3)
        device = self._training_device()
        self._device = str(device)
        init_gen = torch.Generator().manual_seed(int(seeds[0]))
        train_gen = torch.Generator(device=device).manual_seed(int(seeds[1]))

        config = self._resolve_auto(n_samples, is_image=X.ndim == 4)
        if not continuing:
            self._fit_input_statistics(X)
            backbone, width = resolve_backbone(self.backbone, self._sample_shape, init_gen)
            head_sizes = [self.n_clusters] * self.n_heads
            heads = build_quietly(lambda: nn.ModuleList(nn.Linear(width, k) for k in head_sizes))
            init_parameters_(heads, init_gen)
            self.backbone_, self.heads_ = backbone, heads
            self._head_width = width
            # transform's width: the backbone's represent() when it has one (SmallCNN).
            self._n_features_out = representation_width(backbone, self._sample_shape) or width
            self.history_ = pd.DataFrame(columns=["epoch", "loss", "label_change", "seconds"])
        self.backbone_.to(device)
        self.heads_.to(device)

        X_t = self._to_tensor(X, device)
        # Balanced random initial labels (i mod K, permuted), as in SeLa; the first
        # self-label step at iteration 0 replaces them before any gradient step.
        labels = torch.stack([
            torch.randperm(n_samples, generator=init_gen) % head.out_features
            for head in self.heads_
        ]).to(device)

        # Restore torch's global RNG afterwards in case a user module (e.g. Dropout) uses it.
        fork_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            labels, epochs, interrupted = self._train(X_t, labels, prior, config, train_gen)

        self.self_labels_ = labels.cpu().numpy()
        self.n_iter_ = epochs
        self.labels_ = self._predict_tensor(X_t).cpu().numpy()
        if interrupted is not None:
            warnings.warn(
                "fit was interrupted (KeyboardInterrupt) at epoch "
                f"{interrupted[0]} of {config['max_epochs']}, after batch {interrupted[1]} of "
                f"{interrupted[2]}; the estimator is fitted with the network as trained so far.",
                UserWarning,
                stacklevel=3,
            )
        return self

    def _check_prior(self):
        if self.prior is None:
            return None
        prior = np.asarray(self.prior, dtype=np.float64).ravel()
        if prior.shape != (self.n_clusters,) or not np.all(np.isfinite(prior)) or np.any(
            prior < 0
        ) or prior.sum() <= 0:
            raise ValueError(
                f"prior must hold {self.n_clusters} non-negative finite cluster proportions "
                f"(one per cluster) with a positive sum; got {self.prior!r}."
            )
        return prior / prior.sum()

    def _resolve_auto(self, n_samples, is_image):
        """Values of the "auto" parameters for a training set of ``n_samples``."""
        if self.batch_size == "auto":
            batch_size = int(min(128, max(16, n_samples // 8)))
        else:
            batch_size = int(self.batch_size)
        batch_size = min(batch_size, n_samples)
        steps_per_epoch = _n_batches(n_samples, batch_size)
        if self.max_epochs == "auto":
            max_epochs = int(min(100, max(10, math.ceil(600 / steps_per_epoch))))
        else:
            max_epochs = int(self.max_epochs)
        if self.n_label_updates == "auto":
            n_label_updates = int(min(100, max(10, 200_000 // n_samples)))
        else:
            n_label_updates = int(self.n_label_updates)
        if self.lr == "auto":
            lr = 0.05 if self.optimizer == "sgd" else 1e-3
        else:
            lr = float(self.lr)
        n_neighbors = 10 if self.n_neighbors == "auto" else int(self.n_neighbors)
        n_neighbors = min(n_neighbors, n_samples - 1)
        if self.neighbor_prob == "auto":
            neighbor_prob = 1.0 if is_image else 0.5
        else:
            neighbor_prob = float(self.neighbor_prob)
        if self.diffusion_steps == "auto":
            # A lazy random walk needs more steps to spread over the larger clusters of a
            # larger graph: 20 suits digits (1,797 samples; 60 lowered seed 0's NMI from
            # 0.931 to 0.857), 60 suits Fashion-MNIST (20,000 images: ACC 0.60 at 20 steps,
            # 0.76 at 60, no better at 150).
            diffusion_steps = int(round(min(60.0, max(20.0, 20.0 * math.sqrt(n_samples / 2000)))))
        else:
            diffusion_steps = int(self.diffusion_steps)
        return dict(neighbor_prob=neighbor_prob, diffusion_steps=diffusion_steps, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                    max_epochs=max_epochs, n_label_updates=n_label_updates, lr=lr,
                    n_neighbors=n_neighbors)

    def _neighbor_space(self, X_t):
        """The points whose nearest neighbours make the graph (see ``neighbor_features``)."""
        space = self.neighbor_features
        is_image = X_t.ndim == 4
        if space == "auto":
            # Gradient histograms need a few cells per image: on 8x8 digits they gave no
            # gain over pixels (seed 0 NMI 0.914 against 0.931 in the demo).
            space = "gradients" if is_image and min(X_t.shape[2:]) >= 16 else "input"
        if space == "input":
            return X_t
        if space == "gradients":
            if not is_image:
                raise ValueError("neighbor_features='gradients' needs images (n, c, h, w); "
                                 f"got data of shape {tuple(X_t.shape)}. Use 'input' for "
                                 "tables.")
            points = gradient_histograms(X_t)
            # Centred, so that the projection on the top principal axes in
            # nearest_neighbors keeps the directions that tell images apart.
            return points - points.mean(0)
        points = torch.as_tensor(space(X_t))
        if points.ndim != 2 or points.shape[0] != X_t.shape[0]:
            raise ValueError("neighbor_features must return an (n_samples, n_features) "
                             f"tensor for {X_t.shape[0]} samples; got shape "
                             f"{tuple(points.shape)}.")
        if not torch.isfinite(points).all():
            raise ValueError("neighbor_features returned NaN or inf values.")
        return points.to(X_t.device, torch.float32)

    def _make_optimizer(self, lr):
        params = list(self.backbone_.parameters()) + list(self.heads_.parameters())
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=self.momentum,
                                   nesterov=self.momentum > 0, weight_decay=self.weight_decay)
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay)
        return torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)

    def _train(self, X_t, labels, prior, config, gen):
        """The training loop; returns (self-labels, epochs run, interruption or None)."""
        device = X_t.device
        n_samples = X_t.shape[0]
        batch_size, steps_per_epoch = config["batch_size"], config["steps_per_epoch"]
        max_epochs = config["max_epochs"]
        total_steps = max_epochs * steps_per_epoch
        update_at = set(label_update_steps(config["n_label_updates"], total_steps).tolist())
        augment = resolve_augment(self.augment, is_image=X_t.ndim == 4)
        diffusion_steps = config["diffusion_steps"]
        neighbor_prob = config["neighbor_prob"]
        neighbors = None
        if config["n_neighbors"] > 0:
            neighbors = nearest_neighbors(self._neighbor_space(X_t), config["n_neighbors"])
        optimizer = self._make_optimizer(config["lr"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
        )
        buffers = _LabelBuffers()
        backbone, heads = self.backbone_, self.heads_
        n_heads = len(heads)
        start_epoch = len(self.history_)
        rows, label_change = [], float("nan")
        progress = make_progress(max_epochs, self.verbose)
        stop = _InterruptFlag()
        interrupted, epoch, batch = None, 0, 0
        step = 0
        try:
            with stop:
                for epoch in range(1, max_epochs + 1):
                    tic = time.perf_counter()
                    backbone.train()
                    heads.train()
                    order = torch.randperm(n_samples, generator=gen, device=device)
                    loss_sum = torch.zeros((), device=device)
                    for batch in range(1, steps_per_epoch + 1):
                        if step in update_at:
                            label_change = self._self_label(X_t, labels, prior, buffers,
                                                            neighbors, diffusion_steps)
                            backbone.train()
                            heads.train()
                        idx = order[(batch - 1) * batch_size: batch * batch_size]
                        source = idx
                        if neighbors is not None:
                            pick = torch.randint(neighbors.shape[1], idx.shape, generator=gen,
                                                 device=device)
                            source = neighbors[idx, pick]
                            if neighbor_prob < 1:
                                keep = torch.rand(idx.shape, generator=gen,
                                                  device=device) >= neighbor_prob
                                source = torch.where(keep, idx, source)
                        xb = X_t[source]
                        if augment is not None:
                            xb = augment(xb, gen)
                        features = backbone(xb)
                        losses = [F.cross_entropy(head(features), labels[h, idx])
                                  for h, head in enumerate(heads)]
                        # One head (the default) needs no extra add/divide kernels per step.
                        loss = losses[0] if n_heads == 1 else torch.stack(losses).mean()
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        scheduler.step()
                        loss_sum += loss.detach()
                        step += 1
                        if stop.requested:
                            raise KeyboardInterrupt
                    # One host sync per epoch.
                    rows.append((start_epoch + epoch, loss_sum.item() / steps_per_epoch,
                                 label_change, time.perf_counter() - tic))
                    progress.update(epoch, {"loss": f"{rows[-1][1]:.4f}",
                                            "change": f"{label_change:.3f}"})
                # A last self-label step so that self_labels_ matches the final network.
                label_change = self._self_label(X_t, labels, prior, buffers, neighbors,
                                                diffusion_steps)
                if rows:
                    rows[-1] = rows[-1][:2] + (label_change, rows[-1][3])
        except KeyboardInterrupt:
            interrupted = (epoch, batch, steps_per_epoch)
        finally:
            progress.close()
            backbone.eval()
            heads.eval()
        if rows:
            new = pd.DataFrame(rows, columns=["epoch", "loss", "label_change", "seconds"])
            self.history_ = new if len(self.history_) == 0 else pd.concat(
                [self.history_, new], ignore_index=True)
        return labels, epoch, interrupted

    _SINKHORN_TOL = 1e-2
    # Rows of the (chunk, n_neighbors, K) gather of the diffusion step: about 64 MB at a time.
    _DIFFUSION_CHUNK_ELEMENTS = 2**24

    @torch.no_grad()
    def _self_label(self, X_t, labels, prior, buffers, neighbors, diffusion_steps):
        """Recompute every head's balanced self-labels in place; return the changed fraction.

        Features of the whole (non-augmented) training set come from the backbone in
        evaluation mode, batch by batch, into a reused buffer; then each head's logits fill
        one reused (N, K) buffer in a single matrix product, which Sinkhorn-Knopp solves
        in place. Heads are done one after the other, so memory holds one head's logits.
        """
        self.backbone_.eval()
        self.heads_.eval()
        features = self._embed(X_t, out=buffers.features(X_t.shape[0], self._head_width,
                                                          X_t.device))
        changed = 0.0
        for h, head in enumerate(self.heads_):
            logits = buffers.logits(X_t.shape[0], head.out_features, X_t.device)
            torch.addmm(head.bias, features, head.weight.T, out=logits)
            if neighbors is not None and diffusion_steps > 0:
                scratch = buffers.scratch(*logits.shape, X_t.device)
                self._diffuse_(logits, neighbors, diffusion_steps, scratch)
            with warnings.catch_warnings():
                # Labels are an argmax: a marginal error of a few percent leaves them
                # essentially balanced, so an unconverged solve is no reason to warn.
                warnings.simplefilter("ignore", ConvergenceWarning)
                result = sinkhorn_knopp(logits, lam=self.lam,
                                        prior=prior if h == 0 else None,
                                        tol=self._SINKHORN_TOL, copy=False)
            new = torch.as_tensor(result.labels, device=labels.device)
            changed += float((new != labels[h]).float().mean())
            labels[h] = new
        return changed / len(self.heads_)

    def _diffuse_(self, logits, neighbors, n_steps, scratch):
        """Replace ``logits`` in place by ``log P`` of the graph-diffused probabilities.

        ``P = softmax(logits)``, then ``n_steps`` times ``P <- (P + mean_j P[nbr_j]) / 2``;
        the neighbour means are gathered in row chunks into ``scratch`` so that no
        ``(N, n_neighbors, K)`` tensor is ever formed.
        """
        n, k = logits.shape
        # Softmax in place: subtract the row max, exponentiate, normalise.
        probs = logits.sub_(logits.amax(1, keepdim=True)).exp_()
        probs.div_(probs.sum(1, keepdim=True))
        chunk = max(1, self._DIFFUSION_CHUNK_ELEMENTS // (neighbors.shape[1] * k))
        for _ in range(n_steps):
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                torch.mean(probs[neighbors[start:stop]], 1, out=scratch[start:stop])
            probs.add_(scratch).mul_(0.5)
        # Sinkhorn needs scores; tiny floor so that log stays finite.
        return probs.clamp_(min=1e-8).log_()

    # ------------------------------------------------------------------ inference
    # Inference runs in batches of exactly this many rows (the last one zero-padded): float
    # matrix kernels round differently for different batch sizes, and a fixed size makes a
    # sample's output independent of what else is predicted with it.
    _INFERENCE_BATCH = 256

    @torch.no_grad()
    def _embed(self, X_t, out=None, represent=False):
        """Backbone features of a prepared tensor, computed in fixed-size batches (eval mode).

        The heads' input (``forward``), or with ``represent`` the representation that
        ``transform`` returns (the backbone's ``represent`` when it has one).
        """
        n, size = X_t.shape[0], self._INFERENCE_BATCH
        run = self.backbone_
        width = self._head_width
        if represent and callable(getattr(self.backbone_, "represent", None)):
            run, width = self.backbone_.represent, self._n_features_out
        if out is None:
            out = torch.empty((n, width), device=X_t.device)
        for start in range(0, n, size):
            stop = min(start + size, n)
            batch = X_t[start:stop]
            if stop - start < size:
                batch = torch.cat([batch, batch.new_zeros((size - (stop - start),
                                                           *batch.shape[1:]))])
            out[start:stop] = run(batch)[: stop - start]
        return out

    @torch.no_grad()
    def _logits_tensor(self, X_t):
        head = self.heads_[0]
        # Row by row through the same kernel as in _embed (see _INFERENCE_BATCH).
        features = self._embed(X_t)
        size = self._INFERENCE_BATCH
        logits = torch.empty((features.shape[0], head.out_features), device=features.device)
        for start in range(0, features.shape[0], size):
            stop = min(start + size, features.shape[0])
            batch = features[start:stop]
            if stop - start < size:
                batch = torch.cat([batch, batch.new_zeros((size - (stop - start),
                                                           batch.shape[1]))])
            logits[start:stop] = head(batch)[: stop - start]
        return logits

    def _predict_tensor(self, X_t):
        return self._logits_tensor(X_t).argmax(1)

    def _prepare_inference(self, X):
        check_is_fitted(self)
        X = self._check_X(X, reset=False)
        device = self._inference_device()
        self.backbone_.to(device).eval()
        self.heads_.to(device).eval()
        return self._to_tensor(X, device)

    def predict(self, X):
        """Cluster of each sample: the argmax of the first head.

        Parameters
        ----------
        X : array-like, DataFrame or torch.Tensor
            Samples shaped like the training data.

        Returns
        -------
        labels : ndarray of shape (n_samples,), int64
            Cluster index in ``[0, n_clusters)``.
        """
        return self._predict_tensor(self._prepare_inference(X)).cpu().numpy()

    def predict_proba(self, X):
        """Probability of each cluster under the first head (softmax of its logits).

        Parameters
        ----------
        X : array-like, DataFrame or torch.Tensor
            Samples shaped like the training data.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_clusters), float32
            Rows sum to 1.
        """
        logits = self._logits_tensor(self._prepare_inference(X))
        return torch.softmax(logits, 1).cpu().numpy()

    def fit_predict(self, X, y=None):
        """Fit and return the cluster of each training sample (``labels_``).

        Parameters
        ----------
        X : array-like, DataFrame or torch.Tensor
            Training data.
        y : None
            Ignored.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            Cluster labels.
        """
        return self.fit(X).labels_

    def transform(self, X):
        """The backbone's learned representation of ``X``, for probes and other estimators.

        It is the backbone's ``represent(x)`` when it defines one: for the default image
        backbone (``SmallCNN``), the maps of its last two convolution blocks pooled to
        3x3 and 2x2 (1408 values), which make better linear-probe inputs than the heads'
        input.
        Otherwise it is the backbone's output, the input of the heads (128 values for the
        default table backbone).

        Parameters
        ----------
        X : array-like, DataFrame or torch.Tensor
            Samples shaped like the training data.

        Returns
        -------
        features : ndarray of shape (n_samples, n_features_out), float32
            Use it as input of a linear probe or any other estimator.
        """
        return self._embed(self._prepare_inference(X), represent=True).cpu().numpy()

    def score(self, X, y=None):
        r"""Negative SeLa objective on ``X``: higher is better.

        The first head's log-probabilities :math:`\log p(k \mid x_i)` are scored against
        the balanced self-labels :math:`q_i` that the self-label step would give ``X``
        (Sinkhorn-Knopp with ``lam`` and ``prior``):
        :math:`\frac{1}{n}\sum_i \log p(q_i \mid x_i)`, i.e. minus the cross-entropy that
        training minimises. It is at most 0; a network that puts ``X`` confidently into
        clusters of the intended sizes scores close to 0.

        Parameters
        ----------
        X : array-like, DataFrame or torch.Tensor
            Samples shaped like the training data.
        y : None
            Ignored.

        Returns
        -------
        score : float
            Mean log-likelihood of the balanced self-labels.
        """
        logits = self._logits_tensor(self._prepare_inference(X))
        prior = self._check_prior()
        with warnings.catch_warnings():
            # A few samples cannot always meet the cluster sizes exactly; the labels are
            # still the best balanced guess, which is all the score needs.
            warnings.simplefilter("ignore", category=Warning)
            q = sinkhorn_knopp(logits.double(), lam=self.lam, prior=prior).labels
        log_p = torch.log_softmax(logits.double(), 1)
        q = torch.as_tensor(q, device=log_p.device)
        return float(log_p.gather(1, q[:, None]).mean())

    # ------------------------------------------------------------------ sklearn plumbing
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.input_tags.three_d_array = True
        return tags

    def __sklearn_is_fitted__(self):
        return hasattr(self, "labels_")

    def __getstate__(self):
        state = super().__getstate__()
        # Pickles hold CPU modules so that a model fitted on a GPU loads anywhere.
        for name in _MODULE_ATTRIBUTES:
            module = state.get(name)
            if module is not None and any(
                t.device.type != "cpu" for t in _tensors_of(module)
            ):
                state[name] = copy.deepcopy(module).cpu()
        return state


class _LabelBuffers:
    """Reused storage for the self-label step: features (N, D) and one head's logits (N, K)."""

    def __init__(self):
        self._features = None
        self._logits = None
        self._scratch = None

    def features(self, n, d, device):
        if self._features is None or self._features.shape != (n, d):
            self._features = torch.empty((n, d), device=device)
        return self._features

    def scratch(self, n, k, device):
        # Second (N, K) buffer for the diffusion step's neighbour means.
        if self._scratch is None or self._scratch.numel() < n * k:
            self._scratch = torch.empty(n * k, device=device)
        return self._scratch[: n * k].view(n, k)

    def logits(self, n, k, device):
        # One flat allocation sized for the widest head; each head uses a contiguous prefix.
        if self._logits is None or self._logits.numel() < n * k:
            self._logits = torch.empty(n * k, device=device)
        return self._logits[: n * k].view(n, k)


class _InterruptFlag:
    """Turns the first Ctrl-C during fit into a flag checked after each batch.

    Only the main thread can install signal handlers; elsewhere a KeyboardInterrupt is
    caught where it lands instead. A second Ctrl-C raises at once.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            try:
                self._previous = signal.signal(signal.SIGINT, self._handle)
            except ValueError:  # e.g. embedded interpreters without signal support
                self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _n_batches(n_samples, batch_size):
    # A trailing batch of one sample would break BatchNorm in training mode: drop it.
    n = math.ceil(n_samples / batch_size)
    if n > 1 and n_samples % batch_size == 1:
        n -= 1
    return n


def _tensors_of(module):
    yield from module.parameters()
    yield from module.buffers()
