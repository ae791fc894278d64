"""The main job (``python -m skselflabel.demo``, ``make demo``): ``SelfLabelClusterer`` with
its defaults on scikit-learn's digits, table and images, beside KMeans and Ward."""
import argparse
import sys
import time
from pathlib import Path

from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.datasets import load_digits

from ._clusterer import SelfLabelClusterer
from .metrics import adjusted_rand_score, cluster_accuracy, normalized_mutual_info_score


def _scores(y, labels):
    return (cluster_accuracy(y, labels), normalized_mutual_info_score(y, labels),
            adjusted_rand_score(y, labels))


def _timed(make_labels):
    tic = time.perf_counter()
    labels = make_labels()
    return labels, time.perf_counter() - tic


def run(output_dir="output/demo", inputs=("table", "images"), verbose=0, plot=True,
        max_epochs="auto", random_state=0):
    """Fit the three methods on digits, print the comparison, save the grids.

    Parameters
    ----------
    output_dir : str or Path, default="output/demo"
        Where the PNG grids go (created if missing).
    inputs : tuple of {"table", "images"}, default=("table", "images")
        Which forms of digits to cluster with ``SelfLabelClusterer``.
    verbose : int, default=0
        Passed to ``SelfLabelClusterer``.
    plot : bool, default=True
        Save the cluster grids (needs matplotlib).
    max_epochs : int or "auto", default="auto"
        Only for quick smoke runs; the demo's claim is about the default.
    random_state : int, default=0
        Seed of ``SelfLabelClusterer`` (the baselines keep theirs).

    Returns
    -------
    rows : list of tuple
        ``(method, input, acc, nmi, ari, seconds)`` for each fit.
    """
    digits = load_digits()
    X, y = digits.data / 16.0, digits.target  # the table as users load it, scaled to [0, 1]
    images = digits.images / 16.0
    rows = []
    km, t = _timed(lambda: KMeans(10, n_init=10, random_state=0).fit_predict(X))
    rows.append(("KMeans(10)", "table", *_scores(y, km), t))
    ward, t = _timed(lambda: AgglomerativeClustering(10, linkage="ward").fit_predict(X))
    rows.append(("Ward agglomerative", "table", *_scores(y, ward), t))
    fitted = {}
    for form in inputs:
        data = X if form == "table" else images
        clu = SelfLabelClusterer(n_clusters=10, random_state=random_state, verbose=verbose,
                                 max_epochs=max_epochs)
        labels, t = _timed(lambda: clu.fit(data).labels_)
        fitted[form] = (labels, clu.cluster_examples(data, n_examples=12) if plot else None)
        rows.append(("SelfLabelClusterer", form, *_scores(y, labels), t))

    print(f"{'method':22s} {'input':7s} {'ACC':>6s} {'NMI':>6s} {'ARI':>6s} {'seconds':>8s}")
    for method, form, acc, nmi, ari, t in rows:
        print(f"{method:22s} {form:7s} {acc:6.3f} {nmi:6.3f} {ari:6.3f} {t:8.1f}")

    if plot:
        from .plotting import plot_cluster_grid

        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for form, (labels, examples) in fitted.items():
            fig = plot_cluster_grid(images, labels, n_per_cluster=12, examples=examples)
            fig.suptitle(f"SelfLabelClusterer on digits ({form}): one row per cluster, "
                         "its images nearest the cluster's centre")
            path = out / f"digits_{form}_clusters.png"
            fig.savefig(path, dpi=80, bbox_inches="tight")
            print(f"saved {path}")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m skselflabel.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="output/demo", help="folder for the PNG grids")
    parser.add_argument("--input", choices=["table", "images", "both"], default="both")
    parser.add_argument("--verbose", type=int, default=0)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    inputs = ("table", "images") if args.input == "both" else (args.input,)
    run(args.output, inputs, verbose=args.verbose, plot=not args.no_plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
