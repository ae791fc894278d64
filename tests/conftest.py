"""Fixtures shared by the unit tests."""
import pytest

from skselflabel._solver import sinkhorn


@pytest.fixture
def small_warmup(monkeypatch):
    """Shrink the warm-up subsample so that moderate sizes take the full-matrix path."""
    monkeypatch.setattr(sinkhorn, "_WARMUP_ELEMENTS", 100_000)
