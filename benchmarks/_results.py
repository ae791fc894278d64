"""What every benchmark stores: ``benchmarks/results/<name>.json`` with the command, commit,
date, machine, load, threads, package versions and every run's raw figures."""
import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
# Quick runs (make bench without FULL=1) go here, beside the published results, untracked.
QUICK_RESULTS = RESULTS / "quick"
PACKAGES = ("skselflabel", "torch", "numpy", "scipy", "scikit-learn", "pandas", "faiss-cpu",
            "pot")


def parser(doc, seeds=None):
    """An argument parser with the options every benchmark takes (and ``--seeds``, with
    these defaults, for a benchmark that fits several seeds)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if seeds is not None:
        p.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    p.add_argument("--quick", action="store_true",
                   help="the small budget of `make bench`: minutes, written to results/quick/")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the result file (default: results/, or results/quick/)")
    return p


def seeds_and_budget(args):
    """The seeds and the estimator budget of a run: the first seed and two epochs on the
    quick budget, else ``--seeds`` and the defaults."""
    if args.quick:
        return args.seeds[:1], {"max_epochs": 2}
    return args.seeds, {}


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    return None


def available_gib():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return float("nan")


def commit():
    """The commit measured, with "+dirty" when tracked files differ from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
    try:
        head = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no",
                         "--", "skselflabel", "benchmarks/*.py"))
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def versions():
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def threads():
    import torch

    from skselflabel._runtime.threads import effective_threads

    return {"torch": torch.get_num_threads(), "fit": effective_threads(None),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


class Record:
    """One benchmark run: ``with Record("name", args) as rec: rec.runs.append({...})``
    writes the result file when the block ends without an error."""

    def __init__(self, name, args, *, flat=False, **settings):
        # flat: the summary's figures at the top level (the layout of the scale_*.json files).
        self.name, self.args, self.flat = name, args, flat
        self.settings = dict(settings)
        self.runs = []
        self.summary = {}

    def __enter__(self):
        self.started = time.perf_counter()
        self.data = {
            "benchmark": self.name,
            "budget": "quick" if self.args.quick else "full",
            "command": " ".join(["python", os.path.relpath(sys.argv[0], ROOT)]
                                + sys.argv[1:]),
            "commit": commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                        "memory_gib": memory_gib(),
                        "python": platform.python_version()},
            "load_start": list(os.getloadavg()),
            "threads": threads(),
            "versions": versions(),
        }
        return self

    def __exit__(self, kind, *_):
        if kind is not None:
            return False
        self.data.update(load_end=list(os.getloadavg()),
                         wall_seconds=round(time.perf_counter() - self.started, 2),
                         settings=self.settings, runs=self.runs)
        self.data.update(self.summary if self.flat else {"summary": self.summary})
        folder = self.args.out or (QUICK_RESULTS if self.args.quick else RESULTS)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}.json"
        path.write_text(json.dumps(self.data, indent=1, default=_plain) + "\n")
        print(f"wrote {os.path.relpath(path, ROOT)}")
        return False


def _plain(value):
    """numpy scalars and arrays as JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")


def skip(reason):
    """Leave the benchmark out, saying why (``make bench`` lists it as skipped)."""
    print(f"SKIP: {reason}")
    sys.exit(SKIPPED)


# The exit status of a benchmark that skipped itself (data not installed, too little memory).
SKIPPED = 3


def need_fashion_mnist():
    from skselflabel.datasets import fashion_mnist_available

    if not fashion_mnist_available():
        skip("Fashion-MNIST files not found (apt-get install dataset-fashion-mnist, or set "
             "SKSELFLABEL_FASHION_MNIST_HOME)")
