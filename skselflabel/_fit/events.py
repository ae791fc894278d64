"""Fit events: the trainer reports what happens through one :class:`EventStream`, and its
listeners keep ``history_``, draw the ``verbose`` progress bar and call scikit-learn's
callbacks."""
from dataclasses import dataclass
import sys

import pandas as pd

try:
    from sklearn.callback import CallbackSupportMixin
except ImportError:  # scikit-learn < 1.9 has no callbacks: nothing to support
    class CallbackSupportMixin:
        """Stand-in for scikit-learn >= 1.9's mixin (which adds ``set_callbacks``)."""

HISTORY_COLUMNS = ["epoch", "loss", "label_change", "label_error", "label_iterations",
                   "label_moved", "seconds"]
# Columns of whole numbers (rows read back from a checkpoint come as floats).
_INTEGER_COLUMNS = ("epoch", "label_iterations")


def empty_history():
    """``history_`` before the first epoch."""
    return pd.DataFrame(columns=HISTORY_COLUMNS)


def history_frame(rows):
    """``history_`` from rows of :data:`HISTORY_COLUMNS` values, whole-number columns as
    integers (rows of a checkpoint written before ``label_moved`` existed lack it: NaN)."""
    if rows and len(rows[0]) == len(HISTORY_COLUMNS) - 1:
        older = [name for name in HISTORY_COLUMNS if name != "label_moved"]
        frame = pd.DataFrame(rows, columns=older).reindex(columns=HISTORY_COLUMNS)
    else:
        frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    # Rows of a model fitted before a column existed hold NaN there: those stay floats.
    return frame.astype({name: "int64" for name in _INTEGER_COLUMNS
                         if not frame[name].isna().any()})


@dataclass
class EpochRecord:
    """What one epoch did."""

    epoch: int            # counted over all fits of a warm-started estimator
    loss: float           # mean cross-entropy over steps and heads
    label_change: float   # fraction of labels the latest self-label step changed
    label_error: float    # its largest marginal error over heads (converged: <= tol)
    label_iterations: int  # the most solver iterations a head took in that step
    seconds: float        # wall time, self-labelling included
    label_moved: float = 0.0  # largest share of a head's labels the size rounding moved


class FitListener:
    """Base class of listeners: every hook does nothing unless overridden."""

    def on_fit_begin(self, n_epochs, steps_per_epoch, first_epoch=1):
        """Training of ``n_epochs`` epochs of ``steps_per_epoch`` steps starts (or goes on,
        from epoch ``first_epoch``: after a start's trial, or from a checkpoint)."""

    def on_epoch_begin(self, epoch):
        """Epoch ``epoch`` (1-based, within this fit) starts."""

    def on_batch_end(self, step):
        """Gradient step ``step`` (counted over the fit) is done (no host sync here)."""

    def on_relabel(self, head, n_heads):
        """The self-label step starts on head ``head`` (0-based) of ``n_heads``."""

    def on_epoch_end(self, record):
        """An epoch ended; return True to ask the trainer to stop after it."""

    def on_label_update(self, label_change, label_error, label_iterations, final,
                        label_moved=0.0):
        """The self-labels were recomputed (``final``: the step after training)."""

    def on_fit_end(self, status):
        """Training ended: ``status`` is "done", "interrupted" (Ctrl-C; the model is
        usable) or "failed" (an exception is on its way to the caller)."""


class EventStream:
    """Sends each event to every listener, in order."""

    def __init__(self, listeners):
        self.listeners = list(listeners)

    def fit_begin(self, n_epochs, steps_per_epoch, first_epoch=1):
        for listener in self.listeners:
            listener.on_fit_begin(n_epochs, steps_per_epoch, first_epoch)

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

    def label_update(self, label_change, label_error, label_iterations, final=False,
                     label_moved=0.0):
        for listener in self.listeners:
            listener.on_label_update(label_change, label_error, label_iterations, final,
                                     label_moved)

    def fit_end(self, status):
        for listener in self.listeners:
            listener.on_fit_end(status)


class HistoryRecorder(FitListener):
    """Keeps one row per epoch; the final self-label step updates the last row's change."""

    def __init__(self):
        self.records = []

    def on_epoch_end(self, record):
        self.records.append(record)

    def on_label_update(self, label_change, label_error, label_iterations, final,
                        label_moved=0.0):
        if final and self.records:
            self.records[-1].label_change = label_change
            self.records[-1].label_error = label_error
            self.records[-1].label_iterations = label_iterations
            self.records[-1].label_moved = label_moved

    def frame(self, previous):
        """``history_``: the rows of earlier fits (warm start), then this fit's."""
        new = history_frame([[r.epoch, r.loss, r.label_change, r.label_error,
                              r.label_iterations, r.label_moved, r.seconds]
                             for r in self.records])
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

    def on_fit_begin(self, n_epochs, steps_per_epoch, first_epoch=1):
        # The epochs this fit trains (a start's trial and a checkpoint's epochs are done).
        self.root = self.estimator._init_callback_context(
            max_subtasks=n_epochs - first_epoch + 1)
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


