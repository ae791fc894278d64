"""The section "scale" of docs/benchmarks.md, from benchmarks/results/scale_*.json."""
from _markdown import quick_banner, source


def _gib(n_bytes):
    return f"{n_bytes / 2**30:.2f} GiB"


def _sizes(heads, target):
    low = min(s[0] for s in heads)
    high = max(s[1] for s in heads)
    return f"{low} to {high} (target {target:.1f}) over {len(heads)} head(s)"


def _run_line(r):
    return quick_banner(r) + source(r, f"scale_{r['case']}")


def _fashion(r):
    p = r["phases"]
    return "\n".join([
        "### Fashion-MNIST, 60,000 images, 3,000 clusters", "",
        _run_line(r), "",
        "`SelfLabelClusterer(n_clusters=3000, random_state=0)`, every other parameter at "
        "its default; the probe is StandardScaler + LogisticRegression on `transform`, "
        "fitted on the training images and scored on the 10,000 test images.", "",
        "| measure | result | target |", "|---|---|---|",
        f"| fit time | {r['fit_seconds'] / 60:.1f} min ({r['epochs']} epochs; graph "
        f"{p['graph']:.0f} s, self-label steps {p['label_updates']:.0f} s, final labelling "
        f"{p['final_labelling']:.0f} s) | <= 20 min |",
        f"| self-label cluster sizes | {_sizes(r['self_label_sizes'], r['n_samples'] / r['n_clusters'])} | 10 to 30 |",
        f"| clusters used by `labels_` | {r['labels_clusters_used']} | >= 2,700 |",
        f"| purity of `labels_` | {r['purity']:.3f} (self-labels {r['self_label_purity']:.3f}) | >= 0.87 |",
        f"| linear probe on `transform`, test images | {r['probe_test_accuracy']:.3f} | >= 0.90 |",
        f"| MiniBatchKMeans(3000) on 64 principal components, same run | purity "
        f"{r['kmeans_purity']:.3f} in {r['kmeans_seconds']:.0f} s | |",
    ] + _side_by_side(r))


def _side_by_side(r):
    """The row comparing the fit with the same fit at 10 clusters, run beside it."""
    side = r.get("side_by_side")
    if not side:
        return []
    ratio = r["fit_seconds"] / side["fit_seconds"]
    return [f"| whole fit against `n_clusters=10`, same settings, run side by side | "
            f"{ratio:.2f} times ({r['fit_seconds'] / 60:.1f} against "
            f"{side['fit_seconds'] / 60:.1f} min) | <= 1.3 |"]


def _heads(r):
    p = r["phases"]
    return "\n".join([
        "### SeLa [3k x 10] on 60,000 random 64-d rows, one epoch", "",
        _run_line(r), "",
        "| measure | result | target |", "|---|---|---|",
        f"| fit time | {r['fit_seconds']:.0f} s (self-label steps {p['label_updates']:.0f} s) "
        "| <= 300 s |",
        f"| resident memory beyond the data | {_gib(r['memory_beyond_data_bytes'])} | <= 4 GiB |",
        f"| self-label sizes | {_sizes(r['head_sizes'], r['target'])} | +-50% |",
    ])


def _rest(r):
    """The fit's time outside its timed phases: mostly the training epoch."""
    p = r["phases"]
    return r["fit_seconds"] - p["graph"] - p["label_updates"] - p["final_labelling"]


def _solves(solves):
    """The most iterations and the largest marginal error of the fit's solves."""
    worst = max(solves, key=lambda s: s["n_iter"])
    moved = [s["n_moved"] for s in solves if "n_moved" in s]
    return (f"{len(solves)} solves, at most {worst['n_iter']} iterations "
            f"({worst['seconds']:.0f} s), largest marginal error "
            f"{max(s['marginal_error'] for s in solves):.3f}"
            + (f"; the size rounding moved at most {max(moved):,} labels of a head"
               if moved else ""))


def _imagenet(r):
    p = r["phases"]
    return "\n".join([
        "### 1,281,167 x 128 memory map, 3,000 clusters x 10 heads", "",
        _run_line(r), "",
        "A mixture of 1,000 Gaussians in 128 dimensions (written to a float32 `.npy` file "
        "and opened with `mmap_mode='r'`), `n_clusters=3000, n_heads=10, max_epochs=1, "
        "n_label_updates=1`.", "",
        "| measure | result | target |", "|---|---|---|",
        f"| fit time | {r['fit_seconds'] / 60:.1f} min | <= 60 min |",
        f"| phases | graph {p['graph'] / 60:.1f} min, self-label steps "
        f"{p['label_updates'] / 60:.1f} min, final labelling "
        f"{p['final_labelling'] / 60:.1f} min, the rest (data checks, training epoch) "
        f"{_rest(r) / 60:.1f} min | |",
        f"| peak RSS | {_gib(r['peak_rss_bytes'])} | <= 20 GiB |",
        f"| self-label solves | {_solves(r['solves'])} | <= 150 iterations |",
        f"| self-label sizes | {_sizes(r['head_sizes'], r['target'])} | +-50% |",
        f"| homogeneity against the 1,000 components | {min(r['homogeneity']):.3f} (worst "
        f"head), `labels_` {r['labels_homogeneity']:.3f} | >= 0.9 |",
    ])


