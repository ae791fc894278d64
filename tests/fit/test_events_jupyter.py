"""Which tqdm bar ``verbose=1`` draws: a widget in Jupyter with ipywidgets, text elsewhere,
and never tqdm.auto's "IProgress not found" warning where ipywidgets is missing."""
import importlib.util
import types
import warnings

import pytest

pytest.importorskip("tqdm")
import tqdm.notebook  # noqa: E402
import tqdm.std  # noqa: E402

from skselflabel._fit import events  # noqa: E402


@pytest.fixture
def in_kernel(monkeypatch):
    """Pretend to run inside a Jupyter kernel (what tqdm and IPython look at)."""
    shell = types.SimpleNamespace(config={"IPKernelApp": {}})
    fake = types.SimpleNamespace(get_ipython=lambda: shell)
    monkeypatch.setitem(__import__("sys").modules, "IPython", fake)


def _ipywidgets(monkeypatch, installed):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "ipywidgets":
            return types.SimpleNamespace(name=name) if installed else None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_text_bar_outside_jupyter(monkeypatch):
    monkeypatch.delitem(__import__("sys").modules, "IPython", raising=False)
    assert not events._in_jupyter_kernel()
    assert events.tqdm_class() is tqdm.std.tqdm


def test_text_bar_without_warning_in_jupyter_without_ipywidgets(in_kernel, monkeypatch):
    _ipywidgets(monkeypatch, installed=False)
    assert events._in_jupyter_kernel()
    assert events.tqdm_class() is tqdm.std.tqdm
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # tqdm.auto would warn here
        bar = events.make_progress(2, 3)
        bar.step(1)
        bar.note({"self-labelling": "head 1/1"})
        bar.epoch(1, {"loss": "1.0"})
        bar.close()


def test_widget_bar_in_jupyter_with_ipywidgets(in_kernel, monkeypatch):
    _ipywidgets(monkeypatch, installed=True)
    assert events.tqdm_class() is tqdm.notebook.tqdm
