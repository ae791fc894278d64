"""NMI on the four small real tables of ../shared/tables, beside KMeans, GaussianMixture and Ward.

Each table's feature columns are standardised; its last column, ``label``, is the class and
is never given to the clusterer. SelfLabelClusterer runs with equal cluster sizes (the
default) and with ``SinkhornAssigner(prior="auto")``, seeds 0 to 2; the other methods once.

    python benchmarks/tables.py [--tables DIR]

Writes the section "tables" of docs/benchmarks.md.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.metrics import normalized_mutual_info_score as nmi
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

from skselflabel import SelfLabelClusterer, SinkhornAssigner

HERE = Path(__file__).resolve().parent
TABLES = ("penguins", "olive", "crabs", "glass")
SEEDS = (0, 1, 2)


def load(directory, name):
    df = pd.read_csv(Path(directory) / f"{name}.csv")
    y = pd.factorize(df["label"])[0]
    X = StandardScaler().fit_transform(df.drop(columns=["label"]).to_numpy(float))
    return X, y, len(np.unique(y))


def ours(X, y, k, prior):
    scores, seconds = [], []
    for seed in SEEDS:
        tic = time.perf_counter()
        est = SelfLabelClusterer(n_clusters=k, random_state=seed,
                                 assigner=SinkhornAssigner(lam=10.0, tol=1e-2, prior=prior))
        scores.append(nmi(y, est.fit(X).labels_))
        seconds.append(time.perf_counter() - tic)
    return scores, max(seconds)


def baselines(X, y, k):
    return {"KMeans": nmi(y, KMeans(k, n_init=10, random_state=0).fit_predict(X)),
            "GaussianMixture": nmi(y, GaussianMixture(k, random_state=0).fit_predict(X)),
            "Ward": nmi(y, AgglomerativeClustering(k).fit_predict(X))}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", default=str(HERE.parent.parent / "shared" / "tables"))
    args = parser.parse_args()
    rows, means = [], {None: [], "auto": []}
    load_start = os.getloadavg()[0]
    for name in TABLES:
        X, y, k = load(args.tables, name)
        base = baselines(X, y, k)
        cells = []
        for prior in (None, "auto"):
            scores, seconds = ours(X, y, k, prior)
            means[prior].append(np.mean(scores))
            cells.append(" / ".join(f"{s:.3f}" for s in scores) + f" ({seconds:.1f} s)")
        rows.append(f"| {name} ({k}) | {base['KMeans']:.3f} | {base['GaussianMixture']:.3f} | "
                    f"{base['Ward']:.3f} | {cells[0]} | {cells[1]} |")
        print(rows[-1], flush=True)
    sys.path.insert(0, str(HERE))
    from _report import machine_description, write_section

    text = "\n".join([
        "## Small real tables (`benchmarks/tables.py`)", "",
        f"Command: `python benchmarks/tables.py`. Machine: {machine_description()}; torch "
        f"threads {torch.get_num_threads()}; 1-minute load average {load_start:.1f} at the "
        "start. Feature columns standardised; NMI against the class column; "
        "SelfLabelClusterer with `SinkhornAssigner(lam=10, tol=0.01, prior=...)` and every "
        "other parameter at its default, seeds 0 / 1 / 2 (slowest fit in brackets).", "",
        "| table (classes) | KMeans | GaussianMixture | Ward | equal sizes (default) | "
        "`prior=\"auto\"` |", "|---|---|---|---|---|---|", *rows, "",
        f"Mean over tables and seeds: equal sizes {np.mean(means[None]):.3f}, "
        f"`prior=\"auto\"` {np.mean(means['auto']):.3f}.",
    ])
    print(f"wrote {write_section('tables', text)}")


if __name__ == "__main__":
    main()
