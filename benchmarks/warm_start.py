"""Self-label steps warm-started from the previous step's duals against steps solved from
scratch, on the logits of a real fit (issue 23).

Fits ``SelfLabelClusterer(n_clusters=3000, n_init=1, max_epochs=4, random_state=0)`` on the
first 20,000 Fashion-MNIST training images, on one torch thread, and keeps a copy of the
first head's logits at every self-label step (with what the step passed: equal sizes or
not, the early size tolerance). Then, in the same process, it solves each captured step
twice with the estimator's default assigner (its lam, tol and size tolerance are recorded;
``copy=False`` as in a fit): cold (``init_log_v=None``: the solver's own start, a
subsample warm-up with annealing) and warm (``init_log_v`` = ``log_v`` of the previous
step's warm solve, as a fit now does). Per step it records iterations, seconds (median
of repeats), marginal error, the share of samples whose label is the same in both, the
cluster sizes of each and the bounds the sizes must keep, and the NMI of each labelling
with the classes. The first step has no previous duals and is left out of the
comparison.

    python benchmarks/warm_start.py            # Fashion-MNIST 20,000 x 3,000 clusters
    python benchmarks/warm_start.py --quick    # the digits images, 100 clusters

Writes ``results/warm_start.json`` (the "warm_start" section of docs/benchmarks.md).
"""
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from skselflabel import SelfLabelClusterer, SinkhornAssigner
from skselflabel._fit.config import DEFAULT_LAM, DEFAULT_SIZE_TOLERANCE, DEFAULT_TOL
from skselflabel._solver.rounding import size_bounds
from skselflabel.datasets import load_digits_images, load_fashion_mnist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import quick_banner, source, table  # noqa: E402
from _results import Record, need_fashion_mnist, parser  # noqa: E402

FASHION_N = 20_000
# The reference labels of each step: a cold solve to tol / TIGHT.
TIGHT, TIGHT_MAX_ITER = 1e-2, 20_000


class Capturing(SinkhornAssigner):
    """The default assigner, keeping a copy of the first head's logits and keywords at
    every self-label step (before the solve overwrites them), and what the fit's own
    solve took."""

    def __init__(self, lam=DEFAULT_LAM, prior=None, input="logits", tol=DEFAULT_TOL,
                 max_iter=1000, size_tolerance=DEFAULT_SIZE_TOLERANCE):
        super().__init__(lam=lam, prior=prior, input=input, tol=tol, max_iter=max_iter,
                         size_tolerance=size_tolerance)
        self.steps = []

    def assign_tensor(self, scores, **kwargs):
        if kwargs.get("uniform") is False or not self.steps:   # the first head
            keep = {k: v for k, v in kwargs.items() if k not in ("init_log_v", "copy")}
            self.steps.append({"scores": scores.clone(), "kwargs": keep})
        tic = time.perf_counter()
        result = super().assign_tensor(scores, **kwargs)
        self.steps[-1]["in_fit"] = {"warm": kwargs.get("init_log_v") is not None,
                                    "iterations": result.n_iter,
                                    "seconds": time.perf_counter() - tic}
        return result


def _data(quick):
    if quick:
        X, y = load_digits_images(return_X_y=True)
        return X, y
    X, y = load_fashion_mnist(split="train", return_X_y=True, as_float=True)
    return X[:FASHION_N], y[:FASHION_N]


def _solve(assigner, step, init_log_v, repeats):
    """The result of one solve of ``step`` and the median seconds of ``repeats``."""
    seconds = []
    for _ in range(repeats):
        scores = step["scores"].clone()           # copy=False overwrites them
        tic = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")       # an unconverged solve shows in its error
            result = assigner.assign_tensor(scores, copy=False, init_log_v=init_log_v,
                                            **step["kwargs"])
        seconds.append(time.perf_counter() - tic)
    return result, statistics.median(seconds)


def _sizes(labels, k):
    counts = np.bincount(labels, minlength=k)
    return int(counts.min()), int(counts.max())


