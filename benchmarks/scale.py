"""SelfLabelClusterer at SeLa's own scale: thousands of clusters, ten heads, a million rows.

Each case runs in a process of its own (so that its peak memory is its own) and writes
``benchmarks/results/scale_<case>.json`` (the section "scale" of docs/benchmarks.md).

    python benchmarks/scale.py                # every case (hours)
    python benchmarks/scale.py fashion        # one case (fashion, heads, imagenet,
                                              #   memmap, graph)
    python benchmarks/scale.py --quick        # every case at small sizes (minutes)

Cases:

- fashion: Fashion-MNIST, 60,000 training images, SelfLabelClusterer(n_clusters=3000,
  random_state=0); self-label sizes, clusters used by labels_, purity, a linear probe on
  transform scored on the 10,000 test images; MiniBatchKMeans(3000) on 64 principal
  components in the same run; the same fit with n_clusters=10 in a second process at the
  same time (its time, for the ratio of the two).
- heads: SeLa [3k x 10] on 60,000 random 64-d rows, one epoch: time, memory beyond the
  data, sizes of every head.
- imagenet: a 1,281,167 x 128 float32 memory map (a mixture of 1,000 Gaussians standing in
  for ImageNet embeddings), n_clusters=3000, n_heads=10, one epoch, one label update:
  time of each phase, peak RSS, sizes of every head, homogeneity against the components.
- memmap: a 300,000 x 28 x 28 uint8 memory map: anonymous memory held by fit.
- graph: the approximate neighbour search, faiss's IVF index (time, settings, recall@10
  against exact search on a sample) at 100k, 300k and 1M 64-d rows, and on the neighbour
  space of a fit of the 60,000 Fashion-MNIST training images.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SECTION = "scale"
CASES = ("fashion", "heads", "imagenet", "memmap", "graph")


# ------------------------------------------------------------------ measuring
class MemoryWatch:
    """Peak of a /proc/self/status field (kB), sampled every 50 ms in a thread."""

    def __init__(self, field="RssAnon"):
        self.field, self.peak, self._stop = field, 0, threading.Event()
        self.window_peak = 0

    def read(self):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(self.field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def __enter__(self):
        self.start = self.read()
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.05):
            value = self.read()
            self.peak = max(self.peak, value)
            self.window_peak = max(self.window_peak, value)

    def window(self):
        """Start a new window for ``window_peak``; returns the value now."""
        self.window_peak = value = self.read()
        return value

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())


def memory_marks(watch):
    """The watched field around each phase of a fit: the value before and after it (what
    the phase keeps) and its peak during it (what it needs for a while)."""
    from skselflabel._fit import fit, training

    marks = []

    def marked(name, fn):
        def run(*args, **kwargs):
            before = watch.window()
            try:
                return fn(*args, **kwargs)
            finally:
                after = watch.read()
                marks.append({"phase": name, "before": before, "after": after,
                              "peak": max(watch.window_peak, after)})
        return run

    fit._start = marked("start: network, input statistics", fit._start)
    build = fit.NeighborGraph.build.__func__
    fit.NeighborGraph.build = classmethod(marked("neighbour graph", build))
    training.Trainer._relabel = marked("self-label step", training.Trainer._relabel)
    training.Trainer._train = marked("training (steps and self-label steps)",
                                     training.Trainer._train)
    fit.first_head_labels = marked("final labelling", fit.first_head_labels)
    return marks


def memory_plan():
    """The fit's own memory estimate (the phases of needs that ``check_fit_memory`` holds
    against the limits), filled in when the fit plans it."""
    from skselflabel._fit import fit

    planned = []
    plan = fit.plan

    def kept(phases, device, task):
        if task == "SelfLabelClusterer.fit" and not planned:
            planned.extend([{"what": need.what, "bytes": int(need.nbytes)} for need in phase]
                           for phase in phases)
        return plan(phases, device, task)

    fit.plan = kept
    return planned


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def phase_timer():
    """Wall time of the fit's phases, by wrapping the parts that do them."""
    from skselflabel._fit import fit, training

    phases = {"graph": 0.0, "label_updates": 0.0, "final_labelling": 0.0}
    build = fit.NeighborGraph.build.__func__
    relabel = training.Trainer._relabel
    logits = fit.first_head_labels

    def timed(name, fn):
        def run(*args, **kwargs):
            tic = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] += time.perf_counter() - tic
        return run

    fit.NeighborGraph.build = classmethod(timed("graph", build))
    training.Trainer._relabel = timed("label_updates", relabel)
    fit.first_head_labels = timed("final_labelling", logits)
    return phases


