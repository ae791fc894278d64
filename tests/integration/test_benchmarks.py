"""The published numbers come from stored results: regenerating the pages from
benchmarks/results/ changes nothing, every measured number has a source, and every
benchmark follows the convention that make bench relies on."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

from _registry import benchmark_names, load_module, loader  # noqa: E402


def _run(script, *args):
    return subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_regenerating_the_pages_from_the_stored_results_changes_nothing():
    done = _run("render.py", "--check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_number_in_the_readme_and_docs_has_a_source():
    done = _run("list_numbers.py")
    assert done.returncode == 0, done.stdout[-4000:]
    assert "0 unaccounted" in done.stdout


@pytest.mark.parametrize("name", benchmark_names())
def test_every_benchmark_follows_the_convention(name):
    module = load_module(name)
    assert callable(module.main) and callable(module.render)
    assert "--quick" in module.__doc__, "the docstring says how to run it quickly"
    assert module.render(lambda stem: None) is None      # no result file: nothing to say


@pytest.mark.parametrize("path", sorted((BENCH / "results").glob("*.json")),
                         ids=lambda p: p.stem)
def test_stored_results_render(path):
    data = json.loads(path.read_text())
    assert "command" in data
    owners = [n for n in benchmark_names()
              if load_module(n).render(loader(path.parent)) is not None]
    assert owners, f"no benchmark renders {path.name}"


def test_a_missing_data_set_is_skipped_with_its_reason(tmp_path):
    # Fashion-MNIST looked up in an empty folder: the benchmark says why and exits 3.
    env = {"SKSELFLABEL_FASHION_MNIST_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import _results, "
            "skselflabel.datasets as d; d._SYSTEM_DIR = d.Path('/nonexistent'); "
            "_results.need_fashion_mnist()")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and done.stdout.startswith("SKIP: Fashion-MNIST"), done
