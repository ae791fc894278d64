"""The fit event stream: history, progress, and scikit-learn callbacks (>= 1.9)."""
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skselflabel import SelfLabelClusterer
from skselflabel._fit.events import (EpochRecord, EventStream, FitListener, HistoryRecorder,
                                 empty_history, history_frame)
from skselflabel._fit.resume import _record

callback = pytest.importorskip("sklearn.callback", reason="scikit-learn < 1.9 has no callbacks")


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:400] / 16.0, y[:400]


def test_history_rows_and_the_final_label_update():
    history = HistoryRecorder()
    history.on_epoch_end(EpochRecord(1, 2.0, 0.5, 0.01, 40, 0.1))
    history.on_label_update(0.3, 0.02, 7, final=False)   # mid-training: rows keep theirs
    history.on_epoch_end(EpochRecord(2, 1.0, 0.2, 0.01, 30, 0.1))
    history.on_label_update(0.05, 0.2, 9, final=True,    # after training: last row updated
                            label_moved=0.25)
    frame = history.frame(empty_history())
    assert list(frame.columns) == ["epoch", "loss", "label_change", "label_error",
                                   "label_iterations", "label_moved", "seconds"]
    assert frame["label_moved"].tolist() == [0.0, 0.25]
    assert frame["label_change"].tolist() == [0.5, 0.05]
    assert frame["label_error"].tolist() == [0.01, 0.2]
    assert frame["label_iterations"].tolist() == [40, 9]
    assert frame["label_iterations"].dtype == np.int64
    both = HistoryRecorder()
    both.on_epoch_end(EpochRecord(3, 0.5, 0.0, 0.0, 0, 0.1))
    assert both.frame(frame)["epoch"].tolist() == [1, 2, 3]      # warm start continues


def test_rows_of_a_checkpoint_written_before_label_moved_read_as_nan():
    old_rows = [[1, 2.0, 0.5, 0.01, 40, 0.1], [2, 1.0, 0.2, 0.01, 30, 0.1]]
    frame = history_frame(old_rows)
    assert frame["label_moved"].isna().all()
    record = _record(old_rows[1])           # this fit's rows in an older checkpoint
    assert record.seconds == 0.1 and np.isnan(record.label_moved)
    assert _record([2, 1.0, 0.2, 0.01, 30, 0.1, 0.25]).label_moved == 0.25
    assert frame["seconds"].tolist() == [0.1, 0.1]
    assert frame["label_iterations"].dtype == np.int64


def test_stream_calls_every_listener_and_any_can_stop():
    calls = []

    class Recorder(FitListener):
        def __init__(self, name, stop):
            self.name, self.stop = name, stop

        def on_epoch_end(self, record):
            calls.append(self.name)
            return self.stop

    stream = EventStream([Recorder("a", False), Recorder("b", True)])
    assert stream.epoch_end(EpochRecord(1, 0, 0, 0, 0, 0)) is True
    assert calls == ["a", "b"]
    stream = EventStream([Recorder("c", None)])
    assert stream.epoch_end(EpochRecord(1, 0, 0, 0, 0, 0)) is False


class Recording:
    """A scikit-learn callback that records each task it sees and can stop at an epoch."""

    max_propagation_depth = None

    def __init__(self, stop_at=None):
        self.tasks, self.fitted, self.stop_at = [], [], stop_at

    def setup(self, estimator, context):
        pass

    def teardown(self, estimator, context):
        pass

    def on_fit_task_begin(self, estimator, context, *, X=None, y=None):
        pass

    def on_fit_task_end(self, estimator, context, *, X=None, fitted_estimator=None):
        self.tasks.append((context.estimator_name, context.task_name, context.task_id))
        if context.task_name == "epoch" and fitted_estimator is not None:
            self.fitted.append(fitted_estimator.predict(X[:5]))
        return context.task_name == "epoch" and context.task_id + 1 == self.stop_at


def test_progress_bar_callback_shows_progress(digits, capsys):
    clu = SelfLabelClusterer(n_clusters=10, max_epochs=3, random_state=0)
    clu.set_callbacks(callback.ProgressBar()).fit(digits[0])
    out = capsys.readouterr()
    assert "SelfLabelClusterer - fit" in out.out + out.err
    assert "100%" in out.out + out.err


def test_callbacks_get_one_task_per_epoch_and_can_stop(digits):
    rec = Recording(stop_at=2)
    clu = SelfLabelClusterer(n_clusters=10, max_epochs=5, n_init=1, random_state=0)
    clu.set_callbacks(rec).fit(digits[0])
    epochs = [t for t in rec.tasks if t[1] == "epoch"]
    assert [t[2] for t in epochs] == [0, 1]                  # stopped after epoch 2 of 5
    assert rec.tasks[-1][1] == "fit" and clu.n_iter_ == 2
    # The fitted estimators handed to callbacks predict; the estimator itself is untouched.
    assert len(rec.fitted) == 2 and all(p.shape == (5,) for p in rec.fitted)
    np.testing.assert_array_equal(clu.predict(digits[0]), clu.labels_)


def test_callbacks_propagate_from_a_pipeline(digits, capsys):
    X, y = digits
    rec = Recording()
    pipe = make_pipeline(StandardScaler(), SelfLabelClusterer(n_clusters=10, max_epochs=3,
                                                              random_state=0),
                         LogisticRegression(max_iter=200))
    pipe.set_callbacks(rec).fit(X, y)
    epochs = [t for t in rec.tasks if t[:2] == ("SelfLabelClusterer", "epoch")]
    assert len(epochs) == 3
    pipe.set_callbacks(callback.ProgressBar()).fit(X, y)
    out = capsys.readouterr()
    assert "Pipeline - fit" in out.out + out.err
    assert "SelfLabelClusterer - fit" in out.out + out.err


def test_callbacks_hear_of_the_chosen_start_after_its_trial(digits):
    rec = Recording(stop_at=None)
    clu = SelfLabelClusterer(n_clusters=10, max_epochs=5, n_init=2, random_state=0)
    clu.set_callbacks(rec).fit(digits[0])
    epochs = [t for t in rec.tasks if t[1] == "epoch"]
    # A trial of one epoch per start; the four epochs after it are the callbacks' tasks.
    assert [t[2] for t in epochs] == [0, 1, 2, 3] and rec.tasks[-1][1] == "fit"
    assert clu.n_iter_ == 5 and list(clu.history_["epoch"]) == [1, 2, 3, 4, 5]
    assert clu.start_agreement_.shape == (2,)
