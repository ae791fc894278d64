"""The self-label step of SeLa: embed the training set, diffuse over the graph, and solve
for sized labels head by head, on the training device (the user guide's "The self-label
step")."""
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from .._runtime.allocation import memory_step
from .._runtime.interrupt import check_interrupt
from .._runtime.memory import FLOAT32, Need
from .._runtime.processes import SOLO
from .._solver.rounding import rounding_needs
from .._solver.sinkhorn import solver_needs
from .graph import diffusion_needs, graph_needs
from .inference import embed_shared

# Early self-label steps, made by a network that has learned little, may give clusters
# between 0 and 1 + EARLY_SIZE_TOLERANCE times their share; the allowance shrinks
# linearly with training progress down to the assigner's own size_tolerance. Unequal early
# labels that follow the data's neighbourhoods are part of how small-K fits find their
# clusters (the user guide's "Many clusters" measures it), while an untrained network
# with thousands of clusters would otherwise pile every sample into a few.
EARLY_SIZE_TOLERANCE = 2.0
# With prior="auto", the cluster proportions are estimated from this share of training on;
# before, the sizes stay equal: an untrained network's proportions are noise that the
# following steps would lock in.
AUTO_PRIOR_FROM = 0.2


class NonFiniteOutput(FloatingPointError):
    """The network gave NaN or inf on the training data at a self-label step.

    Raised instead of letting the solver blame its input ("scores contains NaN"): the
    estimator adds when it happened and what to try (see ``fit.diverged_training``).

    Attributes
    ----------
    part : str
        ``"backbone"`` (its features) or ``"head h"`` (that head's logits).
    n_bad, n_values : int
        Non-finite values, and values in all, of that output.
    """

    def __init__(self, part, n_bad, n_values):
        self.part, self.n_bad, self.n_values = part, n_bad, n_values
        super().__init__(f"the network's {part} output holds {n_bad} NaN or inf values out "
                         f"of {n_values} on the training data")


def _check_finite(values, part):
    n_bad = _count_non_finite(values)
    if n_bad:
        raise NonFiniteOutput(part, n_bad, values.numel())


def _count_non_finite(values):
    # A sum is finite when every value is, and far cheaper than an element-wise check;
    # only an infinite sum needs the element-wise count, which also clears finite values
    # so large that their sum overflowed.
    if torch.isfinite(values.sum()):
        return 0
    return int((~torch.isfinite(values)).sum())


class _Buffers:
    """Reused storage: features (N, D), one head's logits (N, K), diffusion scratch."""

    def __init__(self):
        self._features = None
        self._flat = {}

    def features(self, n, d, device):
        if self._features is None or self._features.shape != (n, d):
            self._features = torch.empty((n, d), device=device)
        return self._features

    def matrix(self, name, n, k, device):
        # One flat allocation sized for the widest head; each head uses a contiguous prefix.
        flat = self._flat.get(name)
        if flat is None or flat.numel() < n * k:
            flat = self._flat[name] = torch.empty(n * k, device=device)
        return flat[: n * k].view(n, k)


class WarmStart:
    """The column log-scalings (duals) of one head's latest solve, the starting point of its
    next one.

    Attributes
    ----------
    uniform : bool
        Whether that solve was for equal cluster sizes (asked for, or the assigner's own
        without a ``prior``).
    log_v : torch.Tensor of shape (n_clusters,), float64
        Its ``log_v``, on the training device.
    """

    def __init__(self, uniform, log_v):
        self.uniform, self.log_v = uniform, log_v

    def start_for(self, n_clusters, uniform):
        """The duals to start a solve of ``n_clusters`` columns with (``uniform``: for
        equal sizes), or None where they belong to another problem: other columns, or
        the switch between equal and estimated sizes of ``prior="auto"`` (new proportions
        at each later step keep the start: they move little from step to step, and the
        solve still stops at ``tol`` for the sizes it is given)."""
        if self.log_v.shape != (n_clusters,) or self.uniform != uniform:
            return None
        return self.log_v


