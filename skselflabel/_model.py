"""The fitted model of :class:`SelfLabelClusterer` as one unit of state.

A fit gathers every fitted attribute in a dict (the *model*) and :func:`commit` sets them
on the estimator together, replacing all the previous ones: a fit that fails before that
leaves the estimator exactly as it was. The same dicts serve callbacks (a snapshot of the
model mid-fit), inference and pickling.
"""
from contextlib import contextmanager
import copy
import math
import warnings

import numpy as np
import torch
from sklearn.utils import check_random_state

from ._assigner import SinkhornAssigner
from ._backbones import build_network
from ._descriptors import gradient_histograms
from ._events import empty_history
from ._distributed import SOLO
from ._inference import (embed, embed_shared, head_batches, head_labels, head_logits,
                         labels_from_features)
from ._inputs import InputScaling, inference_device
from ._labelling import NonFiniteOutput
from ._memory import fit_phases, require, score_phases
from ._solver_input import check_prior

# The default self-label step: SeLa's CIFAR temperature; labels are an argmax, so a
# marginal error of 1% leaves them balanced.
DEFAULT_LAM, DEFAULT_TOL = 10.0, 1e-2
DEFAULT_ROUNDING = 0.5
# Everything fit sets: replaced together when a fit commits, never one by one.
FITTED = ("labels_", "self_labels_", "cluster_sizes_", "n_iter_", "history_", "backbone_",
          "heads_",
          "n_features_in_", "feature_names_in_", "_sample_shape", "_scaling", "_device",
          "_head_width", "_n_features_out")
# Layout of the pickled state; a pickle of another layout is refused with a clear message.
STATE_VERSION = 2


def default_assigner():
    """The assignment step used when ``assigner=None``."""
    return SinkhornAssigner(lam=DEFAULT_LAM, tol=DEFAULT_TOL, size_tolerance=DEFAULT_ROUNDING)


def checked_assigner(assigner, n_clusters):
    """The assigner a fit uses (the default for None), with its parameters validated."""
    assigner = default_assigner() if assigner is None else assigner
    if callable(getattr(assigner, "_validate_params", None)):
        assigner._validate_params()
    prior = getattr(assigner, "prior", None)
    if prior is not None and not (isinstance(prior, str) and prior == "auto"):
        check_prior(prior, n_clusters)     # fail before training, not during it
    if getattr(assigner, "input", "logits") != "logits":
        raise ValueError("The assigner of SelfLabelClusterer receives logits; got an "
                         f"assigner with input={assigner.input!r}. Use input='logits'.")
    return assigner


def initial_model(estimator, data, generator, device):
    """The network (on ``device``), input scaling and history a fit starts from: copies of
    the current ones for a warm start on samples of the same shape, new ones otherwise."""
    if (estimator.warm_start and hasattr(estimator, "backbone_")
            and estimator._sample_shape == data.sample_shape):
        model = {name: copy.deepcopy(getattr(estimator, name)) for name in
                 ("backbone_", "heads_", "_scaling", "_head_width", "_n_features_out",
                  "history_")}
    else:
        backbone, heads, width, n_out = build_network(
            estimator.backbone, data.sample_shape, estimator.n_clusters, estimator.n_heads,
            generator)
        model = {"backbone_": backbone, "heads_": heads, "_head_width": width,
                 "_n_features_out": n_out, "_scaling": InputScaling.fit(data.source),
                 "history_": empty_history()}
    model["backbone_"].to(device)
    model["heads_"].to(device)
    return model


def fit_seeds(random_state):
    """Three seeds for a fit: drawn from ``random_state``, or for None from fresh entropy
    of the operating system, never from (nor advancing) numpy's global RNG."""
    if random_state is None:
        return np.random.default_rng().integers(0, 2**31 - 1, size=3)
    return check_random_state(random_state).randint(0, 2**31 - 1, size=3)


@contextmanager
def diverged_training(trainer, history, estimator):
    """Turn non-finite network outputs met by a self-label step into a FloatingPointError
    that says when it happened and what to try."""
    try:
        yield
    except NonFiniteOutput as exc:
        raise FloatingPointError(_divergence_message(exc, trainer, history,
                                                     estimator)) from None


