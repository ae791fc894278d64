"""A fit under a real ``RLIMIT_AS`` (``ulimit -v``): refused before its large allocations
when the limit is below its estimate, completed when the limit leaves room.

Runs the issue's fit, ``SelfLabelClusterer(n_clusters=3000, n_heads=10, max_epochs=1,
n_label_updates=1)`` on 200,000 x 64 random rows, in a child process whose address space
is limited with ``resource.setrlimit(RLIMIT_AS)``: once at 3 GiB (the estimate is above
it) and once at 6 GiB. Records the outcome, the seconds from ``fit`` to the outcome, the
estimate, the message, and the child's peak resident set.

    python benchmarks/memory_limit.py            # the issue's fit: about a quarter hour
    python benchmarks/memory_limit.py --quick    # 10,000 x 16, 1,000 clusters, 2 heads

Writes ``results/memory_limit.json`` (the "memory-limit" section of docs/benchmarks.md).
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import quick_banner, source, table  # noqa: E402
from _results import Record, parser  # noqa: E402

SECTION = "memory-limit"
GIB = 2 ** 30

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    from skselflabel import SelfLabelClusterer
    from skselflabel._fit.config import resolve_config
    from skselflabel._fit.fit import fit_phases
    from skselflabel._runtime import memory

    n, d, k, heads, limit = (int(v) for v in sys.argv[1:6])
    X = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    est = SelfLabelClusterer(k, n_heads=heads, max_epochs=1, n_label_updates=1,
                             random_state=0)
    config = resolve_config(est.get_params(deep=False), n, (d,))
    estimate = memory.peak(fit_phases(n, d, k, heads, 128, config.n_neighbors,
                                      config.diffusion_steps))[0]
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    began = time.perf_counter()
    try:
        est.fit(X)
        outcome, message = "fitted", f"{len(set(est.labels_.tolist()))} clusters used"
    except MemoryError as exc:
        outcome, message = "refused", str(exc)
    print(json.dumps({"outcome": outcome, "seconds": time.perf_counter() - began,
                      "estimate_bytes": estimate, "message": message,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                      * 1024}))
""")


def _child(n, d, k, heads, limit):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(n), str(d), str(k), str(heads),
                           str(limit)], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    import json
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parser(__doc__).parse_args(argv)
    if args.quick:
        n, d, k, heads, limits = 10_000, 16, 1000, 2, (int(0.6 * GIB), 4 * GIB)
    else:
        n, d, k, heads, limits = 200_000, 64, 3000, 10, (3 * GIB, 6 * GIB)
    with Record("memory_limit", args, n_samples=n, n_features=d, n_clusters=k,
                n_heads=heads, limits_bytes=list(limits)) as rec:
        for limit in limits:
            run = _child(n, d, k, heads, limit)
            rec.runs.append({"rlimit_as_bytes": limit, **run})
            print({key: v for key, v in rec.runs[-1].items() if key != "message"},
                  flush=True)


def render(load):
    r = load("memory_limit")
    if r is None:
        return None
    s = r["settings"]
    rows = [[f"{x['rlimit_as_bytes'] / GIB:.1f} GiB", x["outcome"],
             f"{x['seconds']:.2f}", f"{x['estimate_bytes'] / GIB:.2f} GiB",
             f"{x['peak_rss_bytes'] / GIB:.2f} GiB"] for x in r["runs"]]
    refused = [x for x in r["runs"] if x["outcome"] == "refused"]
    return "\n".join([
        "## A fit under `ulimit -v` (`benchmarks/memory_limit.py`)", "",
        quick_banner(r) + source(r, "memory_limit"), "",
        f"`SelfLabelClusterer(n_clusters={s['n_clusters']}, n_heads={s['n_heads']}, "
        f"max_epochs=1, n_label_updates=1)` on {s['n_samples']:,} x {s['n_features']} random "
        "rows, in a child process limited by `RLIMIT_AS`; seconds from `fit` to its "
        "outcome; the child's peak resident set.", "",
        table(["RLIMIT_AS", "outcome", "seconds", "estimate", "peak resident set"], rows),
        *(["", "The refusal:", "", "```text", refused[0]["message"], "```"] if refused
          else []),
    ])


if __name__ == "__main__":
    main()