class SelfLabeller:
    """Recomputes the self-labels of every head in place.

    Each head's solve starts from the duals of the head's previous solve (a warm start:
    consecutive steps differ by some training, so their duals are close), where the
    assigner accepts ``init_log_v`` and returns ``log_v``.

    Parameters
    ----------
    assigner : object with ``assign_tensor(scores, *, uniform, copy, min_size_tolerance,
    previous_prior, init_log_v)``
        The balanced assignment step (see :meth:`SinkhornAssigner.assign_tensor`); the
        first head uses the assigner's own cluster proportions, auxiliary heads equal ones
        (``uniform=True``).
    graph : NeighborGraph or None
        Neighbour graph for diffusion.
    diffusion_steps : int
        Diffusion steps before each solve (0: none), on each head's probabilities.
    team : skselflabel._runtime.processes.Team, default=one process
        The processes of a data-parallel fit, which share the embedding and the heads.
    feature_walk_steps : int, default=None
        Steps of the walk on the features instead, where a head has more clusters than
        there are features (None: ``diffusion_steps``).
    """

    def __init__(self, assigner, graph, diffusion_steps, team=SOLO, feature_walk_steps=None):
        self.assigner = assigner
        self.graph = graph
        self.diffusion_steps = diffusion_steps if graph is not None else 0
        self.feature_walk_steps = (self.diffusion_steps if feature_walk_steps is None
                                   or graph is None else feature_walk_steps)
        self.team = team
        self.buffers = _Buffers()
        # Largest marginal error over the heads of the latest step (a host float: no sync),
        # the most solver iterations a head took in it, and the largest share of a head's
        # labels that the size rounding moved.
        self.last_error = float("nan")
        self.last_iterations = 0
        self.last_moved = 0.0
        # Per head: the WarmStart of its next solve (its latest solve's duals).
        self.warm_starts = {}
        # Proportions the first head was last solved for (they change with prior="auto").
        self.proportions = None

    @torch.no_grad()
    def relabel_(self, backbone, heads, width, feeder, labels, events=None, progress=1.0):
        """New labels of every head into ``labels`` (n_heads, N) for the samples of
        ``feeder``; returns the fraction of labels that changed, averaged over heads, as a
        float64 tensor on the device. ``events`` hears of each head as it starts;
        ``progress`` (0 to 1) is how far training has got."""
        backbone.eval()
        heads.eval()
        with memory_step("the self-label step", lambda: label_step_needs(
                feeder.n_samples, max(head.out_features for head in heads), width,
                0 if self.graph is None else self.graph.indices.shape[1],
                self.diffusion_steps)):
            return self._relabel_heads(backbone, heads, width, feeder, labels, events,
                                           progress)

    def _relabel_heads(self, backbone, heads, width, feeder, labels, events, progress):
        n, device = feeder.n_samples, feeder.device
        with memory_step("embedding the training set"):
            features = embed_shared(backbone, feeder, width, self.team,
                                    out=self.buffers.features(n, width, device))
        _check_finite(features, "backbone")
        on_features = max(h.out_features for h in heads) > width
        if on_features and self.feature_walk_steps > 0:
            with memory_step("diffusing the features"):
                scratch = self.buffers.matrix("scratch", n, width, device)
                self.graph.walk_(features, self.feature_walk_steps, scratch)
        # Into ``labels`` only once every head has its labels: a Ctrl-C half-way through
        # the step leaves them as they were.
        new = torch.empty_like(labels)
        # Per head (each from the head's process): see _REPORT.
        report = torch.zeros((len(heads), len(_REPORT)), dtype=torch.float64)
        # The duals of this step: like the labels, kept only once the whole step is done.
        duals = {}
        for h in range(self.team.rank, len(heads), self.team.world):
            check_interrupt()
            if events is not None:
                events.relabel(h, len(heads))
            with memory_step(f"head {h} of {len(heads)}"):
                report[h] = self._assign(heads[h], h, features, on_features, progress, new[h],
                                         duals)
        self._share(new, report, heads, duals)
        self.last_error = max(0.0, float(report[:, _REPORT.index("error")].max()))
        self.last_iterations = int(report[:, _REPORT.index("iterations")].max())
        self.last_moved = float(report[:, _REPORT.index("moved")].max()) / n
        changed = torch.zeros((), dtype=torch.float64, device=device)
        for h in range(len(heads)):
            changed += (new[h] != labels[h]).float().mean().double()
        labels.copy_(new)
        return changed / len(heads)

    def _assign(self, head, h, features, on_features, progress, out, duals):
        """Labels of head ``h`` into ``out`` and its solve's duals into ``duals[h]``;
        returns its row of the report (see ``_REPORT``; the solve is skipped when some
        logits are not finite)."""
        n, device = features.shape[0], features.device
        with memory_step("its logits"):
            logits = self.buffers.matrix("logits", n, head.out_features, device)
            torch.addmm(head.bias, features, head.weight.T, out=logits)
        n_bad = _count_non_finite(logits)
        if n_bad:
            return torch.tensor([0.0, n_bad, logits.numel(), 0.0, 0.0, 0.0, 0.0],
                                dtype=torch.float64)
        if self.diffusion_steps > 0 and not on_features:
            with memory_step("diffusing its probabilities"):
                scratch = self.buffers.matrix("scratch", n, head.out_features, device)
                self.graph.diffuse_(logits, self.diffusion_steps, scratch)
        with warnings.catch_warnings():
            # A step that stops short of tol still gives sized labels; its error is
            # reported in history_ (label_error) instead of a warning per step.
            warnings.simplefilter("ignore", ConvergenceWarning)
            uniform = h > 0 or self._sizes_wait(progress)
            # Equal sizes whether asked for or the assigner's own: the same problem, so
            # the same duals (a run that waits to estimate sizes solves it too).
            equal = uniform or getattr(self.assigner, "prior", None) is None
            warm = self.warm_starts.get(h)
            start = None if warm is None else warm.start_for(head.out_features, equal)
            result = self.assigner.assign_tensor(
                logits, uniform=uniform, copy=False,
                previous_prior=self.proportions if h == 0 else None,
                min_size_tolerance=EARLY_SIZE_TOLERANCE * (1.0 - progress),
                init_log_v=None if start is None else start.to(device))
        if h == 0 and getattr(result, "prior", None) is not None:
            self.proportions = result.prior
        out.copy_(result.labels)
        log_v = _duals(result, head.out_features, device)
        if log_v is not None:
            duals[h] = log_v
        error = float(getattr(result, "marginal_error", 0))
        n_iter = float(getattr(result, "n_iter", 0))
        moved = float(getattr(result, "n_moved", 0))
        return torch.tensor([error, 0.0, logits.numel(), n_iter, log_v is not None, equal,
                             moved], dtype=torch.float64)

    def _sizes_wait(self, progress):
        """Whether cluster proportions that the assigner would estimate are kept equal at
        this point of training."""
        return self.estimates_sizes() and progress < AUTO_PRIOR_FROM

    def estimates_sizes(self):
        """Whether the assigner estimates the cluster proportions (``prior="auto"``)."""
        prior = getattr(self.assigner, "prior", None)
        return isinstance(prior, str) and prior == "auto"

    def _share(self, new, report, heads, duals):
        """Every head's labels, report and duals, and the first head's proportions, in
        every process (each head came from one), or the same NonFiniteOutput in all of
        them. The duals are shared so that the leader's checkpoint holds every head's."""
        n_clusters = heads[0].out_features
        self.team.sum_(report)
        bad = torch.nonzero(report[:, 1]).flatten()
        if len(bad):
            h = int(bad[0])
            raise NonFiniteOutput(f"head {h}", int(report[h, 1]), int(report[h, 2]))
        for h in range(new.shape[0]):
            self.team.broadcast_(new[h], src=h % self.team.world)
        for h in range(new.shape[0]):
            if not report[h, _REPORT.index("has_duals")]:
                # The assigner gave none: the head's next solve starts from scratch.
                self.warm_starts.pop(h, None)
                continue
            src = h % self.team.world
            log_v = duals[h] if src == self.team.rank else torch.empty(
                heads[h].out_features, dtype=torch.float64, device=new.device)
            if self.team.world > 1:
                self.team.broadcast_(log_v, src=src)
            self.warm_starts[h] = WarmStart(bool(report[h, _REPORT.index("uniform")]), log_v)
        # The first head is the leader's: its proportions (prior="auto") go to the others.
        if self.team.world > 1 and self.team.any_process(self.team.leader and
                                                 self.proportions is not None):
            proportions = (torch.as_tensor(self.proportions, dtype=torch.float64)
                           if self.team.leader else torch.empty(n_clusters,
                                                                dtype=torch.float64))
            self.proportions = self.team.broadcast_(proportions.to(new.device).clone())

    def state(self):
        """What a checkpoint keeps of the labeller: the latest step's error and
        iterations, the first head's proportions (``prior="auto"`` starts each estimate
        from them) and every head's duals (its next solve starts from them)."""
        return {"label_error": self.last_error,
                "label_iterations": self.last_iterations,
                "label_moved": self.last_moved,
                "proportions": (None if self.proportions is None
                                else torch.as_tensor(self.proportions).cpu()),
                "warm_starts": {h: {"uniform": warm.uniform, "log_v": warm.log_v.cpu()}
                                for h, warm in self.warm_starts.items()}}

    def restore(self, state):
        """Continue from :meth:`state` (the duals go to the training device when used)."""
        self.last_error = state["label_error"]
        self.last_iterations = state.get("label_iterations", 0)
        self.last_moved = state.get("label_moved", 0.0)
        self.proportions = state["proportions"]
        # A checkpoint written before warm starts has none: the next solves start cold.
        self.warm_starts = {int(h): WarmStart(bool(warm["uniform"]),
                                              warm["log_v"].to(torch.float64))
                            for h, warm in state.get("warm_starts", {}).items()}

    def sizes(self, n_clusters):
        """The proportions of the first head's last solve (equal if none was reported)."""
        if self.proportions is None:
            return np.full(n_clusters, 1.0 / n_clusters)
        return np.asarray(torch.as_tensor(self.proportions).cpu(), dtype=np.float64)


