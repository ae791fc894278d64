"""Where ``verbose=1`` draws a bar and where it writes plain lines."""
import subprocess
import sys

import pytest

from skselflabel._fit import events


def test_verbose_through_a_pipe_writes_plain_lines():
    # A pipe or a log file cannot redraw a bar in place: one line per epoch, no "\r".
    code = ("from sklearn.datasets import make_blobs\n"
            "from skselflabel import SelfLabelClusterer\n"
            "X, _ = make_blobs(90, centers=3, random_state=0)\n"
            "SelfLabelClusterer(3, max_epochs=3, verbose=1, random_state=0).fit(X)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "\r" not in output
    assert [line.split("  ")[0] for line in output.strip().splitlines()] == [
        f"SelfLabelClusterer epoch {e}/3" for e in (1, 2, 3)]


def test_verbose_in_a_terminal_draws_a_bar(monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(events.sys.stderr, "isatty", lambda: True, raising=False)
    bar = events.make_progress(2, 3)
    assert isinstance(bar, events._TqdmProgress)
    bar.close()
