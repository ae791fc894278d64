"""Warm-started self-label steps: each head's solve starts from the duals of its previous
solve, only where they belong to the same problem, and that only changes the start."""
import numpy as np
import pytest
import torch
from torch import nn

from skselflabel import SelfLabelClusterer, SinkhornAssigner
from skselflabel._fit.labelling import SelfLabeller, WarmStart
from skselflabel.datasets import load_digits_images
from feeding import feeder_of

IMAGES = load_digits_images(return_X_y=True)[0]
# The estimator's default assigner.
DEFAULTS = dict(lam=10.0, tol=1e-2, size_tolerance=0.5)


def _network(n_clusters):
    torch.manual_seed(0)
    return (nn.Sequential(nn.Linear(4, 8), nn.ReLU()),
            nn.ModuleList(nn.Linear(8, k) for k in n_clusters))


def _data():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0, 0, 0], [4, 0, 0, 0], [0, 4, 0, 0]])
    return centres.repeat_interleave(30, 0) + torch.randn(90, 4, generator=g) * 0.5


def _recording(calls):
    """The default assigner, appending (logits as given, keywords, result) of each call to
    ``calls`` (a class of its own: the estimator may clone its assigner)."""
    class Recording(SinkhornAssigner):
        def assign_tensor(self, scores, **kwargs):
            logits = scores.clone()            # the solve overwrites them (copy=False)
            result = super().assign_tensor(scores, **kwargs)
            calls.append((logits, kwargs, result))
            return result
    return Recording(**DEFAULTS)


@pytest.fixture(scope="module")
def digits_fit():
    """The calls of a short fit on the digits images with 100 clusters, and the fit."""
    calls = []
    est = SelfLabelClusterer(n_clusters=100, max_epochs=3, n_init=1, random_state=0,
                             assigner=_recording(calls)).fit(IMAGES)
    return calls, est


def test_each_step_starts_from_the_previous_steps_duals(digits_fit):
    calls, est = digits_fit
    assert len(calls) >= 5
    assert calls[0][1]["init_log_v"] is None      # the first step has nothing to start from
    for (_, _, before), (_, kwargs, _) in zip(calls, calls[1:]):
        assert torch.equal(kwargs["init_log_v"], before.log_v)
    # history_ reports the latest step's iterations of each epoch (the last row: the final
    # step after training).
    iterations = [result.n_iter for _, _, result in calls]
    assert set(est.history_["label_iterations"]) <= set(iterations)
    assert est.history_["label_iterations"].iloc[-1] == iterations[-1]


def test_warm_steps_take_fewer_iterations_than_cold_ones_at_the_same_error(digits_fit):
    calls, _ = digits_fit
    cold_iter, warm_iter = [], []
    for logits, kwargs, warm in calls[1:]:
        cold = SinkhornAssigner(**DEFAULTS).assign_tensor(
            logits.clone(), **{**kwargs, "init_log_v": None})
        assert cold.marginal_error <= DEFAULTS["tol"]
        assert warm.marginal_error <= DEFAULTS["tol"]
        assert warm.n_iter <= cold.n_iter
        cold_iter.append(cold.n_iter)
        warm_iter.append(warm.n_iter)
        # The same problem: both keep the sizes the step allows.
        low = (1 - max(0.5, kwargs["min_size_tolerance"])) * len(logits) / 100
        for labels in (cold.labels, warm.labels):
            assert np.bincount(labels.numpy(), minlength=100).min() >= np.floor(low)
    assert sum(warm_iter) < 0.85 * sum(cold_iter), (warm_iter, cold_iter)


def test_the_switch_from_equal_to_estimated_sizes_starts_cold():
    # prior="auto" keeps equal sizes for the first fifth of training (AUTO_PRIOR_FROM),
    # then solves for estimated ones: another problem, so the duals are dropped once.
    calls = []
    assigner = _recording(calls)
    assigner.set_params(prior="auto")
    SelfLabelClusterer(n_clusters=10, max_epochs=3, n_init=1, random_state=0,
                       assigner=assigner).fit(IMAGES)
    started = [(kwargs["uniform"], kwargs["init_log_v"] is not None)
               for _, kwargs, _ in calls]
    first_estimated = [uniform for uniform, _ in started].index(False)
    assert first_estimated >= 2
    assert started[0] == (True, False)
    assert all(warm for _, warm in started[1:first_estimated])
    assert started[first_estimated] == (False, False)
    assert all(warm for _, warm in started[first_estimated + 1:])


