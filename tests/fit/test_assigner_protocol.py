"""The assigner protocol (skselflabel.Assigner) is what the estimator calls, what the user
guide documents, and what fit checks: an assigner written from the user guide alone fits."""
import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from skselflabel import Assigner, SelfLabelClusterer, SinkhornAssigner
from skselflabel._fit import assigner_protocol
from skselflabel.metrics import cluster_accuracy

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "user_guide.md"
FAST = dict(max_epochs=3, random_state=0)


def _guide_section():
    text = GUIDE.read_text()
    return text.split("### Writing your own assigner", 1)[1].split("\n## ", 1)[0]


def _guide_assigner():
    """The assigner class of the user guide's section, defined by running its code block."""
    block = re.findall(r"```python\n(.*?)```", _guide_section(), flags=re.S)[0]
    namespace = {}
    exec(compile(block, str(GUIDE), "exec"), namespace)
    return block, namespace


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


def test_an_assigner_copied_from_the_user_guide_fits_digits(digits):
    block, namespace = _guide_assigner()
    assert "**" not in block            # nothing swallows keywords the protocol lacks
    assigner = namespace["clu"].assigner
    assert isinstance(assigner, Assigner)
    X, y = digits
    clu = SelfLabelClusterer(n_clusters=10, assigner=assigner, **FAST).fit(X)
    sizes = np.bincount(clu.self_labels_[0], minlength=10)
    assert sizes.min() > 0.5 * len(X) / 10          # balanced self-labels
    assert cluster_accuracy(y, clu.labels_) > 0.5   # and a clustering, not noise
    assert 0 <= clu.score(X) <= 1
    # Its results have no n_iter and no log_v: every step is solved from scratch.
    assert (clu.history_["label_iterations"] == 0).all()


def test_the_user_guide_documents_the_protocol_as_defined():
    section = _guide_section()
    keywords = [p.name for p in inspect.signature(Assigner.assign_tensor).parameters.values()
                if p.kind == p.KEYWORD_ONLY]
    assert keywords == ["uniform", "copy"]
    assert "assign_tensor(scores, *, uniform, copy)" in section
    for name in (*assigner_protocol.OPTIONAL_KEYWORDS, *assigner_protocol.OPTIONAL_FIELDS,
                 "labels"):
        assert f"`{name}`" in section, name
    # What the estimator passes is what the protocol lists, and SinkhornAssigner takes it.
    taken = inspect.signature(SinkhornAssigner.assign_tensor).parameters
    assert set(assigner_protocol.OPTIONAL_KEYWORDS) <= set(taken)


def test_a_subclass_overriding_one_method_works(digits):
    seen = []

    class Narrow(SinkhornAssigner):
        def assign_tensor(self, scores, *, uniform=False, copy=True):
            seen.append(uniform)
            return super().assign_tensor(scores, uniform=uniform, copy=copy)

    clu = SelfLabelClusterer(n_clusters=10, assigner=Narrow(lam=10.0, tol=1e-2), **FAST)
    clu.fit(digits[0])
    assert seen and clu.labels_.shape == (len(digits[0]),)


class _CountingAugment:
    """An augmentation that counts the training batches it sees."""

    def __init__(self):
        self.batches = 0

    def __call__(self, batch):
        self.batches += 1
        return batch


class NoCopy:
    def assign_tensor(self, scores, *, uniform):
        raise AssertionError("never called")


class NumpyLabels:
    def assign_tensor(self, scores, *, uniform, copy):
        return type("Result", (), {"labels": scores.argmax(1).numpy()})()


class OutOfRange:
    def assign_tensor(self, scores, *, uniform, copy):
        return type("Result", (), {"labels": scores.argmax(1) + scores.shape[1]})()


class NoLabels:
    def assign_tensor(self, scores, *, uniform, copy):
        return scores


@pytest.mark.parametrize("assigner, error, message", [
    (object(), ValueError, "assign_tensor"),
    (NoCopy(), TypeError, "does not take the keyword.*copy"),
    (NumpyLabels(), TypeError, "labels of type ndarray, not a torch.Tensor"),
    (OutOfRange(), TypeError, r"labels from \d+ to \d+ .*values in \[0, 10\)"),
    (NoLabels(), TypeError, "a Tensor without labels"),
])
def test_a_broken_assigner_fails_at_the_start_of_fit(digits, assigner, error, message):
    augment = _CountingAugment()
    est = SelfLabelClusterer(n_clusters=10, assigner=assigner, augment=augment, **FAST)
    with pytest.raises(error, match=message):
        est.fit(digits[0])
    assert augment.batches == 0              # before any gradient step
    assert not hasattr(est, "labels_")


def test_only_accepted_optional_keywords_are_passed():
    calls = []

    class TakesTolerance:
        def assign_tensor(self, scores, *, uniform, copy, min_size_tolerance=0.0):
            calls.append(min_size_tolerance)
            return SinkhornAssigner(lam=10.0).assign_tensor(scores, uniform=uniform, copy=copy)

    checked = assigner_protocol.check_assigner(TakesTolerance())
    result = checked.assign_tensor(torch.eye(4), uniform=True, copy=True,
                                   min_size_tolerance=0.7, previous_prior=[0.25] * 4,
                                   init_log_v=torch.zeros(4, dtype=torch.float64))
    assert calls == [0.7] and result.labels.tolist() == [0, 1, 2, 3]


def test_init_log_v_reaches_an_assigner_that_takes_keywords():
    seen = []

    class TakesAll:
        def assign_tensor(self, scores, *, uniform, copy, **optional):
            seen.append(sorted(optional))
            return SinkhornAssigner(lam=10.0).assign_tensor(scores, uniform=uniform, copy=copy)

    checked = assigner_protocol.check_assigner(TakesAll())
    checked.assign_tensor(torch.eye(4), uniform=True, copy=True, min_size_tolerance=0.0,
                          previous_prior=None, init_log_v=None)
    assert seen == [["init_log_v", "min_size_tolerance", "previous_prior"]]
