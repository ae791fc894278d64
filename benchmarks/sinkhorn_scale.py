"""Scale check: sinkhorn_knopp at ImageNet size, in place, on this machine.

Run once: ``python benchmarks/sinkhorn_scale.py`` (needs about 16 GiB of free memory).
N = 1,281,167 samples, K = 3,000 clusters of float32 logits (15.4 GB) are generated in place,
chunk by chunk (no second N x K array), then solved with ``copy=False``, lam = 25 and the
default tol = 1e-3. Prints seconds, iterations, marginal error and the process's peak
resident set (``resource.getrusage``), input included, and writes them to the
"sinkhorn-scale" section of docs/benchmarks.md.
"""
import argparse
import os
from pathlib import Path
import resource
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_description, write_section  # noqa: E402

from skselflabel import sinkhorn_knopp  # noqa: E402
from skselflabel._solver import iterations  # noqa: E402


def available_gib():
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2 ** 20
    return float("nan")


def head_logits_in_place(N, K, chunk=20_000, seed=0, scale=3.0):
    """Head-like logits (as ``balanced_logits``), written chunk by chunk into one array."""
    rng = np.random.default_rng(seed)
    z = np.empty((N, K), dtype=np.float32)
    p = rng.dirichlet(np.ones(K) * 2)
    for lo in range(0, N, chunk):
        block = z[lo:lo + chunk]
        rng.standard_normal(out=block, dtype=np.float32)
        block *= scale / 3
        home = rng.choice(K, size=len(block), p=p)
        block[np.arange(len(block)), home] += scale
    return z


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_281_167)
    parser.add_argument("--k", type=int, default=3_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    need = args.n * args.k * 4 / 2 ** 30 + 1.0
    free = available_gib()
    load = os.getloadavg()[0]
    if free < need:
        sys.exit(f"need about {need:.1f} GiB of available memory, /proc/meminfo says "
                 f"{free:.1f} GiB; not starting.")
    t0 = time.perf_counter()
    z = head_logits_in_place(args.n, args.k)
    gen_s = time.perf_counter() - t0
    print(f"generated {z.shape} float32 ({z.nbytes / 1e9:.1f} GB) in {gen_s:.0f} s", flush=True)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = sinkhorn_knopp(z, lam=25.0, copy=False)
    solve_s = time.perf_counter() - t0
    warned = "; ".join(f"{w.category.__name__}: {w.message}" for w in caught) or "none"
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    counts = np.bincount(res.labels, minlength=args.k)
    md = "\n".join([
        "## Sinkhorn-Knopp at ImageNet scale (`benchmarks/sinkhorn_scale.py`)",
        "",
        f"Command: `python benchmarks/sinkhorn_scale.py`. Machine: {machine_description()}, "
        f"{free:.1f} GiB available and 1-minute load average {load:.1f} at the start; "
        f"torch threads {torch.get_num_threads()}; compiled sweep (`skselflabel._solver._fused`): "
        f"{'yes' if iterations._fused is not None else 'not built'}.",
        "",
        "| N x K | input | solve seconds | iterations | marginal error | converged "
        "| peak RSS (input included) | cluster sizes min / max (target) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {args.n:,} x {args.k:,} | float32, {z.nbytes / 1e9:.1f} GB, copy=False "
        f"| {solve_s:.0f} | {res.n_iter} | {res.marginal_error:.1e} | {res.converged} "
        f"| {peak_gib:.2f} GiB | {counts.min()} / {counts.max()} ({args.n / args.k:.0f}) |",
        "",
        "lam = 25, tol = 1e-3 (default). Logits generated in place in chunks (the "
        f"generation, {gen_s:.0f} s, is not in the solve time). Warnings: {warned}.",
    ])
    print(md)
    if not args.no_write:
        print("wrote", write_section("sinkhorn-scale", md))


if __name__ == "__main__":
    main()
