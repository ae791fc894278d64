"""The settings of one fit: every parameter the fit reads, with "auto" resolved for the data
(the only place that knows what "auto" means) and the assigner checked."""
from dataclasses import dataclass
import math

import torch

from .._assigner import SinkhornAssigner
from .._data.augment import resolve_augment
from .._data.input_scaling import resolve_whiten
from .._solver.checks import check_prior
from .assigner_protocol import check_assigner
from .graph import NEIGHBOR_RECALL

# Batch: 128 samples, but at least this many steps per epoch on small data sets (so that
# the schedule and the neighbour views get enough steps), and never below 16 samples
# (BatchNorm statistics of smaller batches are too noisy).
AUTO_BATCH_SIZE = 128
MIN_STEPS_PER_EPOCH = 8
MIN_AUTO_BATCH_SIZE = 16
# Epochs: about this many gradient steps in all, within [MIN_EPOCHS, MAX_EPOCHS] (40 epochs
# for the 1,797 digits, 10 for 60,000 images).
TARGET_STEPS = 600
MIN_EPOCHS, MAX_EPOCHS = 10, 100
# Self-label steps: the paper's 100 on small data; each step is a pass over the data, so
# the count falls as 200,000 / n_samples from 2,000 samples on, to 10 at 20,000.
MAX_LABEL_UPDATES, MIN_LABEL_UPDATES = 100, 10
LABEL_UPDATE_SAMPLES = 200_000
# ... and never more than this many per epoch: a step costs about an epoch's forward passes
# (and, with many heads of many clusters, one solve per head), so a one-epoch fit with 10
# steps would spend most of its time relabelling. SeLa itself relabels every few epochs.
MAX_LABEL_UPDATES_PER_EPOCH = 3
# Learning rates: Adam's usual 1e-3; SeLa's SGD runs use 0.05.
ADAM_LR, SGD_LR = 1e-3, 0.05
# Neighbours per sample in the k-NN graph.
AUTO_NEIGHBORS = 10
# Chance that a training input is replaced by a neighbour: always for images (where
# augmentations add invariance on top), half the time for tables.
IMAGE_NEIGHBOR_PROB, TABLE_NEIGHBOR_PROB = 1.0, 0.5
# Diffusion steps grow like the square root of the mean cluster size m = n / n_clusters
# (a lazy random walk must spread a label over a cluster, and the farther it walks the
# more it blurs neighbouring clusters together): 20 steps at m = 200, within [1, 60].
DIFFUSION_STEPS_AT_200, MIN_DIFFUSION_STEPS, MAX_DIFFUSION_STEPS = 20.0, 1.0, 60.0
# ... but a walk on the features (more clusters than features) takes at most this many:
# averaging a sample's whole representation blurs clusters into one another long before
# the walk has spread over a large cluster (the user guide's "Label diffusion").
MAX_FEATURE_WALK_STEPS = 6
# Starts compared by a trial (n_init="auto"), and the share of training a trial takes: the
# self-labels of a start settle early, so a short trial tells the starts apart (the user
# guide's "Choosing without labels"). Fits of fewer epochs than MIN_EPOCHS_TO_RESTART make
# one start: a trial would be most of the fit.
AUTO_N_INIT = 4
TRIAL_FRACTION = 0.2
MIN_EPOCHS_TO_RESTART = 5
# Images need a few 4 x 4 cells per side for gradient histograms to help; on 8 x 8 digits
# pixels make the better graph.
MIN_GRADIENT_SIDE = 16


# The default self-label step: SeLa's CIFAR temperature; labels are an argmax, so a
# marginal error of 1% leaves them balanced.
DEFAULT_LAM, DEFAULT_TOL = 10.0, 1e-2
DEFAULT_SIZE_TOLERANCE = 0.5


