"""Progress reporting for ``verbose`` fits: a tqdm bar when tqdm is installed, lines otherwise.

In a Jupyter kernel with ipywidgets the bar is tqdm's widget, elsewhere tqdm's text bar
(which Jupyter shows too). tqdm and ipywidgets are the optional extra ``progress``;
without tqdm each epoch prints one plain line.
"""
import importlib.util
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


def _in_jupyter_kernel():
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def tqdm_class():
    """tqdm's widget bar in a Jupyter kernel where ipywidgets is installed, else its text
    bar. (``tqdm.auto`` chooses the same way but warns "IProgress not found" where
    ipywidgets is missing, although the text bar works there.) ImportError without tqdm."""
    if _in_jupyter_kernel() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm


def make_progress(total, desc="SelfLabelClusterer"):
    """An object with ``update(epoch, stats_dict)`` and ``close()``: a tqdm bar when tqdm
    is importable (see :func:`tqdm_class`), else plain lines on stdout."""
    try:
        tqdm = tqdm_class()
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
