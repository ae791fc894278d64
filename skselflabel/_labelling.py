"""The self-label step of SeLa: embed, diffuse, solve, head by head.

With the network fixed, every head's logits on the whole (non-augmented) training set are
turned into balanced hard labels by the assignment step (:class:`SinkhornAssigner` by
default), after optional diffusion over the neighbour graph. Everything stays on the
training device: features and one head's logits live in buffers the labeller owns and
reuses from one step to the next, and the new labels are written into the label tensor in
place, without a trip through host memory.
"""
import warnings

import torch
from sklearn.exceptions import ConvergenceWarning

from ._inference import embed


class NonFiniteOutput(FloatingPointError):
    """The network gave NaN or inf on the training data at a self-label step.

    Raised instead of letting the solver blame its input ("scores contains NaN"): the
    estimator adds when it happened and what to try (see ``_model.diverged_training``).

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
    if not torch.isfinite(values).all():
        raise NonFiniteOutput(part, int((~torch.isfinite(values)).sum()), values.numel())


class _Buffers:
    """Reused storage: features (N, D), one head's logits (N, K), diffusion scratch (N, K)."""

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


class SelfLabeller:
    """Recomputes the self-labels of every head in place.

    Parameters
    ----------
    assigner : object with ``assign_tensor(scores, *, uniform, copy)``
        The balanced assignment step; the first head uses the assigner's own cluster
        proportions, auxiliary heads equal ones (``uniform=True``).
    graph : NeighborGraph or None
        Neighbour graph for diffusion.
    diffusion_steps : int
        Diffusion steps before each solve (0: none).
    """

    def __init__(self, assigner, graph, diffusion_steps):
        self.assigner = assigner
        self.graph = graph
        self.diffusion_steps = diffusion_steps if graph is not None else 0
        self.buffers = _Buffers()

    @torch.no_grad()
    def relabel_(self, backbone, heads, width, X_t, labels):
        """New labels of every head into ``labels`` (n_heads, N); returns the fraction of
        labels that changed, averaged over heads, as a float64 tensor on the device."""
        backbone.eval()
        heads.eval()
        n, device = X_t.shape[0], X_t.device
        features = embed(backbone, X_t, width, out=self.buffers.features(n, width, device))
        _check_finite(features, "backbone")
        changed = torch.zeros((), dtype=torch.float64, device=device)
        for h, head in enumerate(heads):
            logits = self.buffers.matrix("logits", n, head.out_features, device)
            torch.addmm(head.bias, features, head.weight.T, out=logits)
            _check_finite(logits, f"head {h}")
            if self.diffusion_steps > 0:
                scratch = self.buffers.matrix("scratch", n, head.out_features, device)
                self.graph.diffuse_(logits, self.diffusion_steps, scratch)
            with warnings.catch_warnings():
                # Labels are an argmax: a marginal error of a few percent leaves them
                # essentially balanced, so an unconverged solve is no reason to warn.
                warnings.simplefilter("ignore", ConvergenceWarning)
                new = self.assigner.assign_tensor(logits, uniform=h > 0, copy=False).labels
            changed += (new != labels[h]).float().mean().double()
            labels[h] = new
        return changed / len(heads)
