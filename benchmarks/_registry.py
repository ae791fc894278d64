"""Which files of benchmarks/ are benchmarks, and loading them by name.

A benchmark is any ``benchmarks/<name>.py`` whose name does not start with ``_`` and that
is not one of the tools below; benchmarks/README.md says what it must define.
"""
import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOOLS = {"render", "run_all", "list_numbers"}


def benchmark_names():
    return sorted(p.stem for p in HERE.glob("*.py")
                  if not p.stem.startswith("_") and p.stem not in TOOLS)


def load_module(name):
    """The benchmark script ``name`` as a module (its ``main`` does not run)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def loader(folder):
    """``load(stem)``: the result file ``folder/<stem>.json`` as a dict, or None."""
    def load(stem):
        path = Path(folder) / f"{stem}.json"
        return json.loads(path.read_text()) if path.exists() else None
    return load
