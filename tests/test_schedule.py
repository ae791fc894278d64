"""The quadratic schedule of self-label steps."""
import numpy as np
import pytest

from skselflabel._schedule import label_update_steps


def test_label_update_schedule_is_quadratic_and_starts_at_zero():
    steps = label_update_steps(11, 1000)
    assert steps[0] == 0 and (np.diff(steps) > 0).all() and steps[-1] < 1000
    gaps = np.diff(steps)
    assert gaps[0] < gaps[-1]  # dense early
    assert steps[5] == round(0.25 * 1000)
    assert label_update_steps(1, 10).tolist() == [0]
    assert label_update_steps(50, 10).tolist() == list(range(10))
    with pytest.raises(ValueError):
        label_update_steps(0, 10)
