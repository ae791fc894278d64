"""Progress reporting for ``verbose`` fits: a tqdm bar when tqdm is installed, lines otherwise.

``tqdm.auto`` picks the widget bar in Jupyter and the text bar in a terminal. tqdm is the
optional extra ``progress``; without it each epoch prints one plain line.
"""
import sys


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


class _SilentProgress:
    def update(self, epoch, stats):
        pass

    def close(self):
        pass


def make_progress(total, verbose, desc="SelfLabelClusterer"):
    """Return an object with ``update(epoch, stats_dict)`` and ``close()``.

    ``verbose=0`` gives a silent reporter; ``verbose>=1`` a tqdm bar (``tqdm.auto``) when
    tqdm is importable, else plain lines on stdout.
    """
    if not verbose:
        return _SilentProgress()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _LineProgress(total, desc)
    return _TqdmProgress(tqdm(total=total, desc=desc, unit="epoch", leave=True))
