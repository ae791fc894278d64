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


def test_readme_example_runs_and_gives_what_it_says(capsys):
    blocks = _example_blocks()
    assert len(blocks) >= 2, "the README's Example section lost its code blocks"
    for block in blocks:                      # each block stands alone
        exec(compile(block, str(README), "exec"), {})
    out = capsys.readouterr().out.splitlines()
    # The printed ACC / NMI are real results, not decoration.
    acc = float(re.search(r"ACC (\S+)", out[0]).group(1))
    assert acc > 0.8, out
    # The cluster sizes are in the ranges the README's comments state.
    text = "".join(blocks)
    balanced = re.search(r"ten clusters of (\d+) to (\d+) digits", text).groups()
    kmeans = re.search(r"KMeans alone: (\d+) to (\d+)", text).groups()
    printed = [[int(v) for v in re.findall(r"\d+", line)] for line in out[1:3]]
    for sizes, (low, high) in zip(printed, (balanced, kmeans)):
        assert len(sizes) == 10, printed
        assert min(sizes) == int(low) and max(sizes) == int(high), (sizes, low, high)
