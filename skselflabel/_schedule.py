"""When to recompute the self-labels during training.

SeLa spaces its self-label steps quadratically: dense early, when the representation
changes fast, and sparse late. The ``t``-th of ``T`` steps happens at the fraction
:math:`(t / (T - 1))^2` of training, the first one before any gradient step.
"""
import numpy as np


def label_update_steps(n_updates, total_steps):
    r"""Gradient-step indices before which the self-labels are recomputed.

    Parameters
    ----------
    n_updates : int
        Number of self-label steps over the whole run, ``>= 1``.
    total_steps : int
        Number of gradient steps in the run.

    Returns
    -------
    steps : ndarray of int64
        Sorted, unique indices in ``[0, total_steps)``; ``steps[0] == 0``. Update ``t``
        lands at :math:`\lfloor (t / (T - 1))^2 \cdot S \rceil` for ``T = n_updates`` and
        ``S = total_steps``; updates that would fall on the same step are merged and any
        at ``S`` itself (after the last gradient step) are dropped, because a final
        labelling happens after training anyway.

    Examples
    --------
    >>> from skselflabel._schedule import label_update_steps
    >>> label_update_steps(5, 100).tolist()
    [0, 6, 25, 56]
    """
    if n_updates < 1 or total_steps < 1:
        raise ValueError(
            f"n_updates and total_steps must be >= 1, got {n_updates} and {total_steps}."
        )
    if n_updates == 1:
        return np.zeros(1, dtype=np.int64)
    fractions = (np.arange(n_updates) / (n_updates - 1)) ** 2
    steps = np.unique(np.rint(fractions * total_steps).astype(np.int64))
    return steps[steps < total_steps]