def compare(assigner, steps, y, repeats):
    """One row per captured step: the cold and the warm solve side by side, and the
    labels of a solve to a hundred times tighter ``tol`` (from scratch) to compare both
    with."""
    rows, previous = [], None
    tight_assigner = SinkhornAssigner(lam=assigner.lam, tol=assigner.tol * TIGHT,
                                      max_iter=TIGHT_MAX_ITER,
                                      size_tolerance=assigner.size_tolerance)
    for i, step in enumerate(steps):
        k = step["scores"].shape[1]
        cold, cold_s = _solve(assigner, step, None, repeats)
        warm, warm_s = (cold, cold_s) if previous is None else _solve(
            assigner, step, previous, repeats)
        tight = _solve(tight_assigner, step, None, 1)[0].labels.numpy()
        previous = warm.log_v
        tolerance = max(assigner.size_tolerance, step["kwargs"]["min_size_tolerance"])
        low, high = size_bounds(cold.prior, len(y), tolerance)
        cold_labels, warm_labels = cold.labels.numpy(), warm.labels.numpy()
        rows.append({
            "step": i, "uniform": bool(step["kwargs"]["uniform"]),
            "size_tolerance": tolerance, "bound_min": int(low.min()),
            "bound_max": int(high.max()),
            "cold_iter": cold.n_iter, "cold_s": cold_s, "cold_err": cold.marginal_error,
            "warm_iter": warm.n_iter, "warm_s": warm_s, "warm_err": warm.marginal_error,
            "same_labels": float(np.mean(cold_labels == warm_labels)),
            "cold_tight": float(np.mean(cold_labels == tight)),
            "warm_tight": float(np.mean(warm_labels == tight)),
            "cold_sizes": _sizes(cold_labels, k), "warm_sizes": _sizes(warm_labels, k),
            "cold_nmi": normalized_mutual_info_score(y, cold_labels),
            "warm_nmi": normalized_mutual_info_score(y, warm_labels),
            "in_fit": step["in_fit"]})
        print(f"step {i}: cold {cold.n_iter} iter {cold_s:.2f} s err {cold.marginal_error:.1e}"
              f" | warm {warm.n_iter} iter {warm_s:.2f} s err {warm.marginal_error:.1e}"
              f" | same labels {rows[-1]['same_labels']:.4f}, as tight "
              f"{rows[-1]['cold_tight']:.4f} / {rows[-1]['warm_tight']:.4f}"
              f" | NMI {rows[-1]['cold_nmi']:.3f} / {rows[-1]['warm_nmi']:.3f}", flush=True)
    return rows


def main(argv=None):
    args = parser(__doc__).parse_args(argv)
    if not args.quick:
        need_fashion_mnist()
    torch.set_num_threads(1)
    X, y = _data(args.quick)
    settings = dict(data="the digits images" if args.quick
                    else f"the first {FASHION_N:,} Fashion-MNIST training images",
                    n_samples=len(X), n_clusters=100 if args.quick else 3000,
                    max_epochs=3 if args.quick else 4, random_state=0,
                    repeats=3 if args.quick else 2, lam=DEFAULT_LAM, tol=DEFAULT_TOL,
                    size_tolerance=DEFAULT_SIZE_TOLERANCE)
    with Record("warm_start", args, **settings) as rec:
        assigner = Capturing()
        tic = time.perf_counter()
        clu = SelfLabelClusterer(n_clusters=settings["n_clusters"], n_init=1,
                                 max_epochs=settings["max_epochs"], random_state=0,
                                 assigner=assigner).fit(X)
        rec.summary["fit_seconds"] = time.perf_counter() - tic
        rec.summary["history"] = clu.history_.to_dict(orient="list")
        print(f"fit: {rec.summary['fit_seconds']:.0f} s, {len(assigner.steps)} self-label "
              "steps captured", flush=True)
        default = SinkhornAssigner(lam=DEFAULT_LAM, tol=DEFAULT_TOL,
                                   size_tolerance=DEFAULT_SIZE_TOLERANCE)
        rec.runs.extend(compare(default, assigner.steps, y, settings["repeats"]))


def _ratio(a, b):
    return a / b if b else float("inf")


