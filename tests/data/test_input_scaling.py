"""Input scaling: statistics fitted in one pass, applied on the device."""
import numpy as np
import torch

from skselflabel._data.input_scaling import InputScaling
from skselflabel._data.sources import ArraySource


def test_tables_share_one_scale_images_are_standardised_per_channel():
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((500, 2)) * [1.0, 3.0] + [5.0, -2.0]).astype(np.float32)
    t = InputScaling.fit(ArraySource(X)).apply(torch.from_numpy(X))
    torch.testing.assert_close(t.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    ratio = float(t[:, 1].std() / t[:, 0].std())
    assert 2.7 < ratio < 3.3                       # the geometry is kept
    assert abs(float((t ** 2).mean()) - 1.0) < 0.05
    images = (rng.random((20, 3, 4, 4)) * [[[1.0]], [[10.0]], [[0.0]]]).astype(np.float32)
    t = InputScaling.fit(ArraySource(images)).apply(torch.from_numpy(images))
    std = t.transpose(0, 1).reshape(3, -1).std(1)
    torch.testing.assert_close(std[:2], torch.ones(2), atol=1e-2, rtol=0)
    assert float(t[:, 2].abs().max()) == 0.0       # constant channel: scale 1, no NaN