def solve_log():
    """Every self-label solve of the fit: seconds, iterations, marginal error, labels the
    size rounding moved and whether it was warm-started, in the order they ran (heads in
    turn at each step)."""
    from skselflabel import SinkhornAssigner

    solves = []
    assign = SinkhornAssigner.assign_tensor

    def logged(self, scores, **kwargs):
        tic = time.perf_counter()
        result = assign(self, scores, **kwargs)
        solves.append({"seconds": time.perf_counter() - tic, "n_iter": int(result.n_iter),
                       "marginal_error": float(result.marginal_error),
                       "n_moved": int(getattr(result, "n_moved", 0)),
                       "warm": kwargs.get("init_log_v") is not None})
        return result

    SinkhornAssigner.assign_tensor = logged
    return solves


def head_sizes(self_labels, n_clusters):
    sizes = [np.bincount(row, minlength=n_clusters) for row in self_labels]
    return [[int(s.min()), int(s.max())] for s in sizes]


# ------------------------------------------------------------------ cases
def case_fashion(quick):
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from skselflabel import SelfLabelClusterer
    from skselflabel.datasets import load_fashion_mnist

    X, y = load_fashion_mnist(split="train", return_X_y=True)
    X_test, y_test = load_fashion_mnist(split="test", return_X_y=True)
    if quick:
        X, y, X_test, y_test = X[:3000], y[:3000], X_test[:1000], y_test[:1000]
    K = 3000 if not quick else 100
    # The same fit with 10 clusters, in a process of its own on the other core at the
    # same time, so that both fits see the same load.
    with tempfile.TemporaryDirectory() as tmp:
        side_path = Path(tmp) / "side.json"
        side = subprocess.Popen([sys.executable, __file__, "--side-fit", str(side_path)]
                                + ["--quick"] * quick)
        phases = phase_timer()
        tic = time.perf_counter()
        clu = SelfLabelClusterer(n_clusters=K, random_state=0, **_budget(quick)).fit(X)
        fit_seconds = time.perf_counter() - tic
        side_fit = (json.loads(side_path.read_text()) if side.wait() == 0 else None)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    probe.fit(clu.transform(X), y)
    tic = time.perf_counter()
    pcs = PCA(64, random_state=0).fit_transform(X.reshape(len(X), -1) / 255.0)
    km = MiniBatchKMeans(K, random_state=0, n_init=1, batch_size=4096).fit_predict(pcs)
    return {"n_samples": len(X), "n_clusters": K, "fit_seconds": fit_seconds,
            "phases": phases, "epochs": int(clu.n_iter_),
            "self_label_sizes": head_sizes(clu.self_labels_, K),
            "labels_clusters_used": int(len(np.unique(clu.labels_))),
            "purity": purity(y, clu.labels_), "self_label_purity":
            purity(y, clu.self_labels_[0]),
            "probe_test_accuracy": float(probe.score(clu.transform(X_test), y_test)),
            "kmeans_purity": purity(y, km), "kmeans_seconds": time.perf_counter() - tic,
            "side_by_side": side_fit}


def _budget(quick):
    return {"max_epochs": 2} if quick else {}


def side_fit(path, quick):
    """The fashion case's fit with 10 clusters and every other setting the same (run beside
    it): its time and purity, written to ``path``."""
    from skselflabel import SelfLabelClusterer
    from skselflabel.datasets import load_fashion_mnist

    X, y = load_fashion_mnist(split="train", return_X_y=True)
    if quick:
        X, y = X[:3000], y[:3000]
    tic = time.perf_counter()
    clu = SelfLabelClusterer(n_clusters=10, random_state=0, **_budget(quick)).fit(X)
    seconds = time.perf_counter() - tic
    Path(path).write_text(json.dumps({"n_clusters": 10, "fit_seconds": seconds,
                                      "epochs": int(clu.n_iter_),
                                      "purity": purity(y, clu.labels_)}))


def purity(y, labels):
    """Share of samples whose cluster's majority class is their own."""
    table = np.zeros((labels.max() + 1, y.max() + 1), dtype=np.int64)
    np.add.at(table, (labels, y), 1)
    return float(table.max(1).sum() / len(y))


