"""Scale check: sinkhorn_knopp at ImageNet size, in place, on this machine.

Run once: ``python benchmarks/sinkhorn_scale.py`` (needs about 16 GiB of free memory, else it
skips itself; ``--quick``: 200,000 x 300).
N = 1,281,167 samples, K = 3,000 clusters of float32 logits (15.4 GB) are generated in place,
chunk by chunk (no second N x K array), then solved with ``copy=False``, lam = 25 and the
default tol = 1e-3. Prints seconds, iterations, marginal error and the process's peak
resident set (``resource.getrusage``), input included, into ``results/sinkhorn_scale.json``
(the "sinkhorn-scale" section of docs/benchmarks.md).
"""
from pathlib import Path
import resource
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import quick_banner, source, table  # noqa: E402
from _results import Record, available_gib, parser, skip  # noqa: E402

SECTION = "sinkhorn-scale"

from skselflabel import sinkhorn_knopp  # noqa: E402
from skselflabel._solver import iterations  # noqa: E402


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
    p = parser(__doc__)
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--k", type=int, default=None)
    args = p.parse_args(argv)
    n = args.n or (200_000 if args.quick else 1_281_167)
    k = args.k or (300 if args.quick else 3_000)
    need = n * k * 4 / 2 ** 30 + 1.0
    free = available_gib()
    if free < need:
        skip(f"needs about {need:.1f} GiB of available memory, /proc/meminfo says "
             f"{free:.1f} GiB")
    with Record("sinkhorn_scale", args, n=n, k=k, lam=25.0, tol=1e-3,
                available_gib=free,
                compiled_sweep=iterations._fused is not None) as rec:
        t0 = time.perf_counter()
        z = head_logits_in_place(n, k)
        gen_s = time.perf_counter() - t0
        print(f"generated {z.shape} float32 ({z.nbytes / 1e9:.1f} GB) in {gen_s:.0f} s",
              flush=True)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = sinkhorn_knopp(z, lam=25.0, copy=False)
        solve_s = time.perf_counter() - t0
        counts = np.bincount(res.labels, minlength=k)
        rec.runs.append({
            "input_bytes": z.nbytes, "generate_seconds": gen_s, "solve_seconds": solve_s,
            "n_iter": res.n_iter, "marginal_error": res.marginal_error,
            "converged": bool(res.converged),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            "size_min": int(counts.min()), "size_max": int(counts.max()),
            "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]})
        print(rec.runs[-1])


def render(load):
    r = load("sinkhorn_scale")
    if r is None:
        return None
    s, run = r["settings"], r["runs"][0]
    sweep = "yes" if s["compiled_sweep"] else "not built"
    return "\n".join([
        "## Sinkhorn-Knopp at ImageNet scale (`benchmarks/sinkhorn_scale.py`)", "",
        quick_banner(r) + source(r, "sinkhorn_scale"), "",
        f"{s['available_gib']:.1f} GiB available at the start; compiled sweep: {sweep}.", "",
        table(["N x K", "input", "solve seconds", "iterations", "marginal error",
               "converged", "peak RSS (input included)", "cluster sizes min / max (target)"],
              [[f"{s['n']:,} x {s['k']:,}",
                f"float32, {run['input_bytes'] / 1e9:.1f} GB, copy=False",
                f"{run['solve_seconds']:.0f}", run["n_iter"],
                f"{run['marginal_error']:.1e}", run["converged"],
                f"{run['peak_rss_gib']:.2f} GiB",
                f"{run['size_min']} / {run['size_max']} ({s['n'] / s['k']:.0f})"]]), "",
        f"lam = 25, tol = 1e-3 (default). Logits generated in place in chunks (the "
        f"generation, {run['generate_seconds']:.0f} s, is not in the solve time). Warnings: "
        f"{'; '.join(run['warnings']) or 'none'}.",
    ])


if __name__ == "__main__":
    main()
