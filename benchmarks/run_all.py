"""Run every benchmark, then regenerate the pages from what they wrote (``make bench``).

    python benchmarks/run_all.py           # quick budget: minutes; results/quick/, output/bench/
    python benchmarks/run_all.py --full    # the published runs (hours): results/, the docs
    python benchmarks/run_all.py sinkhorn tables   # only these

Each benchmark runs in a process of its own. One whose data are not installed (Fashion-MNIST)
or that needs more memory than the machine has skips itself, saying why; the summary at the
end lists the sections refreshed, the benchmarks skipped with their reasons, and failures
(exit status 1).
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _registry import HERE, benchmark_names  # noqa: E402
from _results import QUICK_RESULTS, RESULTS, ROOT, SKIPPED  # noqa: E402


def run(name, full):
    """(status, note) of one benchmark: "ran", "skipped" or "failed"."""
    cmd = [sys.executable, str(HERE / f"{name}.py")] + ([] if full else ["--quick"])
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    tic = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip())
    proc.wait()
    seconds = time.perf_counter() - tic
    if proc.returncode == SKIPPED:
        reason = next((l[6:] for l in lines if l.startswith("SKIP: ")), "no reason given")
        return "skipped", reason
    if proc.returncode != 0:
        return "failed", f"exit status {proc.returncode} after {seconds:.0f} s: " + \
            " / ".join(lines[-3:])
    return "ran", f"{seconds:.0f} s"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    p.add_argument("--full", action="store_true", help="the published budget")
    args = p.parse_args(argv)
    names = args.names or benchmark_names()
    unknown = set(names) - set(benchmark_names())
    if unknown:
        p.error(f"no such benchmark: {', '.join(sorted(unknown))}")
    folder = RESULTS if args.full else QUICK_RESULTS
    started = time.time()
    outcome = {name: run(name, args.full) for name in names}
    written = sorted(path.stem for path in folder.glob("*.json")
                     if path.stat().st_mtime >= started)
    render = subprocess.run([sys.executable, str(HERE / "render.py")]
                            + ([] if args.full else ["--quick"]),
                            cwd=ROOT, capture_output=True, text=True)
    print(render.stdout + render.stderr)
    print("=" * 72)
    print(f"make bench ({'full' if args.full else 'quick'} budget) summary")
    for status in ("ran", "skipped", "failed"):
        for name, (got, note) in outcome.items():
            if got == status:
                print(f"  {status:8s}{name}: {note}")
    rendered = [l.split(": ", 1)[1] for l in render.stdout.splitlines()
                if l.startswith("sections rendered: ")]
    print(f"  result files written: {', '.join(written) or 'none'} "
          f"(in {folder.relative_to(ROOT)})")
    if args.full:
        print("  pages regenerated from benchmarks/results/: docs/benchmarks.md, README.md")
    else:
        print(f"  sections refreshed (quick budget, output/bench/benchmarks.md): "
              f"{rendered[0] if rendered else 'none'}")
        print("  the published pages keep the full results; make bench FULL=1 refreshes them")
    failed = [n for n, (s, _) in outcome.items() if s == "failed"] or \
        (["render"] if render.returncode else [])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
