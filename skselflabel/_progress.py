"""Progress reporting for ``verbose`` fits: a tqdm bar when tqdm is installed, lines otherwise.

In a Jupyter kernel with ipywidgets the bar is tqdm's widget, elsewhere tqdm's text bar
(which Jupyter shows too). tqdm and ipywidgets are the optional extra ``progress``;
without tqdm each epoch prints one plain line.
"""
import importlib.util
import sys

from ._events import FitListener


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
    """tqdm's widget bar in a Jupyter kernel where ipywidgets is installed, else its text
    bar. (``tqdm.auto`` chooses the same way but warns "IProgress not found" where
    ipywidgets is missing, although the text bar works there.) ImportError without tqdm."""
    if _in_jupyter_kernel() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm


def make_progress(n_epochs, steps_per_epoch, desc="SelfLabelClusterer"):
    """A tqdm bar over gradient steps (see :func:`tqdm_class`) when tqdm is importable,
    else plain lines on stdout."""
    try:
        tqdm = tqdm_class()
    except ImportError:
        return _LineProgress(n_epochs, desc)
    return _TqdmProgress(tqdm(total=n_epochs * steps_per_epoch, desc=desc, unit="batch",
                              leave=True))


class ProgressReporter(FitListener):
    """The ``verbose=1`` listener: a bar over all gradient steps that moves with every
    batch, shows the epoch's loss and label change, and names the head being self-labelled
    during self-label steps (a tqdm bar; without tqdm, one line per epoch)."""

    def __init__(self, desc="SelfLabelClusterer"):
        self.desc = desc
        self.progress = None
        self.stats = {}

    def on_fit_begin(self, n_epochs, steps_per_epoch):
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
