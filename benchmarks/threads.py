"""How many CPU threads should ``SelfLabelClusterer`` use by default? (``n_jobs``)

Times the same fits with the default ``n_jobs`` (None), with ``n_jobs=1``, and with one
thread per CPU (``n_jobs=-1``, torch's own default, what every fit used before ``n_jobs``
existed),
on a quiet machine and with one busy-loop process competing for a core. Within each
repeat the settings run back to back in one process, in a rotating order, and each is
divided by the ``n_jobs=1`` time of the same repeat; the table shows the medians of these
ratios over the repeats.

Workloads (fixed budgets, so that a slow setting under load still finishes):

* digits table: 1,797 x 64, scaled to [0, 1], ``max_epochs=5`` (every other parameter at
  its default);
* digits images: 1,797 x 8 x 8, ``max_epochs=5``;
* a Fashion-MNIST epoch: the first ``--fashion-samples`` training images, ``max_epochs=1``
  and ``n_label_updates=1`` (one self-label step before the epoch, as in an epoch of the
  default full run), the whole ``fit`` timed (neighbour graph and final labelling
  included);
* Fashion-MNIST ``transform`` of the first ``--fashion-samples`` test images with that
  model.

    python benchmarks/threads.py [--repeats 3] [--fashion-samples 10000]
        [--conditions quiet,busy] [--quick]

Writes ``results/threads.json`` (the "threads" section of docs/benchmarks.md). The full run
takes most of an hour on 2 cores.
"""
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import joblib
import torch
from sklearn.datasets import load_digits

from skselflabel import SelfLabelClusterer
from skselflabel.datasets import load_fashion_mnist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import quick_banner, source, table  # noqa: E402
from _results import Record, parser  # noqa: E402

# One thread per CPU: what n_jobs=-1 gives, and torch's default without OMP_NUM_THREADS.
ALL_CPUS = joblib.cpu_count()
BUSY_LOOP = "while True:\n    pass\n"


def workloads(fashion_samples, epochs):
    """name -> function of n_jobs that runs the timed work."""
    digits = load_digits()
    table, images = digits.data / 16.0, digits.images / 16.0
    work = {
        f"digits table, fit ({epochs} epochs)": lambda n_jobs: SelfLabelClusterer(
            n_clusters=10, random_state=0, max_epochs=epochs, n_jobs=n_jobs).fit(table),
        f"digits images, fit ({epochs} epochs)": lambda n_jobs: SelfLabelClusterer(
            n_clusters=10, random_state=0, max_epochs=epochs, n_jobs=n_jobs).fit(images),
    }
    try:
        train, _ = load_fashion_mnist(split="train", return_X_y=True, as_float=True)
        test, _ = load_fashion_mnist(split="test", return_X_y=True, as_float=True)
    except FileNotFoundError:
        print("Fashion-MNIST not found: its workloads are left out", file=sys.stderr)
        return work
    train, test = train[:fashion_samples], test[:fashion_samples]
    fitted = SelfLabelClusterer(n_clusters=10, random_state=0, max_epochs=1,
                                n_label_updates=1).fit(train)

    def fashion_epoch(n_jobs):
        SelfLabelClusterer(n_clusters=10, random_state=0, max_epochs=1, n_label_updates=1,
                           n_jobs=n_jobs).fit(train)

    def fashion_transform(n_jobs):
        fitted.set_params(n_jobs=n_jobs).transform(test)

    work[f"Fashion-MNIST, fit of one epoch on {len(train):,} images"] = fashion_epoch
    work[f"Fashion-MNIST, transform of {len(test):,} images"] = fashion_transform
    return work


def settings():
    """The n_jobs values compared: the default, 1, and one thread per CPU."""
    return [None, 1, -1]


def time_once(fn, n_jobs):
    tic = time.perf_counter()
    fn(n_jobs)
    return time.perf_counter() - tic


def measure(fn, repeats):
    """{n_jobs: [seconds per repeat]}; the settings rotate their order between repeats."""
    values = settings()
    seconds = {n: [] for n in values}
    for r in range(repeats):
        for n in values[r % len(values):] + values[: r % len(values)]:
            seconds[n].append(time_once(fn, n))
    return seconds