# ---------------------------------------------------------------------------- progress
class _LineProgress:
    """Fallback that prints one line per epoch."""

    def __init__(self, n_epochs, desc):
        self.n_epochs, self.desc = n_epochs, desc

    def step(self, step):
        pass

    def note(self, stats):
        pass

    def epoch(self, epoch, stats):
        fields = "  ".join(f"{k}={v}" for k, v in stats.items() if k != "epoch")
        print(f"{self.desc} epoch {epoch}/{self.n_epochs}  {fields}", file=sys.stdout,
              flush=True)

    def close(self):
        pass


class _TqdmProgress:
    """A tqdm bar over gradient steps; tqdm itself limits how often it redraws."""

    def __init__(self, bar):
        self.bar = bar

    def step(self, step):
        self.bar.update(step - self.bar.n)

    def note(self, stats):
        self.bar.set_postfix(stats)

    def epoch(self, epoch, stats):
        self.bar.set_postfix(stats)

    def close(self):
        self.bar.close()


def _in_jupyter_kernel():
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def tqdm_class():
    """tqdm's text bar, in a terminal and in Jupyter alike (Jupyter redraws it in place).
    ``tqdm.auto`` would draw an ipywidgets widget in Jupyter, which no test can draw and
    the documentation cannot show offline, and warns "IProgress not found" without
    ipywidgets. ImportError without tqdm."""
    from tqdm.std import tqdm

    return tqdm


def _redraws_in_place(stream):
    """Whether a bar redrawn with carriage returns shows as one line: a terminal, or a
    Jupyter kernel's output (not a pipe or a log file)."""
    isatty = getattr(stream, "isatty", None)
    return _in_jupyter_kernel() or bool(isatty and isatty())


def make_progress(n_epochs, steps_per_epoch, desc="SelfLabelClusterer"):
    """A tqdm bar over gradient steps (see :func:`tqdm_class`) when tqdm is importable and
    stderr redraws in place, else plain lines on stdout, one per epoch."""
    if not _redraws_in_place(sys.stderr):
        return _LineProgress(n_epochs, desc)
    try:
        tqdm = tqdm_class()
    except ImportError:
        return _LineProgress(n_epochs, desc)
    return _TqdmProgress(tqdm(total=n_epochs * steps_per_epoch, desc=desc, unit="batch",
                              leave=True))


class ProgressReporter(FitListener):
    """The ``verbose=1`` listener: a bar over all gradient steps that moves with every
    batch, shows the epoch's loss and label change, and names the head being self-labelled
    during self-label steps (a tqdm bar; without tqdm, or when stderr is a pipe or a file,
    one line per epoch)."""

    def __init__(self, desc="SelfLabelClusterer"):
        self.desc = desc
        self.progress = None
        self.stats = {}

    def on_fit_begin(self, n_epochs, steps_per_epoch, first_epoch=1):
        self.progress = make_progress(n_epochs, steps_per_epoch, self.desc)

    def on_batch_end(self, step):
        self.progress.step(step)

    def on_relabel(self, head, n_heads):
        self.progress.note({**self.stats, "self-labelling": f"head {head + 1}/{n_heads}"})

    def on_epoch_end(self, record):
        self.stats = {"epoch": record.epoch, "loss": f"{record.loss:.4f}",
                      "change": f"{record.label_change:.3f}"}
        self.progress.epoch(record.epoch, self.stats)

    def on_fit_end(self, status):
        self.progress.close()


def fit_events(estimator, X, y, history, snapshot, verbose=0, leader=True):
    """The event stream of one fit: its ``history``, the ``verbose`` progress bar and, with
    scikit-learn >= 1.9, the estimator's scikit-learn callbacks (``snapshot`` gives them
    the model as it stands). Of the processes of a data-parallel fit only the ``leader``
    reports progress and calls the callbacks (the trainer shares a callback's request to
    stop with the others)."""
    if not leader:
        return EventStream([history])
    listeners = [history] + ([ProgressReporter()] if verbose else [])
    if SklearnCallbacks.supported(estimator):
        listeners.append(SklearnCallbacks(estimator, X, y, snapshot))
    return EventStream(listeners)


def trial_events(history, start, n_starts, verbose=0, leader=True):
    """The event stream of the trial of one of ``n_starts`` starts (``n_init``): its own
    ``history`` and, with ``verbose``, a progress bar named after the start; scikit-learn
    callbacks hear of the chosen start only, from the end of its trial on."""
    desc = f"SelfLabelClusterer start {start + 1}/{n_starts}"
    return EventStream([history] + ([ProgressReporter(desc)] if verbose and leader else []))


def twin_events(history, verbose=0, leader=True, desc="SelfLabelClusterer estimated sizes"):
    """The event stream of the twin that estimates the cluster sizes (``size_choice``), or
    of another run beside the fit's (``desc``): its own ``history`` and, with ``verbose``,
    a progress bar named after it."""
    return EventStream([history] + ([ProgressReporter(desc)] if verbose and leader else []))
