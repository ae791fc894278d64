"""Which bar ``verbose=1`` draws: tqdm's text bar in a terminal and in Jupyter (where the
kernel redraws it in place), never a widget and never tqdm.auto's "IProgress not found"."""
import types
import warnings

import pytest

pytest.importorskip("tqdm")
import tqdm.std  # noqa: E402

from skselflabel._fit import events  # noqa: E402


@pytest.fixture
def in_kernel(monkeypatch):
    """Pretend to run inside a Jupyter kernel (what tqdm and IPython look at)."""
    shell = types.SimpleNamespace(config={"IPKernelApp": {}})
    fake = types.SimpleNamespace(get_ipython=lambda: shell)
    monkeypatch.setitem(__import__("sys").modules, "IPython", fake)


def test_text_bar_outside_jupyter(monkeypatch):
    monkeypatch.delitem(__import__("sys").modules, "IPython", raising=False)
    assert not events._in_jupyter_kernel()
    assert events.tqdm_class() is tqdm.std.tqdm


def test_text_bar_without_warning_in_jupyter(in_kernel):
    assert events._in_jupyter_kernel()
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # tqdm.auto would warn here
        bar = events.make_progress(2, 3)          # a kernel redraws in place: a bar
        assert isinstance(bar, events._TqdmProgress)
        assert type(bar.bar) is tqdm.std.tqdm
        bar.step(1)
        bar.note({"self-labelling": "head 1/1"})
        bar.epoch(1, {"loss": "1.0"})
        bar.close()