def run_condition(condition, work, repeats):
    """Measure every workload with nothing added ("quiet") or beside one busy loop; the
    raw seconds of every repeat and setting."""
    busy = (subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if condition == "busy"
            else None)
    try:
        runs = []
        for name, fn in work.items():
            load_start = os.getloadavg()[0]
            seconds = measure(fn, repeats)
            for n_jobs, times in seconds.items():
                for repeat, t in enumerate(times):
                    runs.append({"condition": condition, "workload": name,
                                 "n_jobs": n_jobs, "repeat": repeat, "seconds": t,
                                 "load_start": load_start})
            print(f"[{condition}] {name}: " + ", ".join(
                f"n_jobs={n}: {statistics.median(t):.2f} s" for n, t in seconds.items()),
                flush=True)
        return runs
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


WHERE = {"quiet": "no load added", "busy": "one busy-loop process added"}


def label(n_jobs):
    if n_jobs is None:
        return "default (`n_jobs=None`)"
    if n_jobs == -1:
        return f"`n_jobs=-1` ({ALL_CPUS} threads)"
    return f"`n_jobs={n_jobs}`"


def ratios(r):
    """{(condition, workload): (median seconds at n_jobs=1, {n_jobs: median ratio})}."""
    out = {}
    for x in r["runs"]:
        out.setdefault((x["condition"], x["workload"]), None)
    for key in out:
        mine = [x for x in r["runs"] if (x["condition"], x["workload"]) == key]
        by = {}
        for x in mine:
            by.setdefault(x["n_jobs"], {})[x["repeat"]] = x["seconds"]
        one = by[1]
        out[key] = (statistics.median(one.values()),
                    {n: statistics.median(t / one[rep] for rep, t in times.items())
                     for n, times in by.items() if n != 1})
    return out


def render(load):
    r = load("threads")
    if r is None:
        return None
    found = ratios(r)
    values = [None, -1]
    rows = [[workload, WHERE[condition], f"{one:.2f}", *(f"{rel[n]:.2f}" for n in values)]
            for (condition, workload), (one, rel) in found.items()]
    return "\n".join([
        "## Threads: the default `n_jobs` (`benchmarks/threads.py`)", "",
        quick_banner(r) + source(r, "threads"), "",
        "\"No load added\": the benchmark adds nothing, other users' jobs may run (see the "
        "load); \"one busy-loop process added\": a `while True: pass` Python process started "
        "by the benchmark for that part. Every fit is `SelfLabelClusterer(n_clusters=10, "
        "random_state=0)` with the budget in the workload's name (Fashion-MNIST: "
        "`n_label_updates=1`, one self-label step before the epoch, as in an epoch of the "
        "default run).", "",
        f"Ratios: time with the setting / time with `n_jobs=1`, measured back to back in one "
        f"process in each of {r['settings']['repeats']} repeat(s) (settings in rotating "
        "order), median over the repeats; above 1 means slower than one thread. The default "
        "runs the same code as `n_jobs=1`: the spread of its column around 1 is the noise "
        "of the measurement.", "",
        table(["workload", "machine", "seconds at `n_jobs=1`",
               *(f"{label(n)} / `n_jobs=1`" for n in values)], rows),
    ])


def summary(r):
    """The range of the all-CPUs ratio, for the README's sentence."""
    found = ratios(r)
    all_cpus = [rel[-1] for _, rel in found.values()]
    return min(all_cpus), max(all_cpus)


def render_readme(load):
    r = load("threads")
    if r is None:
        return {}
    low, high = summary(r)
    return {"threads": (
        f"On the 2-core machine of `benchmarks/threads.py` ({r['date'][:10]}, commit "
        f"{r['commit'][:12]}), one thread per CPU (`n_jobs=-1`) took from {low:.2f} to "
        f"{high:.2f} times as long as one thread over its workloads, quiet and beside a busy "
        "loop (the benchmarks page has each workload, with the load).")}


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fashion-samples", type=int, default=10_000)
    p.add_argument("--conditions", default="quiet,busy")
    args = p.parse_args(argv)
    epochs = 5
    if args.quick:
        args.repeats, args.fashion_samples, args.conditions, epochs = 1, 1000, "quiet", 1
    work = workloads(args.fashion_samples, epochs)
    with Record("threads", args, repeats=args.repeats, fashion_samples=args.fashion_samples,
                conditions=args.conditions.split(","), epochs=epochs,
                cpus=ALL_CPUS) as rec:
        time_once(next(iter(work.values())), 1)         # warm-up, not timed
        for condition in args.conditions.split(","):
            rec.runs += run_condition(condition, work, args.repeats)


if __name__ == "__main__":
    main()
