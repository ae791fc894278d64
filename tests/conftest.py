"""Fixtures shared by the unit tests."""
import pytest

from skselflabel._solver import sinkhorn as _sinkhorn


@pytest.fixture
def small_warmup(monkeypatch):
    """Shrink the warm-up subsample so that moderate sizes take the full-matrix path."""
    monkeypatch.setattr(_sinkhorn, "_WARMUP_ELEMENTS", 100_000)
