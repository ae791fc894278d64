"""One stream of fit events, and the listeners that consume it.

The trainer reports what happens through :class:`EventStream`; it never prints, keeps a
history or knows about scikit-learn callbacks itself. Listeners:

* :class:`HistoryRecorder` builds ``history_``;
* :class:`skselflabel._progress.ProgressReporter` draws the ``verbose`` progress bar;
* :class:`SklearnCallbacks` forwards the events to scikit-learn's callbacks
  (``set_callbacks``, scikit-learn >= 1.9), one task per epoch.
"""
from dataclasses import dataclass

import pandas as pd

try:
    from sklearn.callback import CallbackSupportMixin
except ImportError:  # scikit-learn < 1.9 has no callbacks: nothing to support
    class CallbackSupportMixin:
        """Stand-in for scikit-learn >= 1.9's mixin (which adds ``set_callbacks``)."""

HISTORY_COLUMNS = ["epoch", "loss", "label_change", "label_error", "seconds"]


def empty_history():
    """``history_`` before the first epoch."""
    return pd.DataFrame(columns=HISTORY_COLUMNS)


@dataclass
class EpochRecord:
    """What one epoch did."""

    epoch: int            # counted over all fits of a warm-started estimator
    loss: float           # mean cross-entropy over steps and heads
    label_change: float   # fraction of labels the latest self-label step changed
    label_error: float    # its largest marginal error over heads (converged: <= tol)
    seconds: float        # wall time, self-labelling included


class FitListener:
    """Base class of listeners: every hook does nothing unless overridden."""

    def on_fit_begin(self, n_epochs, steps_per_epoch):
        """Training of ``n_epochs`` epochs of ``steps_per_epoch`` steps starts."""

    def on_epoch_begin(self, epoch):
        """Epoch ``epoch`` (1-based, within this fit) starts."""

    def on_batch_end(self, step):
        """Gradient step ``step`` (counted over the fit) is done (no host sync here)."""

    def on_relabel(self, head, n_heads):
        """The self-label step starts on head ``head`` (0-based) of ``n_heads``."""

    def on_epoch_end(self, record):
        """An epoch ended; return True to ask the trainer to stop after it."""

    def on_label_update(self, label_change, label_error, final):
        """The self-labels were recomputed (``final``: the step after training)."""

    def on_fit_end(self, status):
        """Training ended: ``status`` is "done", "interrupted" (Ctrl-C; the model is
        usable) or "failed" (an exception is on its way to the caller)."""


class EventStream:
    """Sends each event to every listener, in order."""

    def __init__(self, listeners):
        self.listeners = list(listeners)

    def fit_begin(self, n_epochs, steps_per_epoch):
        for listener in self.listeners:
            listener.on_fit_begin(n_epochs, steps_per_epoch)

    def epoch_begin(self, epoch):
        for listener in self.listeners:
            listener.on_epoch_begin(epoch)

    def batch_end(self, step):
        for listener in self.listeners:
            listener.on_batch_end(step)

    def relabel(self, head, n_heads):
        for listener in self.listeners:
            listener.on_relabel(head, n_heads)

    def epoch_end(self, record):
        """Returns whether a listener asked to stop."""
        stop = False
        for listener in self.listeners:
            stop |= bool(listener.on_epoch_end(record))
        return stop

    def label_update(self, label_change, label_error, final=False):
        for listener in self.listeners:
            listener.on_label_update(label_change, label_error, final)

    def fit_end(self, status):
        for listener in self.listeners:
            listener.on_fit_end(status)


class HistoryRecorder(FitListener):
    """Keeps one row per epoch; the final self-label step updates the last row's change."""

    def __init__(self):
        self.records = []

    def on_epoch_end(self, record):
        self.records.append(record)

    def on_label_update(self, label_change, label_error, final):
        if final and self.records:
            self.records[-1].label_change = label_change
            self.records[-1].label_error = label_error

    def frame(self, previous):
        """``history_``: the rows of earlier fits (warm start), then this fit's."""
        new = pd.DataFrame([[r.epoch, r.loss, r.label_change, r.label_error, r.seconds]
                            for r in self.records], columns=HISTORY_COLUMNS)
        if len(previous) == 0:
            return new
        return pd.concat([previous, new], ignore_index=True) if len(new) else previous


class SklearnCallbacks(FitListener):
    """scikit-learn callbacks (``est.set_callbacks(...)``): the fit is the root task and
    each epoch a subtask; a callback that returns True at an epoch's end stops training.

    ``snapshot`` is a callable giving the fitted attributes of the model as it stands
    (used, lazily, for callbacks that ask for a ``fitted_estimator``).
    """

    def __init__(self, estimator, X, y, snapshot):
        self.estimator, self.X, self.y, self.snapshot = estimator, X, y, snapshot
        self.root = self.task = None

    @staticmethod
    def supported(estimator):
        return hasattr(estimator, "_init_callback_context")

    def on_fit_begin(self, n_epochs, steps_per_epoch):
        self.root = self.estimator._init_callback_context(max_subtasks=n_epochs)
        self.root.call_on_fit_task_begin(estimator=self.estimator, X=self.X, y=self.y)

    def on_epoch_begin(self, epoch):
        self.task = self.root.subcontext(task_name="epoch")
        self.task.call_on_fit_task_begin(estimator=self.estimator, X=self.X, y=self.y)

    def on_epoch_end(self, record):
        task, self.task = self.task, None
        return task.call_on_fit_task_end(estimator=self.estimator, X=self.X, y=self.y,
                                         reconstruction_attributes=self.snapshot)

    def on_fit_end(self, status):
        if status == "failed":          # nothing to report on; teardown still happens
            return
        if self.task is not None:       # an epoch cut short by Ctrl-C
            self.task.call_on_fit_task_end(estimator=self.estimator, X=self.X, y=self.y)
        self.root.call_on_fit_task_end(estimator=self.estimator, X=self.X, y=self.y,
                                       reconstruction_attributes=self.snapshot)


def fit_events(estimator, history, X, y, snapshot, leader=True):
    """The event stream of one fit: its history, the ``verbose`` progress bar and, with
    scikit-learn >= 1.9, the estimator's scikit-learn callbacks. Of the processes of a
    data-parallel fit only the ``leader`` reports progress and calls the callbacks (the
    trainer shares a callback's request to stop with the others)."""
    from ._progress import ProgressReporter     # it listens to this module's events

    if not leader:
        return EventStream([history])
    listeners = [history] + ([ProgressReporter()] if estimator.verbose else [])
    if SklearnCallbacks.supported(estimator):
        listeners.append(SklearnCallbacks(estimator, X, y, snapshot))
    return EventStream(listeners)
