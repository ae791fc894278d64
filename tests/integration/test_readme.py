"""The README's example runs as written (its code blocks after "## Example", in order)."""
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # integration: `make test-fast` leaves it out

README = Path(__file__).resolve().parents[2] / "README.md"


def _example_blocks():
    text = README.read_text()
    example = text.split("## Example", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", example, flags=re.S)


def test_readme_example_runs(capsys):
    blocks = _example_blocks()
    assert len(blocks) >= 2, "the README's Example section lost its code blocks"
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    # The printed ACC / NMI and the cluster sizes are real results, not decoration.
    acc = float(re.search(r"ACC (\S+)", out).group(1))
    assert acc > 0.8, out
    sizes = namespace["np"].bincount(namespace["labels"])
    assert sizes.min() >= 0.9 * sizes.max(), sizes
    assert namespace["features"].shape[0] == 1797
    assert namespace["proba"].shape == (5, 10)
