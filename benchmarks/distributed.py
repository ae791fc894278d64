"""Data-parallel fit: a Fashion-MNIST training epoch in 2 processes x 1 thread against
1 process x 1 thread, measured in one run (issue 12, must-show 2: at least 1.6x faster),
with BatchNorm over the whole batch (``sync_batch_norm=True``, the default) and over each
process's share (``sync_batch_norm=False``).

Each run is the same fit, ``SelfLabelClusterer(n_clusters=10, random_state=0,
max_epochs=2, n_label_updates=1)`` on the first ``--samples`` Fashion-MNIST training
images (uint8, as loaded), started as a fresh process (``python benchmarks/distributed.py
--worker``) or under ``torchrun --nproc_per_node=2``, every process with
``OMP_NUM_THREADS=1``. The one label update is at step 0, in epoch 1, and the final
self-label step comes after epoch 2 is timed, so the second epoch of ``history_`` is a
pure training epoch: its ``seconds`` are the measure (under torchrun the slowest process's,
which is what the epoch took). The whole ``fit`` (input statistics, neighbour graph,
self-label steps, final labels) is timed too. The one- and two-process runs alternate over
``--repeats`` (the order swapped every repeat); the table shows medians, and the speed-up
is the median of the per-repeat ratios. Each process also reports its peak resident memory.

    python benchmarks/distributed.py [--samples 20000] [--repeats 3] [--quick]

Writes ``results/distributed.json`` (the "distributed" section of docs/benchmarks.md). Needs
a machine with at least two free cores (other jobs on the cores distort the ratio) and
Fashion-MNIST (it skips itself without).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import quick_banner, source, table  # noqa: E402
from _results import Record, need_fashion_mnist, parser  # noqa: E402

HERE = Path(__file__).resolve()
ENV = dict(os.environ, OMP_NUM_THREADS="1")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            "--master_port=0", "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0"]
PARAMS = dict(n_clusters=10, random_state=0, max_epochs=2, n_label_updates=1)


# The runs: (label, processes, sync_batch_norm).
RUNS = (("1 process", 1, True), ("2 processes", 2, True),  # one thread each
        ("2 processes, `sync_batch_norm=False`", 2, False))


def worker(samples, out, sync):
    """One process of a run: fit, then write what it measured to ``out/rank<r>.json``."""
    from skselflabel import SelfLabelClusterer
    from skselflabel.datasets import load_fashion_mnist
    from skselflabel.metrics import cluster_accuracy

    torch.set_num_threads(1)
    X, y = load_fashion_mnist(split="train", return_X_y=True)
    X, y = X[:samples], y[:samples]
    started = time.perf_counter()
    est = SelfLabelClusterer(**PARAMS, sync_batch_norm=sync).fit(X)
    fit_seconds = time.perf_counter() - started
    rank = int(os.environ.get("RANK", "0"))
    result = {"epoch_seconds": float(est.history_["seconds"].iloc[1]),
              "fit_seconds": fit_seconds,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "acc": float(cluster_accuracy(y, est.labels_)),
              "labels": est.labels_[:1000].tolist()}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def run(processes, samples, sync):
    """One run in fresh processes; the measures of each process."""
    with tempfile.TemporaryDirectory() as out:
        cmd = ([sys.executable] if processes == 1 else TORCHRUN)
        cmd = cmd + [str(HERE), "--worker", "--samples", str(samples), "--worker-out", out]
        cmd += [] if sync else ["--local-batch-norm"]
        done = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{processes} process(es) failed:\n{done.stderr[-3000:]}")
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(processes)]
    if any(r["labels"] != ranks[0]["labels"] for r in ranks):
        raise RuntimeError("the processes of a run ended with different labels")
    return ranks


def render(load):
    r = load("distributed")
    if r is None:
        return None
    s = r["settings"]
    seen = {label: [x for x in r["runs"] if x["run"] == label] for label, _, _ in RUNS}
    one = seen[RUNS[0][0]]

    def median(label, key):
        return statistics.median(x[key] for x in seen[label])

    def speedup(label, key):
        return statistics.median(a[key] / b[key] for a, b in zip(one, seen[label]))

    rows = [[p, f"{median(p, 'epoch_seconds'):.2f}", f"{median(p, 'fit_seconds'):.2f}",
             f"{median(p, 'peak_rss_mib'):.0f}", f"{median(p, 'acc'):.3f}",
             f"{speedup(p, 'epoch_seconds'):.2f}x", f"{speedup(p, 'fit_seconds'):.2f}x"]
            for p in seen]
    return "\n".join([
        "## Data-parallel fit (`benchmarks/distributed.py`)", "",
        quick_banner(r) + source(r, "distributed"), "",
        f"Data: the first {s['samples']:,} Fashion-MNIST training images (uint8). Fit: "
        "`SelfLabelClusterer(n_clusters=10, random_state=0, max_epochs=2, "
        "n_label_updates=1)`, started in a fresh process or by `torchrun "
        "--nproc_per_node=2`, `OMP_NUM_THREADS=1`. Training epoch: the second epoch's "
        "`history_` seconds (no self-label step in it). Medians over "
        f"{s['repeats']} alternating repeat(s); peak memory: the largest peak resident set "
        "of the run's processes.", "",
        table(["run", "training epoch (s)", "whole fit (s)",
               "peak memory per process (MiB)", "ACC", "epoch speed-up", "fit speed-up"],
              rows), "",
        "Speed-ups: over one process, the median of the per-repeat ratios.",
    ])


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--samples", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--local-batch-norm", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.samples, args.worker_out, sync=not args.local_batch_norm)
    need_fashion_mnist()
    if args.quick:
        args.samples, args.repeats = 2000, 1
    with Record("distributed", args, samples=args.samples, repeats=args.repeats) as rec:
        for r in range(args.repeats):
            for label, processes, sync in (RUNS if r % 2 == 0 else RUNS[::-1]):
                ranks = run(processes, args.samples, sync)
                best = dict(ranks[0], peak_rss_mib=max(x["peak_rss_mib"] for x in ranks))
                best.pop("labels")
                rec.runs.append(dict(best, run=label, repeat=r))
                print(f"repeat {r + 1}, {label}: epoch {best['epoch_seconds']:.2f} s, fit "
                      f"{best['fit_seconds']:.2f} s, peak {best['peak_rss_mib']:.0f} MiB per "
                      f"process, ACC {best['acc']:.3f}", flush=True)


if __name__ == "__main__":
    main()