@dataclass(frozen=True)
class FitConfig:
    """Everything one fit reads of the estimator's parameters, resolved (no "auto" left)."""

    params: dict                 # the parameters as given (a checkpoint's fingerprint)
    device: torch.device         # where to train
    n_processes: int             # processes of a data-parallel fit, sharing each batch
    # The network and its training.
    n_clusters: int
    n_heads: int
    backbone: object             # "mlp", "cnn", an nn.Module or a callable
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    sync_batch_norm: bool        # data-parallel fits: BatchNorm over the whole batch
    # The schedule, for this data.
    n_samples: int
    is_image: bool
    whiten: object               # "auto", True (soft) or False: tables' whitening
    compare_sizes: bool          # also train with estimated sizes, keep the better
    batch_size: int
    steps_per_epoch: int
    max_epochs: int
    n_label_updates: int
    n_init: int                  # starts compared by a trial
    trial_epochs: int            # epochs of each start's trial
    # Self-labels, neighbour graph and views.
    assigner: object             # checked; the default for None
    n_neighbors: int
    neighbor_prob: float
    neighbor_features: object    # "input", "gradients", a callable or an embedding
    neighbor_recall: float       # recall asked of the approximate k-NN search (1: exact)
    diffusion_steps: int         # walk steps on the heads' probabilities
    feature_walk_steps: int      # ... or on the features, with more clusters than features
    augment: object              # f(batch, generator) -> batch, or None
    # The run.
    random_state: object
    warm_start: bool
    checkpoint: object           # a path, or None
    num_workers: int
    verbose: int

    @property
    def total_steps(self):
        return self.max_epochs * self.steps_per_epoch


def default_assigner():
    """The assignment step used when ``assigner=None``."""
    return SinkhornAssigner(lam=DEFAULT_LAM, tol=DEFAULT_TOL,
                            size_tolerance=DEFAULT_SIZE_TOLERANCE)


class DefaultAssignerParams:
    """Estimator mixin: with ``assigner=None``, ``get_params`` lists the default assigner's
    parameters (``assigner__lam``, ...) and ``set_params`` accepts them, making the default
    explicit first, as grid searches expect."""

    def get_params(self, deep=True):
        params = super().get_params(deep=deep)
        if deep and self.assigner is None:
            params.update({f"assigner__{key}": value
                           for key, value in default_assigner().get_params().items()})
        return params

    def set_params(self, **params):
        if any(key.startswith("assigner__") for key in params):
            if params.get("assigner", self.assigner) is None:
                params["assigner"] = default_assigner()
        return super().set_params(**params)


def checked_assigner(assigner, n_clusters):
    """The assigner a fit uses (the default for None), with its parameters validated and
    its ``assign_tensor`` checked against the protocol (``assigner_protocol``)."""
    assigner = default_assigner() if assigner is None else assigner
    if callable(getattr(assigner, "_validate_params", None)):
        assigner._validate_params()
    prior = getattr(assigner, "prior", None)
    if prior is not None and not (isinstance(prior, str) and prior == "auto"):
        check_prior(prior, n_clusters)     # fail before training, not during it
    if getattr(assigner, "input", "logits") != "logits":
        raise ValueError("The assigner of SelfLabelClusterer receives logits; got an "
                         f"assigner with input={assigner.input!r}. Use input='logits'.")
    return check_assigner(assigner)


def compares_sizes(params):
    """Whether a fit trains a twin with estimated cluster sizes beside the run with equal
    ones, and keeps the better (``size_choice``): the default assigner (an explicit one, or
    ``assigner__prior``, is used as given), without a checkpoint. The twin forks at the end
    of the trials of ``n_init``: a fit of one start makes one run."""
    return params["assigner"] is None and params.get("checkpoint") is None


def n_batches(n_samples, batch_size, n_processes=1):
    """Batches per epoch; a trailing batch too small to give every process two samples
    (one sample breaks BatchNorm) is dropped."""
    n = math.ceil(n_samples / batch_size)
    if n > 1 and 0 < n_samples % batch_size < 2 * n_processes:
        n -= 1
    return n


def _auto(value, default):
    return default if isinstance(value, str) and value == "auto" else value


