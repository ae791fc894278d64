"""The checkpoint parameter: a fit that stops (Ctrl-C, a crash, a full disk) and is fitted
again resumes where it stopped and ends as an uninterrupted fit would; a checkpoint of another
fit, or one that cannot be written, is refused. (Kill -9:
tests/integration/test_kill_and_resume.py.)"""
import errno
import os
import signal
import threading
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from skselflabel import SelfLabelClusterer, SinkhornAssigner
from skselflabel._data.augment import resolve_augment
from skselflabel._fit import resume
from skselflabel._fit.graph import NeighborGraph
from skselflabel._runtime import checkpoint_file
from skselflabel._runtime.checkpoint_file import (CheckpointError, CheckpointWriteError,
                                                  read_checkpoint)
from disk_faults import failing_open

needs_main_thread = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="Ctrl-C is simulated with a signal, which only the main thread receives")


@pytest.fixture(scope="module")
def images():
    return load_digits().images[:600]


class Trap:
    """Image augmentation that does something else at its ``at``-th call: sends a Ctrl-C
    (SIGINT) to this process, or fails."""

    def __init__(self, at=0, action="ctrl-c"):
        self.at, self.action, self.calls = at, action, 0
        self.augment = resolve_augment("auto", is_image=True)

    def __repr__(self):               # the same in every fit: part of the fingerprint
        return "Trap()"

    def __call__(self, x, generator):
        self.calls += 1
        if self.calls == self.at and self.action == "ctrl-c":
            os.kill(os.getpid(), signal.SIGINT)
        if self.calls == self.at and self.action == "crash":
            raise RuntimeError("the machine went down")
        return self.augment(x, generator)


def _fit(X, **params):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = SelfLabelClusterer(n_clusters=10, max_epochs=3, random_state=0,
                                 **params).fit(X)
    return est, [str(w.message) for w in caught]


def _assert_same_fit(a, b):
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.self_labels_, b.self_labels_)
    cols = ["epoch", "loss", "label_change", "label_error", "label_iterations"]
    np.testing.assert_array_equal(a.history_[cols].to_numpy(), b.history_[cols].to_numpy())
    for p, q in zip(a.backbone_.state_dict().values(), b.backbone_.state_dict().values()):
        assert torch.equal(p, q)


@pytest.fixture(scope="module")
def uninterrupted(images):
    return _fit(images, augment=Trap())[0]


@needs_main_thread
def test_ctrl_c_leaves_a_checkpoint_and_the_next_fit_resumes_exactly(images, uninterrupted,
                                                                     tmp_path):
    path = tmp_path / "fit.ckpt"
    trap = Trap(at=13)                              # batch 5 of epoch 2 (8 per epoch)
    stopped, said = _fit(images, augment=trap, checkpoint=path)
    assert any("interrupted" in m and "resume" in m for m in said), said
    assert stopped.n_iter_ == 2 and path.exists()
    state = read_checkpoint(path.read_bytes(), path)
    assert (state["training"]["epoch"], state["training"]["epoch_steps"]) == (2, 5)
    assert len(state["history"]) == 1               # the open epoch is not in the history
    # The duals the next self-label step starts from (a fit resumed without them would
    # start that step cold and end elsewhere).
    assert state["training"]["warm_starts"][0]["log_v"].shape == (10,)
    trap.at = 0
    resumed, said = _fit(images, augment=trap, checkpoint=path)
    assert any("resumes from the checkpoint" in m and "batch 5 of 8 of epoch 2" in m
               for m in said), said
    _assert_same_fit(resumed, uninterrupted)
    assert not path.exists()                        # the fit completed


@needs_main_thread
def test_ctrl_c_inside_a_self_label_step_resumes_exactly(images, uninterrupted, tmp_path):
    class CtrlCOnce(SinkhornAssigner):
        calls = 0

        def assign_tensor(self, scores, **kwargs):
            type(self).calls += 1
            if type(self).calls == 5:          # of 9 steps, 3 per epoch: in epoch 2
                os.kill(os.getpid(), signal.SIGINT)
            return super().assign_tensor(scores, **kwargs)

    # The default assigner, spelled out: the same parameters as the uninterrupted fit's.
    assigner = CtrlCOnce(lam=10.0, tol=0.01, size_tolerance=0.5)
    path = tmp_path / "fit.ckpt"
    stopped, _ = _fit(images, augment=Trap(), assigner=assigner, checkpoint=path)
    assert stopped.n_iter_ < 3 and path.exists()
    saved = read_checkpoint(path.read_bytes(), path)["training"]
    assert saved["labels_step"] < saved["step"]     # the step that was cut short is redone
    resumed, _ = _fit(images, augment=Trap(), assigner=assigner, checkpoint=path)
    _assert_same_fit(resumed, uninterrupted)


