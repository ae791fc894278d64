"""The fitted state of :class:`SelfLabelClusterer`: the network and results a fit commits at
once, how they pickle (versioned, modules on the CPU) and how they load."""
import copy
from dataclasses import dataclass
import importlib
import inspect
import sys

import numpy as np
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .._data.checks import check_predict_input
from .._data.sources import Feeder
from .._runtime.allocation import record
from .._runtime.processes import inference_device
from .backbones import place_backbone

# Everything fit sets: replaced together when a fit commits, never one by one.
FITTED = ("labels_", "self_labels_", "cluster_sizes_", "n_iter_", "history_", "backbone_",
          "heads_", "n_features_in_", "feature_names_in_", "_sample_shape", "_scaling",
          "_device", "_head_width", "_n_features_out", "start_agreement_",
          "sizes_estimated_", "size_agreement_", "kmeans_agreement_")
# Layout of the pickled state; a pickle of another layout is refused with a clear message.
STATE_VERSION = 2
# Where classes of a fitted model lived before the package had folders: pickles of state
# format 2 name them there.
MOVED_MODULES = {"skselflabel._inputs": "skselflabel._data.input_scaling",
                 "skselflabel._backbones": "skselflabel._fit.backbones",
                 "skselflabel._augment": "skselflabel._data.augment"}


@dataclass
class FittedNetwork:
    """The trained network and what it needs to run: the heads' input width, the width of
    ``transform``'s output, the input scaling, the history of the fits that trained it and
    the shape of the samples it takes."""

    backbone: nn.Module
    heads: nn.ModuleList
    head_width: int
    n_features_out: int
    scaling: object              # InputScaling
    history: object              # pandas.DataFrame
    sample_shape: tuple


@dataclass
class FittedModel:
    """What a fit sets on the estimator (None: not set, as in a mid-fit snapshot)."""

    network: FittedNetwork
    labels: np.ndarray
    n_features_in: int
    feature_names_in: object     # ndarray of str, or None
    device: str
    self_labels: np.ndarray = None
    cluster_sizes: np.ndarray = None
    n_iter: int = None
    start_scores: np.ndarray = None   # the agreement of every start's trial (n_init > 1)
    sizes_estimated: bool = None      # whether cluster_sizes were estimated from the data
    size_scores: np.ndarray = None    # the agreement of equal and estimated sizes
    kmeans_scores: np.ndarray = None  # the agreement of the fit's partition and KMeans's

    def attributes(self):
        """The estimator's fitted attributes."""
        net = self.network
        found = dict(backbone_=net.backbone, heads_=net.heads, _head_width=net.head_width,
                     _n_features_out=net.n_features_out, _scaling=net.scaling,
                     history_=net.history, self_labels_=self.self_labels,
                     n_iter_=self.n_iter, cluster_sizes_=self.cluster_sizes,
                     _device=self.device, labels_=self.labels,
                     n_features_in_=self.n_features_in, _sample_shape=net.sample_shape,
                     feature_names_in_=self.feature_names_in,
                     start_agreement_=self.start_scores,
                     sizes_estimated_=self.sizes_estimated,
                     size_agreement_=self.size_scores,
                     kmeans_agreement_=self.kmeans_scores)
        return {name: value for name, value in found.items() if value is not None}


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
        add_new_parameters(self)
        place_modules(self)

    def _inference_input(self, X, needs=None):
        """``X`` checked and fed to the fitted model's device; ``needs(n_samples)`` is the
        memory the call will take (for the message of an allocation failure)."""
        check_is_fitted(self)
        source = check_predict_input(self, X, self.num_workers)
        feeder = Feeder(source, self._scaling, self.heads_[0].weight.device)
        if needs is not None:
            record([needs(feeder.n_samples)], feeder.device)
        return feeder

    def _fitted_network(self):
        """The committed network (the modules themselves), or None before a fit."""
        if not hasattr(self, "backbone_"):
            return None
        return FittedNetwork(self.backbone_, self.heads_, self._head_width,
                             self._n_features_out, self._scaling, self.history_,
                             self._sample_shape)


def add_new_parameters(estimator):
    """Give an unpickled estimator the constructor parameters added since it was pickled,
    at their defaults (a pickle of the same state format may predate a parameter)."""
    for name, param in inspect.signature(type(estimator).__init__).parameters.items():
        if param.default is not param.empty and name not in vars(estimator):
            setattr(estimator, name, param.default)


def place_modules(estimator):
    """Put an unpickled model's modules where they run here, in evaluation mode: on their
    training device if it exists on this machine, else on the CPU. Done once, at load,
    so that inference never moves them."""
    if hasattr(estimator, "labels_"):
        device = inference_device(estimator._device)
        place_backbone(estimator.backbone_, device).eval()
        estimator.heads_.to(device).eval()


def _tensors_of(module):
    yield from module.parameters()
    yield from module.buffers()


def alias_moved_modules():
    """Let pickles of state format 2 written before the folders find their classes."""
    for old, new in MOVED_MODULES.items():
        sys.modules.setdefault(old, importlib.import_module(new))