def resolve_config(params, n_samples, sample_shape, n_processes=1, device="cpu"):
    """A :class:`FitConfig` from the estimator's ``get_params()`` and the data's shape.

    Parameters
    ----------
    params : dict
        The estimator's parameters (``get_params(deep=False)``).
    n_samples : int
        Number of training samples.
    sample_shape : tuple of int
        Shape of one sample: ``(d,)`` for tables, ``(c, h, w)`` for images.
    n_processes : int, default=1
        Processes of a data-parallel fit, which share every batch: each needs at least two
        samples of it.
    device : torch.device or str, default="cpu"
        The training device, already resolved.
    """
    is_image = len(sample_shape) == 3
    schedule = _schedule(params, n_samples, n_processes)
    graph = _graph(params, n_samples, sample_shape)
    lr = float(_auto(params["lr"], SGD_LR if params["optimizer"] == "sgd" else ADAM_LR))
    augment = resolve_augment(params["augment"], is_image=is_image)
    return FitConfig(
        params=dict(params), device=torch.device(device), n_processes=n_processes,
        n_clusters=params["n_clusters"], n_heads=params["n_heads"],
        backbone=params["backbone"], optimizer=params["optimizer"], lr=lr,
        momentum=params["momentum"], weight_decay=params["weight_decay"],
        sync_batch_norm=bool(params.get("sync_batch_norm", True)),
        n_samples=n_samples, is_image=is_image,
        whiten=resolve_whiten(params.get("whiten", "auto"), sample_shape),
        compare_sizes=compares_sizes(params), **schedule,
        assigner=checked_assigner(params["assigner"], params["n_clusters"]), **graph,
        augment=augment, random_state=params["random_state"],
        warm_start=params["warm_start"], checkpoint=params["checkpoint"],
        num_workers=params["num_workers"], verbose=params["verbose"])


def _schedule(params, n_samples, n_processes):
    """Batch size, steps per epoch, epochs and self-label steps."""
    batch_size = int(_auto(params["batch_size"], min(
        AUTO_BATCH_SIZE, max(MIN_AUTO_BATCH_SIZE, n_samples // MIN_STEPS_PER_EPOCH))))
    batch_size = min(batch_size, n_samples)
    if batch_size < 2 * n_processes:
        raise ValueError(f"batch_size={batch_size} is shared by {n_processes} processes; "
                         "each needs at least 2 samples of a batch (BatchNorm), so "
                         f"batch_size must be at least {2 * n_processes}.")
    steps_per_epoch = n_batches(n_samples, batch_size, n_processes)
    max_epochs = int(_auto(params["max_epochs"], min(
        MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_STEPS / steps_per_epoch)))))
    n_label_updates = int(_auto(params["n_label_updates"], min(
        MAX_LABEL_UPDATES, max(MIN_LABEL_UPDATES, LABEL_UPDATE_SAMPLES // n_samples),
        MAX_LABEL_UPDATES_PER_EPOCH * max_epochs)))
    n_init = int(_auto(params["n_init"],
                       AUTO_N_INIT if max_epochs >= MIN_EPOCHS_TO_RESTART else 1))
    trial_epochs = min(max_epochs - 1, max(1, round(TRIAL_FRACTION * max_epochs)))
    return dict(batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                max_epochs=max_epochs, n_label_updates=n_label_updates,
                n_init=n_init if trial_epochs >= 1 else 1, trial_epochs=trial_epochs)


def auto_neighbor_features(sample_shape):
    """The neighbour space of ``neighbor_features="auto"`` for samples of this shape:
    gradient histograms for images of at least 16 x 16 pixels, else the inputs."""
    is_image = len(sample_shape) == 3
    return "gradients" if is_image and min(sample_shape[1:]) >= MIN_GRADIENT_SIDE else "input"


def _graph(params, n_samples, sample_shape):
    """Neighbours, neighbour views, diffusion steps and the neighbour space."""
    is_image = len(sample_shape) == 3
    n_neighbors = min(int(_auto(params["n_neighbors"], AUTO_NEIGHBORS)), n_samples - 1)
    neighbor_prob = float(_auto(params["neighbor_prob"],
                                IMAGE_NEIGHBOR_PROB if is_image else TABLE_NEIGHBOR_PROB))
    cluster_size = n_samples / params["n_clusters"]
    auto_steps = round(min(MAX_DIFFUSION_STEPS, max(
        MIN_DIFFUSION_STEPS, DIFFUSION_STEPS_AT_200 * math.sqrt(cluster_size / 200))))
    diffusion_steps = int(_auto(params["diffusion_steps"], auto_steps))
    feature_walk_steps = int(_auto(params["diffusion_steps"],
                                   min(auto_steps, MAX_FEATURE_WALK_STEPS)))
    features = params["neighbor_features"]
    if isinstance(features, str) and features == "auto":
        features = auto_neighbor_features(sample_shape)
    return dict(n_neighbors=n_neighbors, neighbor_prob=neighbor_prob,
                neighbor_features=features, diffusion_steps=diffusion_steps,
                feature_walk_steps=feature_walk_steps,
                neighbor_recall=float(params.get("neighbor_recall", NEIGHBOR_RECALL)))