def test_a_crash_resumes_from_the_last_checkpoint(images, uninterrupted, tmp_path,
                                                  monkeypatch):
    # Every self-label step writes one (as on long epochs): the crash, in the middle of
    # epoch 2, finds a checkpoint in the middle of the epoch.
    monkeypatch.setattr(resume, "LABEL_UPDATE_SECONDS", 0.0)
    path = tmp_path / "fit.ckpt"
    with pytest.raises(RuntimeError, match="went down"):
        _fit(images, augment=Trap(at=12, action="crash"), checkpoint=path)
    state = read_checkpoint(path.read_bytes(), path)["training"]
    assert state["epoch"] == 2 and 0 < state["epoch_steps"] < 8
    resumed, said = _fit(images, augment=Trap(), checkpoint=path)
    assert any("resumes" in m for m in said)
    _assert_same_fit(resumed, uninterrupted)


def test_estimated_cluster_proportions_resume_too(images, tmp_path, monkeypatch):
    # prior="auto" starts each step's estimate from the previous step's proportions.
    monkeypatch.setattr(resume, "LABEL_UPDATE_SECONDS", 0.0)
    params = dict(assigner=SinkhornAssigner(lam=10.0, tol=0.01, prior="auto"),
                  n_label_updates=6)
    reference, _ = _fit(images, augment=Trap(), **params)
    path = tmp_path / "fit.ckpt"
    with pytest.raises(RuntimeError, match="went down"):
        _fit(images, augment=Trap(at=14, action="crash"), checkpoint=path, **params)
    assert read_checkpoint(path.read_bytes(), path)["training"]["proportions"] is not None
    resumed, _ = _fit(images, augment=Trap(), checkpoint=path, **params)
    _assert_same_fit(resumed, reference)
    np.testing.assert_array_equal(resumed.cluster_sizes_, reference.cluster_sizes_)
    assert not np.allclose(reference.cluster_sizes_, 0.1)      # they were estimated


@pytest.fixture
def stopped_checkpoint(images, tmp_path):
    """A checkpoint left by a crash after epoch 1."""
    path = tmp_path / "fit.ckpt"
    with pytest.raises(RuntimeError):
        _fit(images, augment=Trap(at=12, action="crash"), checkpoint=path)
    return path


@pytest.mark.parametrize("change, named", [
    (dict(params=dict(n_clusters=5)), "parameter n_clusters: 10 in the checkpoint, 5 now"),
    (dict(params=dict(lr=0.01)), "parameter lr: 'auto' in the checkpoint, 0.01 now"),
    (dict(params=dict(assigner=SinkhornAssigner(lam=5.0))), "parameter assigner: None in"),
    (dict(data=lambda X: X + 1), "data sample"),
    (dict(data=lambda X: X[:500]), "data shape: (600, 1, 8, 8) in the checkpoint, "
                                   "(500, 1, 8, 8) now"),
    (dict(data=lambda X: X.astype(np.float32)), "data dtype: float64 in the checkpoint, "
                                                "float32 now"),
])
def test_a_checkpoint_of_another_fit_is_refused_naming_the_difference(
        images, stopped_checkpoint, change, named):
    before = stopped_checkpoint.read_bytes()
    fitted = SelfLabelClusterer(n_clusters=3, max_epochs=1, random_state=0).fit(
        np.random.default_rng(0).standard_normal((60, 4)))
    labels, params = fitted.labels_, dict(augment=Trap(), checkpoint=stopped_checkpoint)
    params.update(change.get("params", {}))
    X = change.get("data", lambda X: X)(images)
    with pytest.raises(CheckpointError, match="written by a different fit") as err:
        fitted.set_params(max_epochs=3, **params).fit(X)
    assert named in str(err.value)
    assert "fit_" not in str(err.value) and "Pass another checkpoint path" in str(err.value)
    assert stopped_checkpoint.read_bytes() == before      # never overwritten
    assert fitted.labels_ is labels                      # the earlier model is kept