def case_heads(quick):
    from skselflabel import SelfLabelClusterer

    n = 60_000 if not quick else 6_000
    X = np.random.default_rng(0).random((n, 64), dtype=np.float32)
    heads = 10 if not quick else 2
    phases = phase_timer()
    with MemoryWatch("VmRSS") as rss:
        tic = time.perf_counter()
        clu = SelfLabelClusterer(n_clusters=3000, n_heads=heads, max_epochs=1,
                                 random_state=0).fit(X)
        seconds = time.perf_counter() - tic
    return {"n_samples": n, "fit_seconds": seconds, "phases": phases,
            "memory_beyond_data_bytes": rss.peak - rss.start,
            "head_sizes": head_sizes(clu.self_labels_, 3000),
            "target": n / 3000}


def _mixture(path, n, d, k, seed=0):
    """A memory-mapped mixture of ``k`` Gaussians (written in chunks) and its components."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32) * 2.0
    comp = rng.integers(0, k, n)
    X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        X[s:e] = centres[comp[s:e]] + rng.standard_normal((e - s, d), dtype=np.float32)
    X.flush()
    del X
    return np.load(path, mmap_mode="r"), comp


def case_imagenet(quick):
    from sklearn.metrics import homogeneity_score

    from skselflabel import SelfLabelClusterer

    n = 1_281_167 if not quick else 20_000
    heads = 10 if not quick else 2
    with tempfile.TemporaryDirectory(dir=os.environ.get("SCALE_TMP")) as tmp:
        X, comp = _mixture(os.path.join(tmp, "x.npy"), n, 128, 1000)
        phases, solves = phase_timer(), solve_log()
        tic = time.perf_counter()
        clu = SelfLabelClusterer(n_clusters=3000, n_heads=heads, max_epochs=1,
                                 n_label_updates=1, random_state=0, verbose=1).fit(X)
        seconds = time.perf_counter() - tic
    return {"n_samples": n, "fit_seconds": seconds, "phases": phases, "solves": solves,
            "peak_rss_bytes": peak_rss_bytes(), "head_sizes": head_sizes(clu.self_labels_,
                                                                         3000),
            "target": n / 3000,
            "homogeneity": [float(homogeneity_score(comp, row)) for row in clu.self_labels_],
            "labels_homogeneity": float(homogeneity_score(comp, clu.labels_))}


def case_memmap(quick):
    from skselflabel import SelfLabelClusterer

    n = 300_000 if not quick else 5_000
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=os.environ.get("SCALE_TMP")) as tmp:
        path = os.path.join(tmp, "images.npy")
        X = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 28, 28))
        for s in range(0, n, 50_000):
            X[s:s + 50_000] = rng.integers(0, 256, (min(50_000, n - s), 28, 28), np.uint8)
        X.flush()
        del X
        X = np.load(path, mmap_mode="r")
        with MemoryWatch("RssAnon") as anon:
            marks, planned = memory_marks(anon), memory_plan()
            tic = time.perf_counter()
            clu = SelfLabelClusterer(n_clusters=10, max_epochs=1, n_label_updates=1,
                                     random_state=0).fit(X)
            seconds = time.perf_counter() - tic
            kept = anon.read() - anon.start
        float32_copy = n * 28 * 28 * 4
    return {"n_samples": n, "fit_seconds": seconds, "anonymous_start_bytes": anon.start,
            "phases": marks, "plan": planned, "kept_after_fit_bytes": kept,
            "anonymous_growth_bytes": anon.peak - anon.start,
            "float32_copy_bytes": float32_copy, "labels": int(len(clu.labels_))}


def case_graph(quick):
    import torch

    sizes = (100_000, 300_000, 1_000_000) if not quick else (5_000, 10_000, 20_000)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, 64)).astype(np.float32) * 2.0
    rows = []
    for n in sizes:
        X = centres[rng.integers(0, 1000, n)] + rng.standard_normal((n, 64), np.float32)
        rows.append(dict(n=n, **_graph_row(torch.from_numpy(X), rng)))
    growth = np.polyfit(np.log([r["n"] for r in rows]), np.log([r["seconds"] for r in rows]), 1)
    return {"rows": rows, "growth_exponent": float(growth[0]),
            "fashion": _fashion_graph(quick, rng)}


def _graph_row(points, rng):
    """The approximate search of ``points`` (faiss's IVF index, as beyond 100,000 samples on
    a CPU): its settings, seconds, and recall@10 against exact search on 1,000 sampled
    rows."""
    import faiss
    import torch

    from skselflabel._fit.graph import IVFSearch

    faiss.omp_set_num_threads(1)
    n = points.shape[0]
    tic = time.perf_counter()
    index = IVFSearch(points, 10)
    found = index.search(0, n).numpy()
    seconds = time.perf_counter() - tic
    sample = rng.choice(n, 1000, replace=False)
    d = torch.cdist(points[sample], points)
    d[torch.arange(1000), torch.from_numpy(sample)] = float("inf")
    exact = d.topk(10, largest=False).indices.numpy()
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found[sample], exact)])
    return {"index": "faiss IndexIVFFlat", "n_lists": index.n_lists, "nprobe": index.nprobe,
            "estimated_recall": index.estimated_recall, "seconds": seconds,
            "recall_at_10": float(recall)}


def _fashion_graph(quick, rng):
    """The approximate search on the neighbour space a fit of the 60,000 Fashion-MNIST
    training images uses (gradient histograms on 64 principal axes); None without the
    data."""
    from skselflabel._data.input_scaling import InputScaling
    from skselflabel._data.sources import ArraySource, Feeder
    from skselflabel._fit.graph import neighbor_points
    from skselflabel.datasets import fashion_mnist_available, load_fashion_mnist

    if not fashion_mnist_available():
        return None
    X, _ = load_fashion_mnist(split="train", return_X_y=True)
    X = X[:, None] if not quick else X[:5000, None]
    source = ArraySource(X)
    points = neighbor_points(Feeder(source, InputScaling.fit(source), "cpu"), "gradients")
    return dict(n=len(X), space="gradients", **_graph_row(points, rng))


# ------------------------------------------------------------------ driver and report
def run_case(name, args):
    from _results import Record

    with Record(f"scale_{name}", args, flat=True) as rec:
        rec.data["case"] = name
        # The command the user ran: the child's own flag is the driver's business.
        rec.data["command"] = rec.data["command"].replace(" --in-process", "")
        rec.summary.update(globals()[f"case_{name}"](args.quick))


def render(load):
    from _scale_report import render_scale

    return render_scale(load)


def render_readme(load):
    """The README's sentences on the memory of a fit over a uint8 memory map and on the
    ImageNet-size fit."""
    blocks, gib = {}, 2 ** 30
    r = load("scale_memmap")
    if r is not None:
        blocks["memmap"] = (
            f"On a {r['n_samples']:,} x 28 x 28 uint8 memory map (`python benchmarks/scale.py "
            f"memmap`) the fit's anonymous memory grew by "
            f"{r['anonymous_growth_bytes'] / gib:.2f} GiB at its peak, against the "
            f"{r['float32_copy_bytes'] / gib:.2f} GiB a float32 copy of X would take. `fit` "
            "reads X batch by batch, but its own buffers (neighbour graph and neighbour "
            "space, embeddings, logits and labels of the self-label steps) grow with n"
            + ("; docs/benchmarks.md gives them phase by phase" if "phases" in r else
               "; which of them took this much has not been measured yet")
            + " (`benchmarks/results/scale_memmap.json`).")
    r = load("scale_imagenet")
    if r is not None:
        homogeneity = min(r["homogeneity"])
        blocks["imagenet"] = (
            f"On a {r['n_samples']:,} x 128 float32 memory map (a mixture of 1,000 "
            "Gaussians; `python benchmarks/scale.py imagenet`), SeLa's [3k x 10] heads "
            f"trained for one epoch in {r['fit_seconds'] / 60:.1f} minutes on one thread, "
            f"with a peak resident set of {r['peak_rss_bytes'] / gib:.1f} GiB; every "
            f"self-label solve took at most {max(s['n_iter'] for s in r['solves'])} "
            f"iterations. The heads' self-labels reach a homogeneity of {homogeneity:.3f} "
            f"or more against the components (measured at commit {r['commit'][:7]}; "
            "`benchmarks/results/scale_imagenet.json`).")
    return blocks


def main(argv=None):
    from _results import parser, need_fashion_mnist

    p = parser(__doc__)
    p.add_argument("case", nargs="?", default="all", choices=(*CASES, "all"))
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--side-fit", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side_fit is not None:
        return side_fit(args.side_fit, args.quick)
    sys.path.insert(0, str(HERE))
    cases = CASES if args.case == "all" else (args.case,)
    if args.in_process:
        if cases == ("fashion",):
            need_fashion_mnist()
        return run_case(cases[0], args)
    for name in cases:
        cmd = [sys.executable, __file__, name, "--in-process"] + ["--quick"] * args.quick
        cmd += ["--out", str(args.out)] if args.out else []
        code = subprocess.run(cmd).returncode
        if code == 3 and args.case == "all":
            print(f"scale case {name} skipped")
        elif code != 0:
            sys.exit(code)


if __name__ == "__main__":
    sys.exit(main())
