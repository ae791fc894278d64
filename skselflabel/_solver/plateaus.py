"""Plateaus: the error plateaus that exactly tied rows cause in the scaling iterations, the
wider steps that leave them, and the warning when ties leave clusters empty."""
import math
import warnings

import torch
from sklearn.exceptions import ConvergenceWarning

from .._data.checks import distinct_rows

# Error plateaus (see Plateaus): a column whose relative error keeps its sign and shrinks by
# less than STUCK_SHRINK per measurement, STUCK_AFTER measurements in a row, while it is at
# least STUCK_SHARE of the largest column error, is stuck; its update is then doubled at
# each further measurement, up to PLATEAU_STEP in the log domain (larger steps overshoot,
# and columns pushed at once compete for the same rows). Once a plateau was seen, the loop
# ends only below PLATEAU_MARGIN times the tolerance.
STUCK_SHRINK = 0.01
STUCK_SHARE = 0.5
STUCK_AFTER = 8
MAX_DOUBLINGS = 16
PLATEAU_STEP = 1.0
PLATEAU_MARGIN = 0.9


class Plateaus:
    """Columns stuck on an error plateau, and the larger steps that get them off it.

    With exactly tied rows (identical copies, such as the one-hot scores of a collapsed
    network) a column can sit in a "dead zone": its rows are fully committed to it (or to
    other columns), so its sum does not respond to its scaling, and its relative error
    stays at a whole number of rows' mass while plain updates move its potential by only
    ``log(1 + error)`` per iteration. A column whose error keeps its sign without
    shrinking for ``STUCK_AFTER`` measurements, while it is among the largest (at least
    ``STUCK_SHARE`` of the largest error), gets its update doubled at each further such
    measurement, up to a step of ``PLATEAU_STEP``; the first change of sign or real
    progress resets it. Where plain iterations make progress nothing is stuck and nothing
    changes: ordinary logits take the same iterations to the same result.

    A plateau can sit just below the tolerance (one row's mass is 1% of a cluster with
    100 rows per cluster): once a column has been seen stuck at an error of at least
    ``level``, the loop must get below ``level`` (``iterations._Errors.keep_going``). So
    no stage of epsilon-scaling ends on such a plateau, which the next stage, doubling
    the potentials, would make twice as deep.
    """

    def __init__(self, allowed, level, floor):
        self.level, self.floor = level, floor
        self.previous = torch.full_like(allowed, math.nan, dtype=torch.float64)
        self.streak = torch.zeros_like(allowed, dtype=torch.float64)
        self.counting = False            # whether any column has a streak
        self.seen = False

    def update(self, deviation, size, largest):
        """Count how long each column has been stuck, from its signed relative error, its
        size and the largest size. Runs at every measurement, so it is kept to a few vector
        operations."""
        # ratio >= 1 - STUCK_SHRINK: the same sign, and shrunk by less than STUCK_SHRINK.
        ratio = deviation / self.previous
        # A column far below the largest error is waiting for the others, not stuck.
        cutoff = max(self.level, self.floor, STUCK_SHARE * largest)
        stuck = (ratio >= 1 - STUCK_SHRINK) & (size > cutoff)
        self.streak = (self.streak + 1) * stuck
        self.previous = deviation
        top = float(self.streak.max())
        self.counting = top > 0
        self.seen = self.seen or top >= STUCK_AFTER

    def widen(self, step):
        """``step`` (the log-scaling updates) with the updates of stuck columns enlarged."""
        if not self.counting:
            return step
        doublings = (self.streak - STUCK_AFTER + 1).clamp(0, MAX_DOUBLINGS)
        boosted = step * torch.pow(2.0, doublings)
        limit = torch.clamp(step.abs(), min=PLATEAU_STEP)
        return torch.where(doublings > 0, boosted.clamp(-limit, limit), step)


def warn_if_tied_rows(W, labels, problem):
    """Warn when the labels fill fewer clusters than they could because rows are tied.

    Rows with the same scores (up to a constant) get the same label, so with fewer
    distinct rows than clusters the hard labels cannot be balanced, however balanced the
    plan is. The rows are counted (on the kernel: equal score rows give equal kernel rows)
    only when the labels leave clusters empty.
    """
    n_clusters = int(torch.isfinite(problem.log_p).sum())
    used = int(torch.bincount(labels, minlength=W.shape[1]).count_nonzero())
    if used >= min(W.shape[0], n_clusters):
        return
    distinct = distinct_rows(W, n_clusters, problem.rows.block)
    if distinct < n_clusters:
        warnings.warn(f"scores has {distinct} distinct row(s) (up to a constant per row) for "
                      f"{n_clusters} clusters: identical rows get the same label, so the "
                      f"labels use only {used} cluster(s). Possibly due to duplicate points "
                      "in the data.", ConvergenceWarning, stacklevel=6)