def render(load):
    r = load("warm_start")
    if r is None:
        return None
    s = r["settings"]
    runs = [run for run in r["runs"] if run["step"] > 0]     # the first has no previous duals
    rows = [[run["step"],
             f"{run['cold_iter']} / {run['warm_iter']}",
             f"{run['cold_s']:.2f} / {run['warm_s']:.2f}",
             f"{run['cold_err']:.1e} / {run['warm_err']:.1e}",
             f"{100 * run['same_labels']:.1f}%",
             f"{100 * run['cold_tight']:.1f}% / {100 * run['warm_tight']:.1f}%",
             f"{run['cold_sizes'][0]}-{run['cold_sizes'][1]} / "
             f"{run['warm_sizes'][0]}-{run['warm_sizes'][1]} "
             f"({run['bound_min']}-{run['bound_max']})",
             f"{run['cold_nmi']:.3f} / {run['warm_nmi']:.3f}"] for run in runs]
    med = statistics.median
    iter_ratio = med(_ratio(run["cold_iter"], run["warm_iter"]) for run in runs)
    s_ratio = med(_ratio(run["cold_s"], run["warm_s"]) for run in runs)
    rows.append(["median",
                 f"{med(run['cold_iter'] for run in runs):g} / "
                 f"{med(run['warm_iter'] for run in runs):g} (ratio {iter_ratio:.1f}x)",
                 f"{med(run['cold_s'] for run in runs):.2f} / "
                 f"{med(run['warm_s'] for run in runs):.2f} (ratio {s_ratio:.1f}x)",
                 f"{med(run['cold_err'] for run in runs):.1e} / "
                 f"{med(run['warm_err'] for run in runs):.1e}",
                 f"{100 * med(run['same_labels'] for run in runs):.1f}%",
                 f"{100 * med(run['cold_tight'] for run in runs):.1f}% / "
                 f"{100 * med(run['warm_tight'] for run in runs):.1f}%", "",
                 f"{med(run['cold_nmi'] for run in runs):.3f} / "
                 f"{med(run['warm_nmi'] for run in runs):.3f}"])
    cold_total = sum(run["cold_s"] for run in runs)
    warm_total = sum(run["warm_s"] for run in runs)
    in_fit = [run["in_fit"] for run in r["runs"]]
    return "\n".join([
        "## Warm-started self-label steps (`benchmarks/warm_start.py`)",
        "",
        quick_banner(r) + source(r, "warm_start"),
        "",
        f"The first head's logits at each of the {len(r['runs'])} self-label steps of one "
        f"fit (`SelfLabelClusterer(n_clusters={s['n_clusters']}, n_init=1, "
        f"max_epochs={s['max_epochs']}, random_state={s['random_state']})` on "
        f"{s['data']}, {s['n_samples']:,} samples, one torch thread), each solved in the "
        f"same process with the default assigner (lam {s['lam']:g}, tol {s['tol']:g}, size "
        f"tolerance {s['size_tolerance']:g}, `copy=False`, as in a fit): cold (the "
        "solver's own start, as before issue 23: a warm-up with lam annealed) and warm "
        "(from `log_v` of the previous step's warm solve, as a fit now does). Cells are "
        f"cold / warm; seconds are the median of {s['repeats']} solves. Step 0 has no "
        "previous duals and is not shown.",
        "",
        table(["step", "iterations", "seconds", "marginal error", "same label",
               "same label as a tight solve", "cluster sizes min-max (allowed)",
               "NMI with the classes"], rows),
        "",
        f"Steps 1 to {runs[-1]['step']} together: {cold_total:.1f} s cold, "
        f"{warm_total:.1f} s warm ({_ratio(cold_total, warm_total):.1f}x). Both solves stop "
        "at the same `tol`, so the ratios are speed-ups at the same marginal error. Same "
        "label: share of samples whose warm label is their cold label; same label as a "
        f"tight solve: share with the label of a cold solve to tol {s['tol'] * TIGHT:g}. "
        "With many clusters the plan is soft, and which side of a near-tie a sample lands "
        "on is decided below the tolerance: read the cold/warm share beside each one's "
        "share against the tight solve, and the sizes and NMI beside each other. "
        "Allowed sizes: the bounds of the step's size tolerance (wider in early steps). "
        f"The fit itself (warm-started) took {r['summary']['fit_seconds'] / 60:.1f} "
        f"minutes; its own solves took {sum(f['iterations'] for f in in_fit)} iterations "
        f"and {sum(f['seconds'] for f in in_fit):.1f} s over its {len(in_fit)} steps.",
    ])


if __name__ == "__main__":
    main()