def _divergence_message(exc, trainer, history, estimator):
    cfg = trainer.config
    counts = f"{exc.n_bad} NaN or inf values (out of {exc.n_values}) on the training data"
    if trainer.step == 0:
        return (f"The network's {exc.part} output holds {counts} before any training step: "
                "it produces them from the start. Check the backbone (a division by zero, the "
                "log of a non-positive number, an overflow) on inputs of this scale.")
    epoch = trainer.first_epoch + min(trainer.step // cfg.steps_per_epoch, cfg.max_epochs - 1)
    bad_loss = [r.epoch for r in history.records if not math.isfinite(r.loss)]
    since = f"; the loss was first NaN or inf in epoch {bad_loss[0]}" if bad_loss else ""
    return (f"Training diverged: the network's {exc.part} output holds {counts} at the "
            f"self-label step of epoch {epoch}, after {trainer.step} gradient steps{since}. "
            f"Lower lr (it is {cfg.lr:g} with optimizer={estimator.optimizer!r}), try "
            "optimizer='adam', or check the backbone for operations that overflow.")


def check_fit_memory(estimator, config, data, model, device):
    """Refuse, with a MemoryError that says why, a fit whose buffers do not fit ``device``
    (see :mod:`skselflabel._memory`); run before the large allocations."""
    d = math.prod(data.sample_shape)
    if (isinstance(config.neighbor_features, str) and config.neighbor_features == "gradients"
            and len(data.sample_shape) == 3):    # for tables the graph says what is wrong
        d = gradient_histograms(torch.zeros((1, *data.sample_shape))).shape[1]
    require(fit_phases(data.n_samples, d, estimator.n_clusters, estimator.n_heads,
                       model["_head_width"], config.n_neighbors, config.diffusion_steps),
            device, "SelfLabelClusterer.fit")


def initial_labels(heads, n_samples, generator, device):
    """Balanced random labels (i mod K, permuted) per head, as in SeLa; the first
    self-label step replaces them before any gradient step."""
    return torch.stack([torch.randperm(n_samples, generator=generator) % head.out_features
                        for head in heads]).to(device)


def data_attributes(data):
    """The fitted attributes that describe the training data's form."""
    names = {} if data.feature_names_in is None else {"feature_names_in_": data.feature_names_in}
    return dict(n_features_in_=data.n_features_in, _sample_shape=data.sample_shape, **names)


def first_head_logits(model, feeder):
    """Logits of the first head (the one behind ``predict``) for the feeder's samples."""
    return head_logits(model["backbone_"], model["heads_"][0], feeder, model["_head_width"])


def first_head_labels(model, feeder, team=SOLO):
    """Labels of the first head (``predict``) for the feeder's samples; with several
    processes in ``team``, each embeds its shard (every process gets every label)."""
    if team.world == 1:
        return head_labels(model["backbone_"], model["heads_"][0], feeder,
                           model["_head_width"])
    features = embed_shared(model["backbone_"], feeder, model["_head_width"], team)
    return labels_from_features(model["heads_"][0], features)


def balanced_log_likelihood(model, feeder, assigner):
    """Mean log-probability, under the first head, of the balanced labels of the feeder's
    samples.

    Holds one ``n x n_clusters`` float32 buffer: the logits' row log-normalisers are taken
    batch by batch, the assigner overwrites the logits (``copy=False``), and the logit of
    each sample's label is recomputed from the features in the same padded batches, so it
    is bit for bit the one the labels came from.
    """
    head, width = model["heads_"][0], model["_head_width"]
    n, k = feeder.n_samples, head.out_features
    require(score_phases(n, k, width), feeder.device, "SelfLabelClusterer.score")
    with torch.no_grad():
        features = embed(model["backbone_"], feeder, width)
        logits = torch.empty((n, k), device=features.device)
        log_norm = torch.empty(n, dtype=torch.float64, device=features.device)
        for start, batch in head_batches(head, features):
            logits[start:start + batch.shape[0]] = batch
            log_norm[start:start + batch.shape[0]] = torch.logsumexp(batch.double(), 1)
        with warnings.catch_warnings():
            # A few samples cannot always meet the cluster sizes exactly; the labels are
            # still the best balanced guess, which is all the score needs.
            warnings.simplefilter("ignore", category=Warning)
            labels = assigner.assign_tensor(logits, copy=False).labels
        del logits
        picked = torch.cat([batch.gather(1, labels[start:start + batch.shape[0], None])[:, 0]
                            for start, batch in head_batches(head, features)])
    return float((picked.double() - log_norm).mean())


def snapshot(model, data, feeder):
    """Fitted attributes of the network as it stands mid-fit (copies), for the fitted
    estimators that scikit-learn callbacks may ask for."""
    snap = dict(model, **data_attributes(data), _device=str(feeder.device))
    for name in ("backbone_", "heads_"):
        snap[name] = copy.deepcopy(model[name]).eval()
    snap["labels_"] = first_head_labels(snap, feeder).cpu().numpy()
    return snap


def commit(estimator, model):
    """Replace every fitted attribute of ``estimator`` at once by those of ``model``."""
    for name in FITTED:
        estimator.__dict__.pop(name, None)
    estimator.__dict__.update(model)


def pickled_state(state):
    """The state to pickle: versioned, with CPU modules so that a GPU model loads anywhere."""
    state = dict(state, _skselflabel_state=STATE_VERSION)
    for name in ("backbone_", "heads_"):
        if name in state and any(t.device.type != "cpu" for t in _tensors_of(state[name])):
            state[name] = copy.deepcopy(state[name]).cpu()
    return state


def checked_state(state):
    """The unpickled state, refused when a fitted model comes from another layout."""
    version = state.pop("_skselflabel_state", 1)
    if "labels_" in state and version != STATE_VERSION:
        raise ValueError(
            f"This SelfLabelClusterer was pickled with state format {version}; this version "
            f"of skselflabel reads format {STATE_VERSION}. Refit the model with this "
            "version (or load it with the skselflabel version that saved it).")
    return state


class FittedModelMixin:
    """The estimator's fitted state as a unit: fitted once a fit has committed, pickled as
    a versioned state with CPU modules, placed where they can run when unpickled."""

    def __sklearn_is_fitted__(self):
        return hasattr(self, "labels_")

    def __getstate__(self):
        return pickled_state(super().__getstate__())

    def __setstate__(self, state):
        super().__setstate__(checked_state(state))
        place_modules(self)


def place_modules(estimator):
    """Put an unpickled model's modules where they run here, in evaluation mode: on their
    training device if it exists on this machine, else on the CPU. Done once, at load,
    so that inference never moves them."""
    if hasattr(estimator, "labels_"):
        device = inference_device(estimator._device)
        estimator.backbone_.to(device).eval()
        estimator.heads_.to(device).eval()


def _tensors_of(module):
    yield from module.parameters()
    yield from module.buffers()
