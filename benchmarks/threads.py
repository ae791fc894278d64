"""How many CPU threads should ``SelfLabelClusterer`` use by default? (``n_jobs``)

Times the same fits with the default ``n_jobs`` (None), with ``n_jobs=1``, and with torch's
own default thread count (one per core, what every fit used before ``n_jobs`` existed),
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

    .venv/bin/python benchmarks/threads.py [--repeats 3] [--fashion-samples 10000]
        [--conditions quiet,busy] [--no-write]

Writes the section "threads" of docs/benchmarks.md (unless --no-write).
"""
import argparse
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
from skselflabel._runtime.threads import effective_threads
from skselflabel.datasets import load_fashion_mnist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_description, write_section  # noqa: E402

TORCH_DEFAULT = torch.get_num_threads()     # read before anything changes it
BUSY_LOOP = "while True:\n    pass\n"


def workloads(fashion_samples):
    """name -> (data description, function of n_jobs that runs the timed work)."""
    digits = load_digits()
    table, images = digits.data / 16.0, digits.images / 16.0
    work = {
        "digits table, fit (5 epochs)": lambda n_jobs: SelfLabelClusterer(
            n_clusters=10, random_state=0, max_epochs=5, n_jobs=n_jobs).fit(table),
        "digits images, fit (5 epochs)": lambda n_jobs: SelfLabelClusterer(
            n_clusters=10, random_state=0, max_epochs=5, n_jobs=n_jobs).fit(images),
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
    """The n_jobs values compared: the default, 1, and torch's default thread count."""
    values = [None, 1, TORCH_DEFAULT]
    if joblib.cpu_count() not in values:
        values.append(-1)
    return values


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


def ratios(seconds):
    """{n_jobs: median over repeats of seconds / seconds at n_jobs=1 in the same repeat}."""
    return {n: statistics.median(t / one for t, one in zip(times, seconds[1]))
            for n, times in seconds.items()}


def run_condition(condition, work, repeats):
    """Measure every workload with nothing added ("quiet") or beside one busy loop."""
    busy = (subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if condition == "busy"
            else None)
    try:
        load_start = os.getloadavg()[0]
        results = {}
        for name, fn in work.items():
            seconds = measure(fn, repeats)
            results[name] = (statistics.median(seconds[1]), ratios(seconds))
            print(f"[{condition}] {name}: n_jobs=1 {results[name][0]:.2f} s; ratios "
                  + ", ".join(f"{n}: {v:.2f}" for n, v in results[name][1].items()),
                  flush=True)
        return results, load_start, os.getloadavg()[0]
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def label(n_jobs):
    if n_jobs is None:
        return "default (`n_jobs=None`)"
    if n_jobs == TORCH_DEFAULT:
        return f"`n_jobs={n_jobs}` (torch's default)"
    return f"`n_jobs={n_jobs}`"


WHERE = {"quiet": "no load added", "busy": "one busy-loop process added"}


def report(conditions, repeats, fashion_samples, minutes):
    """The markdown section: command, machine, load, one row per workload and condition."""
    values = [n for n in settings() if n != 1]
    head = ("| workload | machine | seconds at `n_jobs=1` | "
            + " | ".join(f"{label(n)} / `n_jobs=1`" for n in values) + " |")
    rows = [head, "|" + "---|" * (3 + len(values))]
    loads = []
    for condition, (results, load_start, load_end) in conditions.items():
        where = WHERE[condition]
        loads.append(f"{where}: {load_start:.2f} at the start, {load_end:.2f} at the end")
        for name, (one, rel) in results.items():
            rows.append(f"| {name} | {where} | {one:.2f} | "
                        + " | ".join(f"{rel[n]:.2f}" for n in values) + " |")
    return "\n".join([
        "## Threads: the default `n_jobs` (`benchmarks/threads.py`)",
        "",
        f"Command: `.venv/bin/python benchmarks/threads.py --repeats {repeats} "
        f"--fashion-samples {fashion_samples}`",
        "",
        f"Machine: {machine_description()}; torch {torch.__version__}, whose default is "
        f"{TORCH_DEFAULT} intra-op threads; joblib counts {joblib.cpu_count()} CPUs. "
        f"1-minute load average ({'; '.join(loads)}); a load of {os.cpu_count()} keeps "
        f"every core busy. \"No load added\": the benchmark adds nothing, other users' "
        "jobs may run (see the load); \"one busy-loop process added\": a `while True: "
        f"pass` Python process started by the benchmark for that part. The run took "
        f"{minutes:.0f} minutes.",
        "",
        "Data: scikit-learn's digits (as a 64-column table scaled to [0, 1], and as 8 x 8 "
        "images), Fashion-MNIST training images (fit) and test images (transform), float32 "
        "in [0, 1]. Every fit is `SelfLabelClusterer(n_clusters=10, random_state=0)` with "
        "the budget in the workload's name (Fashion-MNIST: `n_label_updates=1`, one "
        "self-label step before the epoch, as in an epoch of the default run).",
        "",
        f"Ratios: time with the setting / time with `n_jobs=1`, measured back to back in one "
        f"process in each of {repeats} repeats (settings in rotating order), median over the "
        "repeats; above 1 means slower than one thread. Seconds at `n_jobs=1`: median."
        + (" The default runs one thread (`n_jobs=None` means 1), the same code as "
           "`n_jobs=1`: the spread of its column around 1 is the noise of the measurement."
           if effective_threads(None) == 1 else ""),
        "",
        *rows,
    ])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fashion-samples", type=int, default=10_000)
    parser.add_argument("--conditions", default="quiet,busy")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    work = workloads(args.fashion_samples)
    time_once(next(iter(work.values())), 1)         # warm-up, not timed
    conditions = {c: run_condition(c, work, args.repeats) for c in args.conditions.split(",")}
    minutes = (time.perf_counter() - started) / 60
    text = report(conditions, args.repeats, args.fashion_samples, minutes)
    print(text)
    if not args.no_write:
        print("wrote", write_section("threads", text))


if __name__ == "__main__":
    main()