def test_settings_that_do_not_change_the_result_may_change(images, uninterrupted,
                                                           stopped_checkpoint):
    resumed, said = _fit(images, augment=Trap(), checkpoint=str(stopped_checkpoint),
                         verbose=0, n_jobs=1, device="cpu")
    assert any("resumes" in m for m in said)
    _assert_same_fit(resumed, uninterrupted)


def test_a_truncated_checkpoint_stops_fit_with_a_clear_error(images, stopped_checkpoint):
    data = stopped_checkpoint.read_bytes()
    stopped_checkpoint.write_bytes(data[:len(data) // 3])
    with pytest.raises(CheckpointError, match="is incomplete: it holds"):
        _fit(images, augment=Trap(), checkpoint=stopped_checkpoint)


def test_a_completed_fit_leaves_no_checkpoint(tmp_path):
    X = np.random.default_rng(0).standard_normal((100, 4))
    path = tmp_path / "fit.ckpt"
    est, said = _fit(X, checkpoint=path)
    assert not path.exists() and not any("resumes" in m for m in said)
    assert est.get_params()["checkpoint"] == path        # the parameter is kept as given


def test_the_checkpoint_folder_must_exist(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        _fit(np.ones((20, 2)), checkpoint=tmp_path / "no" / "fit.ckpt")


def test_fingerprints_describe_values_by_what_they_are():
    describe = resume.describe
    assert describe(np.int64(3)) == describe(3) == "3"
    assert describe(None) == "None" and describe("auto") == "'auto'"
    assert describe(np.random.RandomState(0)) == "a RandomState instance"
    a = describe(torch.nn.Linear(2, 2))
    assert a.startswith("Linear module, weights sha256") and a != describe(torch.nn.Linear(2, 2))
    assert describe([1.0, 2.0]) != describe([1.0, 3.0])
    assert describe(np.sum) == "numpy.sum"
    assert describe(SinkhornAssigner(prior=[1, 2])) != describe(SinkhornAssigner(prior=[2, 1]))


def test_a_checkpoint_write_that_fails_half_way_keeps_the_previous_one(
        images, uninterrupted, tmp_path, monkeypatch):
    # A full disk in the middle of the second write (the end of epoch 2): fit stops naming
    # the file and the cause; the first checkpoint is intact, no temporary file is left,
    # and fitting again resumes from it to the uninterrupted fit's end.
    path = tmp_path / "fit.ckpt"
    # Writes: 1, the check when fit starts; 2, the end of epoch 1; 3, the end of epoch 2.
    monkeypatch.setattr(checkpoint_file, "open", failing_open(errno.ENOSPC, at=3),
                        raising=False)
    with pytest.raises(OSError, match=rf"The checkpoint '{path}' could not be written: No "
                       r"space left on device \(ENOSPC\)") as err:
        _fit(images, augment=Trap(), checkpoint=path)
    assert isinstance(err.value, CheckpointWriteError) and err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["fit.ckpt"]
    assert read_checkpoint(path.read_bytes(), path)["training"]["epoch"] == 2
    resumed, said = _fit(images, augment=Trap(), checkpoint=path)
    assert any("resumes from the checkpoint" in m and "epoch 2" in m for m in said), said
    _assert_same_fit(resumed, uninterrupted)
    assert not path.exists()


def test_a_checkpoint_that_cannot_be_written_is_refused_before_training(
        images, tmp_path, monkeypatch):
    def no_graph(*args, **kwargs):
        raise AssertionError("the graph was built")

    monkeypatch.setattr(checkpoint_file, "open", failing_open(errno.EACCES), raising=False)
    monkeypatch.setattr(NeighborGraph, "build", no_graph)
    with pytest.raises(ValueError, match=r"checkpoint='.*fit.ckpt' cannot be written: "
                       r"Permission denied \(EACCES\)"):
        _fit(images, checkpoint=tmp_path / "fit.ckpt")
    assert list(tmp_path.iterdir()) == []
