"""The fitted model of :class:`SelfLabelClusterer` as one unit of state.

A fit gathers every fitted attribute in a dict (the *model*) and :func:`commit` sets them
on the estimator together, replacing all the previous ones: a fit that fails before that
leaves the estimator exactly as it was. The same dicts serve callbacks (a snapshot of the
model mid-fit), inference and pickling.
"""
import copy
import warnings

import torch

from ._assigner import SinkhornAssigner
from ._backbones import build_network
from ._events import empty_history
from ._inference import head_logits
from ._inputs import InputScaling, inference_device
from ._sinkhorn import check_prior

# The default self-label step: SeLa's CIFAR temperature; labels are an argmax, so a
# marginal error of 1% leaves them balanced.
DEFAULT_LAM, DEFAULT_TOL = 10.0, 1e-2
# Everything fit sets: replaced together when a fit commits, never one by one.
FITTED = ("labels_", "self_labels_", "n_iter_", "history_", "backbone_", "heads_",
          "n_features_in_", "feature_names_in_", "_sample_shape", "_scaling", "_device",
          "_head_width", "_n_features_out")
# Layout of the pickled state; a pickle of another layout is refused with a clear message.
STATE_VERSION = 2


def default_assigner():
    """The assignment step used when ``assigner=None``."""
    return SinkhornAssigner(lam=DEFAULT_LAM, tol=DEFAULT_TOL)


def checked_assigner(assigner, n_clusters):
    """The assigner a fit uses (the default for None), with its parameters validated."""
    assigner = default_assigner() if assigner is None else assigner
    if callable(getattr(assigner, "_validate_params", None)):
        assigner._validate_params()
    if getattr(assigner, "prior", None) is not None:
        check_prior(assigner.prior, n_clusters)     # fail before training, not during it
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
                 "_n_features_out": n_out, "_scaling": InputScaling.fit(data.X),
                 "history_": empty_history()}
    model["backbone_"].to(device)
    model["heads_"].to(device)
    return model


def initial_labels(heads, n_samples, generator, device):
    """Balanced random labels (i mod K, permuted) per head, as in SeLa; the first
    self-label step replaces them before any gradient step."""
    return torch.stack([torch.randperm(n_samples, generator=generator) % head.out_features
                        for head in heads]).to(device)


def data_attributes(data):
    """The fitted attributes that describe the training data's form."""
    names = {} if data.feature_names_in is None else {"feature_names_in_": data.feature_names_in}
    return dict(n_features_in_=data.n_features_in, _sample_shape=data.sample_shape, **names)


def first_head_logits(model, X_t):
    """Logits of the first head (the one behind ``predict``) for a prepared tensor."""
    return head_logits(model["backbone_"], model["heads_"][0], X_t, model["_head_width"])


def balanced_log_likelihood(model, assigner, X_t):
    """Mean log-probability, under the first head, of the balanced labels ``assigner``
    gives the prepared tensor ``X_t`` (what :meth:`SelfLabelClusterer.score` returns)."""
    logits = first_head_logits(model, X_t).double()
    with warnings.catch_warnings():
        # A few samples cannot always meet the cluster sizes exactly; the labels are
        # still the best balanced guess, which is all the score needs.
        warnings.simplefilter("ignore", category=Warning)
        q = assigner.assign_tensor(logits, copy=True).labels
    return float(torch.log_softmax(logits, 1).gather(1, q[:, None]).mean())


def snapshot(model, data, X_t):
    """Fitted attributes of the network as it stands mid-fit (copies), for the fitted
    estimators that scikit-learn callbacks may ask for."""
    snap = dict(model, **data_attributes(data), _device=str(X_t.device))
    for name in ("backbone_", "heads_"):
        snap[name] = copy.deepcopy(model[name]).eval()
    snap["labels_"] = first_head_logits(snap, X_t).argmax(1).cpu().numpy()
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