def test_duals_of_another_width_or_size_setting_are_not_used():
    warm = WarmStart(uniform=False, log_v=torch.zeros(5, dtype=torch.float64))
    assert warm.start_for(5, uniform=False) is warm.log_v
    assert warm.start_for(3, uniform=False) is None
    assert warm.start_for(5, uniform=True) is None
    # In a labeller: duals of 5 clusters for a head of 3 start it cold, and its own follow.
    calls = []
    backbone, heads = _network(n_clusters=(3,))
    labeller = SelfLabeller(_recording(calls), None, 0)
    labeller.warm_starts = {0: warm}
    labels = torch.zeros((1, 90), dtype=torch.int64)
    for _ in range(2):
        labeller.relabel_(backbone, heads, 8, feeder_of(_data()), labels)
    assert calls[0][1]["init_log_v"] is None
    assert torch.equal(calls[1][1]["init_log_v"], calls[0][2].log_v)
    assert labeller.warm_starts[0].log_v.shape == (3,)


def test_an_interrupted_step_keeps_the_previous_duals():
    class Interrupting(SinkhornAssigner):
        calls = 0

        def assign_tensor(self, scores, **kwargs):
            type(self).calls += 1
            if type(self).calls == 4:                  # the second head of the second step
                raise KeyboardInterrupt
            return super().assign_tensor(scores, **kwargs)

    backbone, heads = _network(n_clusters=(3, 3))
    labeller = SelfLabeller(Interrupting(**DEFAULTS), None, 0)
    labels = torch.zeros((2, 90), dtype=torch.int64)
    labeller.relabel_(backbone, heads, 8, feeder_of(_data()), labels)
    before = {h: warm.log_v.clone() for h, warm in labeller.warm_starts.items()}
    with torch.no_grad():
        heads[0].weight.mul_(2.0)                      # another step's logits
    with pytest.raises(KeyboardInterrupt):
        labeller.relabel_(backbone, heads, 8, feeder_of(_data()), labels)
    assert sorted(labeller.warm_starts) == [0, 1]
    for h, log_v in before.items():
        assert torch.equal(labeller.warm_starts[h].log_v, log_v)


def test_the_labeller_state_round_trips_its_duals():
    backbone, heads = _network(n_clusters=(3, 4))
    labeller = SelfLabeller(SinkhornAssigner(**DEFAULTS), None, 0)
    labeller.relabel_(backbone, heads, 8, feeder_of(_data()), torch.zeros((2, 90),
                                                                          dtype=torch.int64))
    state = labeller.state()
    assert state["label_iterations"] == labeller.last_iterations >= 1
    again = SelfLabeller(SinkhornAssigner(**DEFAULTS), None, 0)
    again.restore(state)
    assert again.last_iterations == labeller.last_iterations
    assert again.last_moved == labeller.last_moved == state["label_moved"]
    for h in (0, 1):
        assert torch.equal(again.warm_starts[h].log_v, labeller.warm_starts[h].log_v)
        assert again.warm_starts[h].uniform == labeller.warm_starts[h].uniform
    # A checkpoint written before warm starts restores with none.
    old = {"label_error": 0.0, "proportions": None}
    again.restore(old)
    assert again.warm_starts == {} and again.last_iterations == 0 and again.last_moved == 0


def test_an_assigner_without_duals_solves_every_step_cold():
    seen = []

    class NoDuals:
        """Takes init_log_v but returns no log_v: nothing to start the next step from."""

        def assign_tensor(self, scores, *, uniform, copy, init_log_v=None):
            seen.append(init_log_v)
            result = SinkhornAssigner(**DEFAULTS).assign_tensor(scores, uniform=uniform,
                                                                copy=copy)
            return type("Result", (), {"labels": result.labels})()

    est = SelfLabelClusterer(n_clusters=10, max_epochs=2, n_init=1, random_state=0,
                             assigner=NoDuals()).fit(IMAGES[:300])
    assert len(seen) >= 3 and all(start is None for start in seen)
    assert (est.history_["label_iterations"] == 0).all()     # no n_iter reported