def _memmap(r):
    return "\n".join([
        "### A 300,000 x 28 x 28 uint8 memory map", "",
        _run_line(r), "",
        f"`SelfLabelClusterer(n_clusters=10, max_epochs=1, n_label_updates=1)` on random "
        f"images: fit took {r['fit_seconds']:.0f} s and its anonymous memory (RssAnon) grew "
        f"by at most {_gib(r['anonymous_growth_bytes'])}; a float32 copy of X alone would "
        f"be {_gib(r['float32_copy_bytes'])} (target: at most 1 GiB beyond the model and "
        "its buffers).",
    ] + _memory_account(r))


def _memory_account(r):
    """Rows of the fit's anonymous memory by phase, relative to its start (older results
    without phases give none)."""
    if "phases" not in r:
        return []
    mib = lambda value: f"{(value - r['anonymous_start_bytes']) / 2**20:.0f} MiB"
    rows = ["", "| phase | before | after (kept) | peak during |", "|---|---|---|---|"]
    rows += [f"| {m['phase']} | {mib(m['before'])} | {mib(m['after'])} | {mib(m['peak'])} |"
             for m in r["phases"]]
    rows += ["", f"Still held after `fit` returned: "
             f"{r['kept_after_fit_bytes'] / 2**20:.0f} MiB."]
    return rows + _memory_plan(r)


def _memory_plan(r):
    """The fit's own estimate, part by part, beside the measured growth."""
    if not r.get("plan"):
        return []
    phases = [sum(part["bytes"] for part in phase) for phase in r["plan"]]
    top = r["plan"][phases.index(max(phases))]
    rows = ["", "The fit's own estimate (`check_fit_memory`, what it holds against the "
            "memory limits), its largest phase part by part:", "",
            "| part | estimated |", "|---|---|"]
    rows += [f"| {part['what']} | {part['bytes'] / 2**20:.0f} MiB |" for part in top]
    rows += [f"| total | {max(phases) / 2**20:.0f} MiB (measured growth at the peak: "
             f"{r['anonymous_growth_bytes'] / 2**20:.0f} MiB) |"]
    return rows


def _graph(r):
    rows = [_graph_line(f"{row['n']:,} mixture rows", row) for row in r["rows"]]
    fashion = r.get("fashion")
    if fashion:
        rows.append(_graph_line(f"{fashion['n']:,} Fashion-MNIST images", fashion))
    return "\n".join([
        "### Neighbour graph construction (faiss IVF, `neighbor_recall=0.95`)", "",
        _run_line(r), "",
        "The approximate search the graph uses beyond 100,000 samples on a CPU (faiss's "
        "`IndexIVFFlat`: k-means lists of about 1,000 points, each point searched in its "
        "`nprobe` nearest lists), forced at every size: 64-d rows of a mixture of 1,000 "
        "Gaussians, and the neighbour space of a fit of the Fashion-MNIST training images "
        "(gradient histograms on 64 principal axes). Recall@10 against exact search on "
        "1,000 sampled rows; the index's own estimate on another 1,000.", "",
        "| points | lists | nprobe | seconds | recall@10 | estimated |",
        "|---|---|---|---|---|---|", *rows, "",
        f"Time grows like N^{r['growth_exponent']:.2f} on the mixture (least-squares slope "
        "of log time on log N; target: no worse than N^1.3). Recall target: at least "
        "0.95; " + _recall_verdict(r["rows"] + ([fashion] if fashion else [])),
    ])


def _graph_line(name, row):
    return (f"| {name} | {row['n_lists']:,} | {row['nprobe']} | {row['seconds']:.1f} | "
            f"{row['recall_at_10']:.4f} | {row['estimated_recall']:.4f} |")


def _recall_verdict(rows):
    short = [f"{row['n']:,}" for row in rows if row["recall_at_10"] < 0.95]
    return ("met at every size." if not short else
            f"not met at {', '.join(short)} points.")


def render_scale(load):
    """The section from ``load("scale_<case>")`` of each case; None when no case has run."""
    found = {case: load(f"scale_{case}") for case in
             ("fashion", "heads", "imagenet", "memmap", "graph")}
    if not any(found.values()):
        return None
    parts = ["## SelfLabelClusterer at scale (`benchmarks/scale.py`)", "",
             "Each case ran in its own process: `python benchmarks/scale.py <case>`."]
    renders = {"fashion": _fashion, "heads": _heads, "imagenet": _imagenet,
               "memmap": _memmap, "graph": _graph}
    for case, result in found.items():
        parts += ["", renders[case](result) if result else
                  f"### {case}\n\nNot run yet: `python benchmarks/scale.py {case}`."]
    return "\n".join(parts)
