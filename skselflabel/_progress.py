"""Progress reporting for ``verbose`` fits: a tqdm bar when tqdm is installed, lines otherwise.

``tqdm.auto`` picks the widget bar in Jupyter and the text bar in a terminal. tqdm is the
optional extra ``progress``; without it each epoch prints one plain line.
"""
import sys

from ._events import FitListener


class _LineProgress:
    """Fallback that prints one line per reported epoch."""

    def __init__(self, total, desc):
        self.total, self.desc = total, desc

    def update(self, epoch, stats):
        fields = "  ".join(f"{k}={v}" for k, v in stats.items())
        print(f"{self.desc} epoch {epoch}/{self.total}  {fields}", file=sys.stdout, flush=True)

    def close(self):
        pass


class _TqdmProgress:
    def __init__(self, bar):
        self.bar = bar

    def update(self, epoch, stats):
        self.bar.set_postfix(stats, refresh=False)
        self.bar.update(epoch - self.bar.n)

    def close(self):
        self.bar.close()


def make_progress(total, desc="SelfLabelClusterer"):
    """An object with ``update(epoch, stats_dict)`` and ``close()``: a tqdm bar
    (``tqdm.auto``) when tqdm is importable, else plain lines on stdout."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _LineProgress(total, desc)
    return _TqdmProgress(tqdm(total=total, desc=desc, unit="epoch", leave=True))


class ProgressReporter(FitListener):
    """The ``verbose=1`` listener: one bar step per epoch, with the loss and label change."""

    def __init__(self, desc="SelfLabelClusterer"):
        self.desc = desc
        self.progress = None
        self.epochs_done = 0

    def on_fit_begin(self, n_epochs):
        self.progress = make_progress(n_epochs, self.desc)

    def on_epoch_end(self, record):
        self.epochs_done += 1
        self.progress.update(self.epochs_done, {"loss": f"{record.loss:.4f}",
                                                "change": f"{record.label_change:.3f}"})

    def on_fit_end(self, status):
        self.progress.close()
