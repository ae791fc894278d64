"""An allocation failure injected into each large step of fit (the graph, the self-label
logits, the rounding, a training batch) and into score and predict gives a MemoryError that
names the step, the estimate, the limit and the parameters that lower the peak, and leaves
the fitted estimator as it was."""
import numpy as np
import pytest
import torch

from skselflabel import SelfLabelClusterer
from skselflabel._fit import graph, inference, labelling, training
from skselflabel._runtime.limits import ENV
from skselflabel._solver import sinkhorn

CPU_FAILURE = ("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate "
               "memory: you tried to allocate 2400000000 bytes. Error code 12 (Cannot "
               "allocate memory)")


def fail(*args, **kwargs):
    raise RuntimeError(CPU_FAILURE)


@pytest.fixture
def fitted(monkeypatch):
    monkeypatch.setenv(ENV, "256MiB")           # the limit the messages name, on any machine
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((400, 8)) + rng.integers(0, 4, (400, 1)) * 4).astype("f4")
    est = SelfLabelClusterer(4, max_epochs=2, random_state=0).fit(X)
    return est, X


def weights(est):
    return [t.clone() for module in (est.backbone_, est.heads_)
            for t in module.state_dict().values()]


def assert_refit_fails_and_leaves_the_model(est, X, *parts):
    labels, predicted, before = est.labels_.copy(), est.predict(X), weights(est)
    with pytest.raises(MemoryError) as err:
        est.fit(X)
    message = str(err.value)
    for part in ("SelfLabelClusterer.fit ran out of cpu memory in ",
                 "DefaultCPUAllocator: can't allocate memory",
                 "The estimate of SelfLabelClusterer.fit is ",
                 f"The limit: 256.0 MiB available under the tightest, ${ENV}=256MiB.") + parts:
        assert part in message, (part, message)
    assert np.array_equal(est.labels_, labels)
    assert np.array_equal(est.predict(X), predicted)
    assert all(torch.equal(a, b) for a, b in zip(weights(est), before))
    return message


def test_building_the_graph(fitted, monkeypatch):
    monkeypatch.setattr(graph, "nearest_neighbors", fail)
    assert_refit_fails_and_leaves_the_model(
        *fitted, "in building the neighbour graph (RuntimeError: ",
        "This step needs about ", "k-NN distance blocks",
        "(lower: n_samples, or n_neighbors=0 (no graph))")


def test_the_self_label_logits(fitted, monkeypatch):
    matrix = labelling._Buffers.matrix

    def logits_fail(self, name, n, k, device):
        if name == "logits":
            fail()
        return matrix(self, name, n, k, device)

    monkeypatch.setattr(labelling._Buffers, "matrix", logits_fail)
    assert_refit_fails_and_leaves_the_model(
        *fitted, "in the self-label step, head 0 of 1, its logits (RuntimeError: ",
        "logits of one head", "(lower: n_clusters or n_samples)")


def test_the_rounding_to_cluster_sizes(fitted, monkeypatch):
    monkeypatch.setattr(sinkhorn, "round_to_sizes", fail)
    assert_refit_fails_and_leaves_the_model(
        *fitted, "in the self-label step, head 0 of 1, rounding to cluster sizes",
        "This step needs about ", "label sizing")


def test_a_training_batch_cpu_or_cuda(fitted, monkeypatch):
    step, calls = training.Trainer._step, []

    def third_fails(self, xb, targets):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")
        return step(self, xb, targets)

    monkeypatch.setattr(training.Trainer, "_step", third_fails)
    est, X = fitted
    labels = est.labels_.copy()
    with pytest.raises(MemoryError, match=r"SelfLabelClusterer.fit ran out of cpu memory in "
                       r"training batch 3 of epoch 1 \(OutOfMemoryError: CUDA out of memory"
                       r".*weights, gradients and optimiser state .*\(lower: batch_size\)"):
        est.fit(X)
    assert np.array_equal(est.labels_, labels)
    monkeypatch.setattr(training.Trainer, "_step", fail)    # a warm start trains a copy
    assert_refit_fails_and_leaves_the_model(
        est.set_params(warm_start=True), X, "training batch 1 of epoch 1")


def test_score_and_predict(fitted, monkeypatch):
    est, X = fitted
    predicted, score = est.predict(X), est.score(X)
    monkeypatch.setattr(graph, "nearest_neighbors", fail)
    with pytest.raises(MemoryError, match=r"^SelfLabelClusterer.score ran out of cpu memory "
                       r"in building the neighbour graph \(RuntimeError: .*The estimate of "
                       r"SelfLabelClusterer.score is .*k-NN .*\(lower: n_samples"):
        est.score(X)
    monkeypatch.undo()
    monkeypatch.setenv(ENV, "256MiB")
    assert est.score(X) == score
    monkeypatch.setattr(inference, "map_padded", fail)
    for method, part in (("predict", "labels"), ("predict_proba", "logits and probabilities"),
                         ("transform", "representation")):
        with pytest.raises(MemoryError, match=rf"^SelfLabelClusterer.{method} ran out of cpu "
                           rf"memory \(RuntimeError: .*The estimate of SelfLabelClusterer."
                           rf"{method} is .*{part} "):
            getattr(est, method)(X)
    monkeypatch.undo()
    assert np.array_equal(est.predict(X), predicted)
