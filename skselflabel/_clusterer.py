"""``SelfLabelClusterer``: SeLa as a scikit-learn estimator; ``fit`` commits what
:func:`~skselflabel._fit.fit.fit_model` returns."""
import os
import warnings
from numbers import Integral, Real

import torch
from sklearn.base import (BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin,
                          TransformerMixin, _fit_context)
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from torch import nn

from ._fit.config import DefaultAssignerParams
from ._fit.events import CallbackSupportMixin
from ._fit.exemplars import check_ranking, exemplars
from ._fit.fit import fit_model
from ._fit.graph import NEIGHBOR_RECALL
from ._fit.inference import (first_head_labels, first_head_logits, graph_agreement,
                             prediction_needs, representation_needs, represent)
from ._fit.state import FITTED, FittedModelMixin, alias_moved_modules
from ._runtime.allocation import reports_memory_failures
from ._runtime.threads import uses_n_jobs

alias_moved_modules()       # pickles of the same state format, written before the folders


class SelfLabelClusterer(FittedModelMixin, CallbackSupportMixin, DefaultAssignerParams,
                         ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin,
                         BaseEstimator):
    r"""Deep clustering by self-labelling (SeLa, Asano et al., ICLR 2020).

    A backbone network with ``n_heads`` linear heads is trained with cross-entropy on
    self-labels, and the self-labels are recomputed now and then as the balanced assignment
    that best agrees with the network: with logits :math:`z_{ik}` of a head on the whole
    training set,

    .. math::

        Q = \operatorname{diag}(u)\, \exp(\lambda z)\, \operatorname{diag}(v), \qquad
        Q \mathbf 1 = \tfrac{1}{N}\mathbf 1, \quad Q^\top \mathbf 1 = \pi,

    solved by Sinkhorn-Knopp (the ``assigner``), and sample :math:`i` gets the label
    :math:`\arg\max_k Q_{ik}`. The column marginal :math:`\pi` (the assigner's ``prior``,
    uniform by default, or estimated on tables) keeps the clusters from collapsing into
    one. Self-labels are computed on the plain inputs, with the network in evaluation
    mode, at ``n_label_updates`` steps spaced quadratically (the ``t``-th at the
    fraction :math:`(t / (T-1))^2` of training), and once more at the end.

    A k-nearest-neighbour graph of the training inputs helps where augmentations are weak:
    labels are diffused over it before the self-label step (``diffusion_steps``), and
    gradient steps may train on a neighbour with the sample's label (``neighbor_prob``).

    A fit makes ``n_init`` starts (networks and self-labels drawn from different seeds),
    trains each for a short trial, and continues the one whose self-labels agree best with
    the neighbour graph (:func:`~skselflabel.metrics.neighbor_agreement`, also
    :meth:`score`): which clusters a start finds is settled early, and a start that cuts
    through dense regions of the data is told apart without labels.

    Parameters
    ----------
    n_clusters : int, default=10
        Number of clusters of every head; the first head is behind :meth:`predict`.

    n_init : int or "auto", default="auto"
        Starts compared by a trial of a fifth of the epochs (at least one, always fewer
        than ``max_epochs``); the best continues. A fit costs about ``1 + (n_init - 1) / 5``
        fits of one start (the default assigner: 4/5 more for the twin of
        ``size_agreement_``). "auto" is 4, or 1 below 5 epochs, a warm start or a resume.

    n_heads : int, default=1
        Linear heads on the shared backbone, each with its own self-labels; the loss is
        their mean. ``n_clusters=3000, n_heads=10`` is the paper's "SeLa [3k x 10]".

    backbone : {"auto", "mlp", "cnn"}, nn.Module or callable, default="auto"
        The shared network: "auto" is an MLP for tables (2-D ``X``) and a small CNN for
        images (``(n, h, w)`` or ``(n, c, h, w)``). An ``nn.Module`` mapping a batch to
        ``(batch, features)`` is deep-copied, never trained in place. A callable receives
        the shape of one sample and returns such a module, then initialised from
        ``random_state``.

    assigner : SinkhornAssigner or None, default=None
        The self-label step, called through :meth:`SinkhornAssigner.assign_tensor`. Its
        ``lam`` sets how closely labels follow the network, its ``prior`` the cluster
        proportions of the first head (other heads: equal), its ``size_tolerance`` how far
        cluster sizes may stray from them. None is ``SinkhornAssigner(lam=10.0,
        tol=0.01, size_tolerance=0.5)``, which also tries ``prior="auto"``
        (``size_agreement_``), and KMeans on tables (``kmeans_agreement_``); an explicit assigner,
        or ``assigner__lam`` and ``assigner__prior`` (grid searches), is used as given.

    max_epochs : int or "auto", default="auto"
        Passes over the data; "auto" aims at about 600 gradient steps, in 10 to 100 epochs.

    n_label_updates : int or "auto", default="auto"
        Self-label steps over the run (plus a final one). "auto": 100 (the paper's count)
        up to 2,000 samples, falling to 10 from 20,000 samples on; at most 3 per epoch.

    batch_size : int or "auto", default="auto"
        Samples per gradient step; "auto" is 128, smaller on small data sets so that an
        epoch has at least 8 steps (never below 16).

    optimizer : {"adam", "adamw", "sgd"}, default="adam"
        Optimiser; SGD uses Nesterov momentum (``momentum``, default 0.9).

    lr : float or "auto", default="auto"
        Initial learning rate, cosine-decayed to 0; "auto": 1e-3 (Adam), 0.05 (SGD).

    momentum, weight_decay : float, default=0.9 and 1e-4
        Momentum of SGD; L2 penalty (decoupled for AdamW).

    n_neighbors : int or "auto", default="auto"
        Neighbours per sample in the k-NN graph (Euclidean; wider spaces projected on 64
        principal axes); "auto" is 10, 0 disables neighbour views and diffusion.

    neighbor_features : {"auto", "input", "gradients"}, callable or array-like, default="auto"
        The space of the graph: the inputs, or histograms of gradient orientations
        (images only; less fooled by shifts and contrast than pixels). "auto" is
        "gradients" for images of at least 16 x 16 pixels, else "input". A callable maps
        a batch of prepared float32 samples to an ``(batch, m)`` embedding; an array is
        an ``(n_samples, m)`` embedding of the training samples (from a pretrained model).

    neighbor_recall : float in (0, 1], default=0.95
        Share of true neighbours that faiss's approximate search (the ``faiss`` extra)
        must find beyond 100,000 samples; 1.0 searches every pair, in time :math:`O(n^2)`.

    neighbor_prob : float in [0, 1] or "auto", default="auto"
        Chance that a training input is replaced by a random neighbour; "auto" is 1.0 for
        images and 0.5 for tables.

    diffusion_steps : int or "auto", default="auto"
        Before each self-label step each head's probabilities :math:`P` are smoothed
        ``diffusion_steps`` times over the graph, :math:`P \leftarrow (P + \bar P_{nb})/2`,
        and the assigner works on :math:`\log P`; with more clusters than backbone
        features, the features are smoothed instead (cheaper). "auto": :math:`20 \sqrt{m/200}`
        for clusters of :math:`m = n / K`, in [1, 60], at most 6 on features; 0: none.

    augment : {"auto", "none"}, callable or None, default="auto"
        Batch augmentation on the training device: "auto" is random shifts and intensity
        jitter for images, nothing for tables. A callable maps a float32 batch tensor (and
        a ``generator`` keyword, if it takes one) to a batch of the same shape.

    whiten : "auto" or bool, default="auto"
        Tables (user guide, "Input scaling"): "auto" gives each clearly bimodal principal
        axis the variance of the largest, so that a split hidden behind a dominant direction
        (overall size in body measurements) counts; True scales axis :math:`i` of variance
        :math:`\lambda_i` by :math:`(\lambda_i + \bar\lambda)^{-1/2}`, False only
        centres and scales. Images: "auto" is False; True is refused.

    device : str or torch.device, default="auto"
        Where to train: "auto" is CUDA when available, else the CPU (where a fitted model
        predicts when its GPU is missing).

    num_workers : int, default=0
        Worker processes of the ``DataLoader`` that reads ``X`` when it is a torch
        ``Dataset`` (0: the main process). Arrays are read without workers.

    n_jobs : int or None, default=None
        torch's CPU threads in every method, for the calling thread during the call only.
        None means 1 unless in a :func:`joblib.parallel_config` context; -1: all
        processors (the benchmarks page measures why one is the default).

    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, initial labels, shuffling, neighbour picks and augmentation
        through private generators; None takes fresh seeds from the operating system.
        The global RNGs of numpy, torch and ``random`` are never used or advanced. An int
        gives reproducible results on the CPU.

    verbose : int, default=0
        1 shows a progress bar (tqdm, in a terminal or Jupyter) with the loss, the share of
        labels changed and the head being self-labelled; else one plain line per epoch.

    warm_start : bool, default=False
        ``fit`` continues training the network fitted before on samples of the same shape.

    checkpoint : str, path-like or None, default=None
        A file where ``fit`` keeps its state (network, optimiser, schedule, self-labels,
        generators, position, ``history_``), replaced atomically at the end of every
        epoch, at self-label steps a minute or more after the last write, and on Ctrl-C;
        removed when ``fit`` completes. A ``fit`` that finds the file resumes where it
        stopped (on the CPU, ending as the uninterrupted fit would have), if the file comes
        from the same parameters and data; otherwise it refuses it, naming what differs.

    sync_batch_norm : bool, default=True
        Data-parallel fits only (the user guide's page on several GPUs): True normalises
        every BatchNorm layer by the statistics of the whole batch, as
        :class:`torch.nn.SyncBatchNorm` does, so the processes take the one-process steps;
        False normalises each process's share (DistributedDataParallel's default): two
        collectives fewer per layer and step, and worse clusters when shares are small.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training sample, equal to ``predict(X)`` on the training data.
    self_labels_ : ndarray of shape (n_heads, n_samples)
        The balanced self-labels of the last self-label step, one row per head.
    cluster_sizes_ : ndarray of shape (n_clusters,)
        The cluster proportions of the first head's last self-label step: the assigner's
        ``prior`` (estimated from the data with ``prior="auto"``), or equal ones.
    sizes_estimated_ : bool
        Whether ``cluster_sizes_`` were estimated from the data.
    size_agreement_ : ndarray of shape (2,)
        With the default assigner and ``n_init > 1``: the neighbour agreement of the run
        with equal sizes and of its twin with estimated sizes, the larger kept.
    kmeans_agreement_ : ndarray of shape (2,)
        Tables where ``size_agreement_`` is set, one process, up to 100,000 rows: agreement
        of the first head's self-labels and of KMeans's on the scaled inputs; when
        KMeans's is larger, they become its self-labels, learned in 10 more epochs.
    start_agreement_ : ndarray of shape (n_init,)
        Only after a fit of several starts: the neighbour agreement of each start's
        self-labels at the end of its trial (the largest one was continued).
    n_iter_ : int
        Epochs run (the last one partial if fitting was interrupted).
    history_ : pandas.DataFrame
        Per epoch: ``epoch``, ``loss`` (mean cross-entropy over heads); of its latest
        self-label step ``label_change`` (share changed, mean over heads), ``label_error``
        (largest marginal error), ``label_iterations`` (most iterations), ``label_moved``
        (largest share of a head's labels moved by the size rounding); ``seconds``.
    backbone_ : torch.nn.Module
        The trained backbone.
    heads_ : torch.nn.ModuleList
        The trained linear heads.
    n_features_in_ : int
        Features (tables) or channels (images; 1 for ``(n, h, w)`` input) seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names of ``X`` when it is a DataFrame with string column names.

    See Also
    --------
    SinkhornAssigner : The balanced assignment step, usable on its own.
    sklearn.cluster.KMeans : Clustering in input space.

    Notes
    -----
    ``fit`` is transactional: if it fails (bad input, a failing user module, Ctrl-C
    before training starts), a previously fitted estimator is left exactly as it was.
    Ctrl-C during training stops after the current batch and leaves a fitted estimator,
    with a warning saying how far training got; a second Ctrl-C interrupts at once.
    ``predict``, ``predict_proba``, ``transform`` and ``score`` never change the estimator.
    Under ``torchrun`` every process calls ``fit`` with the same ``X``, trains on its share
    of every batch with gradients all-reduced, and ends with the same model (the user
    guide's "Training on several GPUs or machines").
    With scikit-learn >= 1.9, ``set_callbacks`` attaches scikit-learn callbacks (such as
    ``sklearn.callback.ProgressBar``); each epoch is one task.

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
        "n_init": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "n_heads": [Interval(Integral, 1, None, closed="left")],
        "backbone": [StrOptions({"auto", "mlp", "cnn"}), nn.Module, callable],
        "assigner": [HasMethods(["assign_tensor"]), None],
        "max_epochs": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "n_label_updates": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "batch_size": [Interval(Integral, 2, None, closed="left"), StrOptions({"auto"})],
        "optimizer": [StrOptions({"sgd", "adam", "adamw"})],
        "lr": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "n_neighbors": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "neighbor_recall": [Interval(Real, 0, 1, closed="right")],
        "neighbor_prob": [Interval(Real, 0, 1, closed="both"), StrOptions({"auto"})],
        "neighbor_features": [StrOptions({"auto", "input", "gradients"}), callable,
                              "array-like"],
        "diffusion_steps": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "augment": [StrOptions({"auto", "none"}), callable, None],
        "whiten": ["boolean", StrOptions({"auto"})],
        "device": [str, torch.device],
        "num_workers": [Interval(Integral, 0, None, closed="left")],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "checkpoint": [str, os.PathLike, None],
        "sync_batch_norm": ["boolean"],
    }

    def __init__(self, n_clusters=10, *, n_init="auto", n_heads=1, backbone="auto",
                 assigner=None, max_epochs="auto", n_label_updates="auto", batch_size="auto",
                 optimizer="adam", lr="auto", momentum=0.9, weight_decay=1e-4,
                 n_neighbors="auto", neighbor_features="auto", neighbor_recall=NEIGHBOR_RECALL,
                 neighbor_prob="auto", diffusion_steps="auto", augment="auto", whiten="auto",
                 device="auto", num_workers=0, n_jobs=None, random_state=None, verbose=0,
                 warm_start=False, checkpoint=None, sync_batch_norm=True):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.n_heads = n_heads
        self.backbone = backbone
        self.assigner = assigner
        self.max_epochs = max_epochs
        self.n_label_updates = n_label_updates
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.n_neighbors = n_neighbors
        self.neighbor_features = neighbor_features
        self.neighbor_recall = neighbor_recall
        self.neighbor_prob = neighbor_prob
        self.diffusion_steps = diffusion_steps
        self.augment = augment
        self.whiten = whiten
        self.device = device
        self.num_workers = num_workers
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.checkpoint = checkpoint
        self.sync_batch_norm = sync_batch_norm

    # ------------------------------------------------------------------ fitting
    @_fit_context(prefer_skip_nested_validation=True)
    @uses_n_jobs
    @reports_memory_failures
    def fit(self, X, y=None):
        """Train the network and self-label ``X``.

        Parameters
        ----------
        X : array-like, memory map, DataFrame, torch.Tensor or torch Dataset
            Table of shape (n_samples, n_features), or images of shape
            (n_samples, height, width) or (n_samples, channels, height, width), of any
            real dtype; read batch by batch, never copied whole. A ``Dataset``'s items are
            samples or ``(sample, target)`` pairs.
        y : None
            Ignored for training; passed on to scikit-learn callbacks (for scoring).

        Returns
        -------
        self : SelfLabelClusterer
            The fitted estimator.
        """
        fitted, messages = fit_model(self, X, y)
        for name in FITTED:         # every fitted attribute is replaced at once
            self.__dict__.pop(name, None)
        self.__dict__.update(fitted.attributes())
        for message in messages:
            warnings.warn(message, UserWarning, stacklevel=2)
        return self

    # ------------------------------------------------------------------ inference
    @uses_n_jobs
    @reports_memory_failures
    def predict(self, X):
        """Cluster of each sample: the argmax of the first head.

        Parameters
        ----------
        X : array-like, memory map, DataFrame, torch.Tensor or torch Dataset
            Samples shaped like the training data.

        Returns
        -------
        labels : ndarray of shape (n_samples,), int64
            Cluster index in ``[0, n_clusters)``.
        """
        feeder = self._inference_input(
            X, lambda n: prediction_needs(n, self._head_width))
        return first_head_labels(self._fitted_network(), feeder).cpu().numpy()

    @uses_n_jobs
    @reports_memory_failures
    def predict_proba(self, X):
        """Probability of each cluster under the first head (softmax of its logits).

        Parameters
        ----------
        X : array-like, memory map, DataFrame, torch.Tensor or torch Dataset
            Samples shaped like the training data.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_clusters), float32
            Rows sum to 1.
        """
        feeder = self._inference_input(
            X, lambda n: prediction_needs(n, self._head_width, self.heads_[0].out_features))
        logits = first_head_logits(self._fitted_network(), feeder)
        return torch.softmax(logits, 1).cpu().numpy()

    @uses_n_jobs
    @reports_memory_failures
    def transform(self, X):
        """The backbone's learned representation of ``X``, for probes and other estimators.

        It is the backbone's ``represent(x)`` when it defines one (for the default image
        backbone, its last two convolution maps, pooled), else the backbone's output, the
        heads' input (128 values for the default table backbone).

        Parameters
        ----------
        X : array-like, memory map, DataFrame, torch.Tensor or torch Dataset
            Samples shaped like the training data.

        Returns
        -------
        features : ndarray of shape (n_samples, n_features_out), float32
            Use it as input of a linear probe or any other estimator.
        """
        feeder = self._inference_input(
            X, lambda n: representation_needs(n, self._n_features_out))
        return represent(self.backbone_, feeder, self._n_features_out).cpu().numpy()

    @uses_n_jobs
    @reports_memory_failures
    def score(self, X, y=None):
        r"""Label-free quality of the clustering of ``X``: how rarely it separates nearest
        neighbours (higher is better).

        :func:`~skselflabel.metrics.neighbor_agreement` of :meth:`predict` on the
        10-nearest-neighbour graph of ``X``, with empty clusters counting 0: the mean over
        the ``n_clusters`` clusters of the share of their members' neighbours that share
        their cluster. The graph's space depends on ``X`` only (gradient histograms for
        images of at least 16 x 16 pixels, else the inputs, or a callable
        ``neighbor_features``), so models of other seeds or settings can be compared on the
        same ``X``, as a fit's ``n_init`` starts are. It falls as clusters are added (the
        user guide's "Choosing without labels").

        Parameters
        ----------
        X : array-like, memory map, DataFrame, torch.Tensor or torch Dataset
            At least two samples shaped like the training data.
        y : None
            Ignored.

        Returns
        -------
        score : float
            In [0, 1].
        """
        return graph_agreement(self._fitted_network(), self._inference_input(X), self.n_clusters,
                               self.neighbor_features, self.neighbor_recall)

    @uses_n_jobs
    @reports_memory_failures
    def cluster_examples(self, X, n_examples=8, *, by="center"):
        """The most typical samples of each cluster, as indices into ``X``.

        Every sample of ``X`` belongs to the cluster :meth:`predict` gives it. With
        ``by="center"`` a cluster's examples are its members nearest to the mean of the
        members' :meth:`transform`; with ``by="confidence"`` they are its members of highest
        :meth:`predict_proba`. Show them with :func:`skselflabel.plotting.plot_cluster_grid`
        (``examples=``).

        Parameters
        ----------
        X : array-like, DataFrame or torch.Tensor
            Samples shaped like the training data, usually the training data themselves.
        n_examples : int, default=8
            Examples per cluster; a cluster with fewer members gets all of them.
        by : {"center", "confidence"}, default="center"
            How the members of a cluster are ranked.

        Returns
        -------
        examples : list of ndarray of int64
            ``examples[k]`` holds the row numbers in ``X`` of cluster ``k``'s examples, the
            most typical first; it is empty when no sample of ``X`` falls into cluster ``k``.

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn.datasets import make_blobs
        >>> from skselflabel import SelfLabelClusterer
        >>> X, _ = make_blobs(n_samples=90, centers=3, random_state=0)
        >>> clu = SelfLabelClusterer(n_clusters=3, max_epochs=3, random_state=0).fit(X)
        >>> examples = clu.cluster_examples(X, n_examples=4)
        >>> [len(rows) for rows in examples]
        [4, 4, 4]
        >>> all((clu.labels_[rows] == k).all() for k, rows in enumerate(examples))
        True
        """
        check_ranking(n_examples, by)
        return exemplars(self._fitted_network(), self._inference_input(X), n_examples, by)

    # ------------------------------------------------------------------ sklearn plumbing
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.input_tags.three_d_array = True
        return tags


