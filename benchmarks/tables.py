"""NMI on the four small real tables of ``skselflabel.datasets.load_table``, beside KMeans,
GaussianMixture and Ward.

Each table's feature columns are standardised; its class column is never given to the
clusterer. scikit-learn's digits table (ten classes of nearly equal size) runs beside
them, as a check that estimating sizes does not hurt balanced data. SelfLabelClusterer
runs with equal cluster sizes (the default) and with ``SinkhornAssigner(prior="auto")``,
seeds 0 to 2; the other methods once.

    python benchmarks/tables.py [--seeds 0 1 2] [--quick]

Writes ``results/tables.json`` (the "tables" section of docs/benchmarks.md).
"""
import statistics
import sys
import time
from pathlib import Path

from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.datasets import load_digits
from sklearn.metrics import normalized_mutual_info_score as nmi
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

from skselflabel import SelfLabelClusterer, SinkhornAssigner
from skselflabel.datasets import TABLES, load_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import budget, quick_banner, source, table  # noqa: E402
from _results import Record, parser, seeds_and_budget  # noqa: E402

# The assigner of both variants; only the prior differs.
LAM, TOL = 10.0, 1e-2
PRIORS = {"equal sizes (default)": None, "`prior=\"auto\"`": "auto"}
BASELINES = ["KMeans", "GaussianMixture", "Ward"]


def _load(name):
    return load_digits(return_X_y=True) if name == "digits" else load_table(
        name, return_X_y=True)


def main(argv=None):
    args = parser(__doc__, seeds=[0, 1, 2]).parse_args(argv)
    seeds, budget = seeds_and_budget(args)
    with Record("tables", args, seeds=seeds, lam=LAM, tol=TOL, budget=budget) as rec:
        for name in (*TABLES, "digits"):
            X, y = _load(name)
            X = StandardScaler().fit_transform(X)
            k = len(set(y))
            for method, labels in (
                    ("KMeans", lambda: KMeans(k, n_init=10, random_state=0).fit_predict(X)),
                    ("GaussianMixture", lambda: GaussianMixture(k, random_state=0)
                     .fit_predict(X)),
                    ("Ward", lambda: AgglomerativeClustering(k).fit_predict(X))):
                rec.runs.append({"table": name, "classes": k, "method": method, "seed": 0,
                                 "nmi": nmi(y, labels())})
            for variant, prior in PRIORS.items():
                for seed in seeds:
                    tic = time.perf_counter()
                    est = SelfLabelClusterer(n_clusters=k, random_state=seed, **budget,
                                             assigner=SinkhornAssigner(lam=LAM, tol=TOL,
                                                                       prior=prior))
                    score = nmi(y, est.fit(X).labels_)
                    rec.runs.append({"table": name, "classes": k, "method": variant,
                                     "seed": seed, "nmi": score,
                                     "seconds": time.perf_counter() - tic})
                    print(rec.runs[-1], flush=True)


def render(load):
    r = load("tables")
    if r is None:
        return None
    methods = [*BASELINES, *PRIORS]
    rows, means = [], {v: [] for v in methods}
    for name in dict.fromkeys(x["table"] for x in r["runs"]):
        runs = [x for x in r["runs"] if x["table"] == name]
        cells = []
        for method in methods:
            mine = [x for x in runs if x["method"] == method]
            if method in PRIORS:
                means[method] += [x["nmi"] for x in mine]
                cells.append(" / ".join(f"{x['nmi']:.3f}" for x in mine)
                             + f" ({max(x['seconds'] for x in mine):.1f} s)")
            else:
                means[method] += [mine[0]["nmi"]] * len(r["settings"]["seeds"])
                cells.append(f"{mine[0]['nmi']:.3f}")
        rows.append([f"{name} ({runs[0]['classes']})", *cells])
    seeds = " / ".join(str(s) for s in r["settings"]["seeds"])
    return "\n".join([
        "## Small real tables (`benchmarks/tables.py`)", "",
        quick_banner(r) + source(r, "tables"), "",
        "Tables from `skselflabel.datasets.load_table`, feature columns standardised; NMI "
        "against the class column; SelfLabelClusterer with "
        f"`SinkhornAssigner(lam={LAM:g}, tol={TOL:g}, prior=...)` and every other parameter "
        f"at its default{', ' + budget(r['settings']['budget']) if r['settings']['budget'] else ''}"
        f", seeds {seeds} (slowest fit in brackets).", "",
        table(["table (classes)", *methods], rows), "",
        "Mean over tables and seeds (a baseline's one run counted for each seed): "
        + ", ".join(
            f"{v} {statistics.mean(m):.3f}" for v, m in means.items()) + ".",
    ])


if __name__ == "__main__":
    main()
