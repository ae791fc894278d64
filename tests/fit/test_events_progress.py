"""Where ``verbose=1`` draws a bar and where it writes plain lines."""
import sys

import pytest

from skselflabel._fit import events


def test_verbose_through_a_pipe_writes_plain_lines(capsys):
    # A pipe or a log file (here pytest's capture, which is no terminal) cannot redraw a
    # bar in place: one line per epoch, no "\r".
    from sklearn.datasets import make_blobs

    from skselflabel import SelfLabelClusterer

    assert not sys.stderr.isatty()
    X, _ = make_blobs(90, centers=3, random_state=0)
    SelfLabelClusterer(3, max_epochs=3, verbose=1, random_state=0).fit(X)
    out = capsys.readouterr()
    assert "\r" not in out.out + out.err
    assert [line.split("  ")[0] for line in out.out.strip().splitlines()] == [
        f"SelfLabelClusterer epoch {e}/3" for e in (1, 2, 3)]


def test_verbose_in_a_terminal_draws_a_bar(monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(events.sys.stderr, "isatty", lambda: True, raising=False)
    bar = events.make_progress(2, 3)
    assert isinstance(bar, events._TqdmProgress)
    bar.close()
