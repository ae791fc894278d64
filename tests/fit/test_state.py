"""The fitted state as one unit: transactional fits, read-only inference, pickled state."""
import copy
import pickle

import numpy as np
import pytest
import torch

from skselflabel import SelfLabelClusterer
from skselflabel._fit.fit import fit_seeds
from skselflabel._fit.state import FITTED, MOVED_MODULES, STATE_VERSION, FittedNetwork


@pytest.fixture(scope="module")
def X():
    return np.random.RandomState(0).randn(200, 4).astype("float32")


@pytest.fixture
def fitted(X):
    return SelfLabelClusterer(3, max_epochs=2, random_state=0).fit(X)


def _outputs(est, X):
    return (est.labels_.copy(), est.predict(X), est.predict_proba(X), est.transform(X))


def _assert_same(before, after):
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_a_failing_refit_leaves_the_earlier_model_as_it_was(fitted, X):
    before, state = _outputs(fitted, X), dict(vars(fitted))

    def boom(batch):
        raise RuntimeError("augmentation failed")

    with pytest.raises(RuntimeError, match="augmentation failed"):
        fitted.set_params(augment=boom).fit(X * 10 + 5)
    _assert_same(before, _outputs(fitted, X))
    for name in FITTED:
        if name in state:
            assert vars(fitted)[name] is state[name], name
    assert (fitted.labels_ == fitted.predict(X)).mean() == 1.0


def test_ctrl_c_while_the_graph_is_built_leaves_the_earlier_model(fitted, X):
    before = _outputs(fitted, X)

    def interrupted(X_t):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fitted.set_params(neighbor_features=interrupted).fit(np.hstack([X, X]))
    _assert_same(before, _outputs(fitted, X))
    assert fitted.n_features_in_ == 4


@pytest.mark.parametrize("bad", ["input", "backbone", "prior"])
def test_other_failures_leave_the_model_too(fitted, X, bad):
    from torch import nn

    from skselflabel import SinkhornAssigner

    before = _outputs(fitted, X)
    params = {"input": {}, "backbone": {"backbone": lambda shape: nn.Linear(99, 3)},
              "prior": {"assigner": SinkhornAssigner(prior=[1, 2])}}[bad]
    data = np.full((10, 4), np.nan) if bad == "input" else X
    with pytest.raises((ValueError, TypeError, RuntimeError)):
        fitted.set_params(**params).fit(data)
    _assert_same(before, _outputs(fitted, X))


def test_warm_start_failure_does_not_touch_the_network(X):
    est = SelfLabelClusterer(3, max_epochs=2, random_state=0, warm_start=True).fit(X)
    weights = [p.detach().clone() for p in est.backbone_.parameters()]
    calls = []

    def boom(batch):
        calls.append(1)
        if len(calls) == 3:                 # after two gradient steps on the network
            raise RuntimeError("late failure")
        return batch

    with pytest.raises(RuntimeError):
        est.set_params(augment=boom).fit(X)
    assert all(torch.equal(a, b) for a, b in zip(weights, est.backbone_.parameters()))
    assert len(est.history_) == 2


def test_inference_never_changes_the_estimator(fitted, X):
    state = copy.deepcopy({k: v for k, v in vars(fitted).items()
                           if k not in ("backbone_", "heads_")})
    weights = copy.deepcopy(fitted.backbone_.state_dict())
    modes = [m.training for m in fitted.backbone_.modules()]
    fitted.predict(X), fitted.predict_proba(X), fitted.transform(X), fitted.score(X)
    after = {k: v for k, v in vars(fitted).items() if k not in ("backbone_", "heads_")}
    assert after.keys() == state.keys()
    assert all(torch.equal(a, b) for a, b in zip(weights.values(),
                                                 fitted.backbone_.state_dict().values()))
    assert modes == [m.training for m in fitted.backbone_.modules()]


