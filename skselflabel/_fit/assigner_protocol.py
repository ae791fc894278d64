"""The assigner protocol: what ``SelfLabelClusterer`` calls on its ``assigner``, defined once,
and its check when ``fit`` (or ``score``) starts and at the first self-label step."""
import inspect
from typing import Protocol, runtime_checkable

import torch

# Keywords the estimator passes when the assigner's assign_tensor accepts them (by name or
# through **kwargs); SinkhornAssigner uses all three.
OPTIONAL_KEYWORDS = ("min_size_tolerance", "previous_prior", "init_log_v")
# Fields of the result the estimator reads when they are there.
OPTIONAL_FIELDS = ("prior", "marginal_error", "n_iter", "n_moved", "log_v")


class AssignmentResult(Protocol):
    """What ``assign_tensor`` returns: any object with a ``labels`` attribute.

    Attributes
    ----------
    labels : torch.Tensor of shape (n_samples,), integer dtype
        The cluster of each row of ``scores``, in ``[0, n_clusters)``, on any device.
    prior : array-like of shape (n_clusters,), optional
        The cluster proportions the labels were solved for; with ``prior="auto"`` the
        estimator keeps them as ``cluster_sizes_`` and passes them back as
        ``previous_prior``. Without it the sizes are reported as equal.
    marginal_error : float, optional
        How far the assignment was from its cluster sizes (``history_["label_error"]``;
        0 without it).
    n_iter : int, optional
        Iterations the solve took (``history_["label_iterations"]``; 0 without it).
    n_moved : int, optional
        Labels moved off the plan's argmax to meet cluster sizes
        (``history_["label_moved"]``, as a share of the samples; 0 without it).
    log_v : torch.Tensor of shape (n_clusters,), optional
        The solve's column log-scalings (dual variables); the estimator passes them back
        as ``init_log_v`` at the head's next self-label step, where the assigner accepts
        that keyword.
    """

    labels: torch.Tensor


@runtime_checkable
class Assigner(Protocol):
    """The self-label step of :class:`~skselflabel.SelfLabelClusterer` (its ``assigner``).

    Any object with this method can be the ``assigner``;
    :class:`~skselflabel.SinkhornAssigner` is the default. ``fit`` checks it when it
    starts: the method must exist and take ``scores`` and the keywords ``uniform`` and
    ``copy``; and at the first self-label step, before any gradient step, it must return
    an object whose ``labels`` are an integer tensor with a cluster in
    ``[0, n_clusters)`` for every row. The user guide shows one written from scratch.

    The estimator also passes ``min_size_tolerance`` (a float: allow cluster sizes at
    least this far from their shares; early self-label steps widen it),
    ``previous_prior`` (the proportions of the previous step, for priors estimated from
    the data) and ``init_log_v`` (the ``log_v`` its result gave at the head's previous
    step, a float64 tensor on the training device, or None: a warm start for an iterative
    solver) to an ``assign_tensor`` that accepts them, by name or through ``**kwargs``,
    and only then: the signature is read once, when ``fit`` starts.
    """

    def assign_tensor(self, scores: torch.Tensor, *, uniform: bool,
                      copy: bool) -> AssignmentResult:
        """Balanced hard labels of the rows of ``scores``.

        Parameters
        ----------
        scores : torch.Tensor of shape (n_samples, n_clusters)
            A head's logits (higher is better), float32, on the training device.
        uniform : bool
            True: ask for equal cluster sizes (the estimator's auxiliary heads); False: the
            assigner's own sizes.
        copy : bool
            False: ``scores`` may be overwritten (the estimator passes False and does not
            read them afterwards).

        Returns
        -------
        result : AssignmentResult
            An object with ``labels``.
        """


def _accepted_keywords(method):
    """(keywords the method takes, whether it takes **kwargs); None where the signature
    cannot be read (a builtin), which is then trusted."""
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return None
    names = {p.name for p in params
             if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


class CheckedAssigner:
    """An assigner that passed :func:`check_assigner`: forwards ``assign_tensor`` with the
    optional keywords the wrapped one accepts, and nothing else, and checks the first
    result it returns."""

    def __init__(self, assigner, optional):
        self.assigner = assigner
        self.optional = frozenset(optional)
        self.verified = False

    def assign_tensor(self, scores, *, uniform, copy, **optional):
        passed = {k: v for k, v in optional.items() if k in self.optional}
        shape = tuple(scores.shape)
        result = self.assigner.assign_tensor(scores, uniform=uniform, copy=copy, **passed)
        if not self.verified:
            check_result(result, type(self.assigner).__name__, shape)
            self.verified = True
        return result

    def __getattr__(self, name):
        if name == "assigner":          # not set yet (copies, pickles)
            raise AttributeError(name)
        return getattr(self.assigner, name)


def check_assigner(assigner):
    """``assigner`` wrapped as a :class:`CheckedAssigner`, or a ``TypeError`` that names what
    it lacks: the method or a keyword."""
    name = type(assigner).__name__
    method = getattr(assigner, "assign_tensor", None)
    if not callable(method):
        raise TypeError(f"The assigner {name} has no assign_tensor method. An assigner needs "
                        "assign_tensor(scores, *, uniform, copy) returning an object with "
                        "labels (see skselflabel.Assigner).")
    accepted = _accepted_keywords(method)
    optional = OPTIONAL_KEYWORDS
    if accepted is not None:
        names, var_keyword = accepted
        missing = [k for k in ("uniform", "copy") if k not in names and not var_keyword]
        if missing:
            raise TypeError(f"{name}.assign_tensor does not take the keyword(s) "
                            f"{', '.join(missing)}: the estimator calls "
                            "assign_tensor(scores, uniform=..., copy=...) (see "
                            "skselflabel.Assigner).")
        optional = OPTIONAL_KEYWORDS if var_keyword else [k for k in OPTIONAL_KEYWORDS
                                                          if k in names]
    return CheckedAssigner(assigner, optional)


def check_result(result, name, shape):
    """A ``TypeError`` unless ``result.labels`` is an integer tensor with a cluster in
    ``[0, n_clusters)`` for each of the ``shape = (n_samples, n_clusters)`` rows."""
    n, k = shape
    labels = getattr(result, "labels", None)
    problem = None
    if labels is None:
        problem = f"a {type(result).__name__} without labels"
    elif not torch.is_tensor(labels):
        problem = f"labels of type {type(labels).__name__}, not a torch.Tensor"
    elif labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        problem = f"labels of dtype {labels.dtype}, not an integer dtype"
    elif tuple(labels.shape) != (n,):
        problem = f"labels of shape {tuple(labels.shape)}"
    elif n and (int(labels.min()) < 0 or int(labels.max()) >= k):
        problem = f"labels from {int(labels.min())} to {int(labels.max())}"
    if problem is not None:
        raise TypeError(f"{name}.assign_tensor returned {problem} for scores of shape "
                        f"({n}, {k}); it must return an object whose labels are an integer "
                        f"tensor of shape ({n},) with values in [0, {k}) (see "
                        "skselflabel.Assigner).")
