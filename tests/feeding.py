"""A Feeder over in-memory data, for unit tests of the parts that read samples."""
import numpy as np
import torch

from skselflabel._data.input_scaling import InputScaling
from skselflabel._data.sources import ArraySource, Feeder


def feeder_of(X, device="cpu"):
    """Unscaled float32 batches of ``X`` (an array or a CPU tensor) on ``device``."""
    X = X.numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
    return Feeder(ArraySource(X), InputScaling(np.float32(0.0), np.float32(1.0)), device)