def test_pickles_are_versioned(fitted, X):
    blob = pickle.dumps(fitted)
    np.testing.assert_array_equal(pickle.loads(blob).predict(X), fitted.labels_)
    state = fitted.__getstate__()
    assert state["_skselflabel_state"] == STATE_VERSION
    old = SelfLabelClusterer.__new__(SelfLabelClusterer)
    with pytest.raises(ValueError, match="state format 1.*reads format 2.*Refit"):
        old.__setstate__({k: v for k, v in state.items() if k != "_skselflabel_state"})
    # Unfitted estimators carry no model: any layout loads.
    assert pickle.loads(pickle.dumps(SelfLabelClusterer(4))).n_clusters == 4


def test_pickles_from_before_a_parameter_existed_load_with_its_default(fitted, X):
    old = copy.deepcopy(fitted)
    del old.neighbor_recall                 # as pickled before neighbor_recall existed
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded.neighbor_recall == SelfLabelClusterer().neighbor_recall
    assert loaded.score(X) == fitted.score(X)
    np.testing.assert_array_equal(loaded.predict(X), fitted.labels_)


def test_diverged_training_says_when_and_what_to_try(X, fitted):
    # Issue #10, item 5: "scores contains 600 NaN ... remove them before solving" blamed the
    # user's data for a network that diverged (SGD, lr=1e3).
    before = fitted.labels_.copy()
    with pytest.raises(FloatingPointError, match=r"Training diverged: .* at the self-label step "
                       r"of epoch \d+, after \d+ gradient steps.*Lower lr \(it is 1000 with "
                       r"optimizer='sgd'\)"):
        fitted.set_params(optimizer="sgd", lr=1e3, max_epochs=3).fit(X)
    assert np.array_equal(fitted.labels_, before)          # the failed fit changed nothing


def test_a_module_that_outputs_nan_is_named():
    class NaNNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 8)

        def forward(self, x):
            return self.linear(x) * float("nan")

    X = np.random.RandomState(0).randn(200, 4).astype("float32")
    with pytest.raises(FloatingPointError, match="backbone output holds 1600 NaN or inf.*"
                       "before any training step"):
        SelfLabelClusterer(3, max_epochs=1, backbone=NaNNet()).fit(X)


def test_random_state_none_leaves_numpys_global_rng_alone(X):
    # Issue #10, item 3: random_state=None drew its seeds from numpy's global RNG.
    np.random.seed(7)
    state = np.random.get_state()
    SelfLabelClusterer(3, max_epochs=1).fit(X)
    after = np.random.get_state()
    assert np.array_equal(after[1], state[1]) and after[2] == state[2]
    assert not np.array_equal(fit_seeds(None), fit_seeds(None))        # fresh each time
    np.testing.assert_array_equal(fit_seeds(0), np.random.RandomState(0).randint(
        0, 2**31 - 1, size=3))                                     # ints: as before


def test_the_fitted_network_is_read_off_the_committed_attributes(fitted):
    network = fitted._fitted_network()
    assert isinstance(network, FittedNetwork)
    assert network.backbone is fitted.backbone_ and network.heads is fitted.heads_
    assert (network.head_width, network.n_features_out) == (fitted._head_width,
                                                             fitted._n_features_out)
    assert network.sample_shape == fitted._sample_shape == (4,)
    assert network.history is fitted.history_ and network.scaling is fitted._scaling
    assert SelfLabelClusterer()._fitted_network() is None
    assert set(vars(fitted)) - set(SelfLabelClusterer().get_params()) <= set(FITTED)


def test_pickles_that_name_the_modules_of_before_the_folders_load(fitted, X, monkeypatch):
    # State format 2 was written when InputScaling lived in skselflabel._inputs and the
    # backbones in skselflabel._backbones; such pickles must still load.
    import sys

    from skselflabel._data.input_scaling import InputScaling
    from skselflabel._fit.backbones import MLP

    assert all(sys.modules[old].__name__ == new for old, new in MOVED_MODULES.items())
    monkeypatch.setattr(InputScaling, "__module__", "skselflabel._inputs")
    monkeypatch.setattr(MLP, "__module__", "skselflabel._backbones")
    blob = pickle.dumps(fitted)
    monkeypatch.undo()
    assert b"skselflabel._inputs" in blob and b"skselflabel._backbones" in blob
    np.testing.assert_array_equal(pickle.loads(blob).predict(X), fitted.labels_)