# The columns of a self-label step's report, one row per head.
_REPORT = ("error", "n_bad", "n_values", "iterations", "has_duals", "uniform", "moved")


def _duals(result, n_clusters, device):
    """The result's ``log_v`` as a float64 tensor of ``n_clusters`` on ``device`` (a copy),
    or None when it has none of that shape or one that is not finite where it matters."""
    log_v = getattr(result, "log_v", None)
    if log_v is None:
        return None
    log_v = torch.as_tensor(log_v).detach().to(device, torch.float64, copy=True)
    if (log_v.shape != (n_clusters,) or torch.isnan(log_v).any()
            or torch.isposinf(log_v).any()):
        return None
    return log_v


def label_step_needs(n, n_clusters, width, n_neighbors, diffusion_steps):
    """What a self-label step on ``n`` samples allocates: the graph it walks, the features,
    one head's logits at a time, the diffusion scratch, a solve and the sizing of labels."""
    needs = graph_needs(n, n_neighbors) + [
        Need("features", n * width * FLOAT32, "n_samples"),
        Need("logits of one head", n * n_clusters * FLOAT32, "n_clusters or n_samples")]
    if n_neighbors > 0 and diffusion_steps > 0:
        needs += diffusion_needs(n, min(n_clusters, width), n_neighbors)
    return needs + solver_needs(n, n_clusters) + rounding_needs(n)
