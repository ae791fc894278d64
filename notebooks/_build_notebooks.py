"""Write the example notebooks from the cell sources below (outputs stripped).

The notebooks are generated so that their source stays reviewable as ordinary Python and
they are stored without outputs. Edit this file, then run

    .venv/bin/python notebooks/_build_notebooks.py

Every notebook reads SKSELFLABEL_QUICK: "1" runs it on a small budget (subsets, few
epochs), which is what the test suite does (tests/test_notebooks.py).
"""
from pathlib import Path
from textwrap import dedent

import nbformat

HERE = Path(__file__).resolve().parent

QUICK_CELL = '''\
import os

# SKSELFLABEL_QUICK=1 (set by the test suite) runs everything on a small budget.
QUICK = os.environ.get("SKSELFLABEL_QUICK") == "1"
print("quick mode" if QUICK else "full budget")'''


def md(text):
    return nbformat.v4.new_markdown_cell(dedent(text).strip())


def code(text):
    return nbformat.v4.new_code_cell(dedent(text).strip())


# The balance claims of notebook 01. tests/integration/test_notebooks.py reads the bold
# sentence about the quick budget ("are balanced" or "are not balanced") and checks it
# against the sizes shown under it (balanced: every cluster within 10% of N / K); the
# full-budget sentence was checked by running the notebook without SKSELFLABEL_QUICK.
# Keep both true.
BALANCE_TEXT = """
    ## Cluster sizes

    The self-label step asks for clusters of equal size, N / K images each. Its labels,
    `self_labels_`, are the largest entry of each row of a soft assignment whose column
    sums are equal (computed on probabilities smoothed over the neighbour graph), and
    taking the largest entry can leave the sizes unequal while the network is still
    undecided. **At the full budget the self-labels are balanced** (every cluster within
    10% of N / K), but **at the quick budget the self-labels are not balanced**: compare
    the first row of the table with N / K. `labels_` is the network's own answer
    (`predict`), which nothing balances.
    """

QUICKSTART = [
    md("""
    # Quickstart: self-labelling the digits

    `SelfLabelClusterer` learns a representation and balanced cluster labels together
    (SeLa). Here it clusters scikit-learn's 8x8 handwritten digits, and we compare it with
    KMeans on the raw pixels.

    > **Read this first where the outputs below say "quick mode"** (as on the
    > documentation site, which runs the notebook on the test suite's budget: 500 images,
    > three epochs): the network is barely trained, so KMeans scores higher than
    > `SelfLabelClusterer` and some clusters stay empty. That is not what the method does
    > at its default budget: the README's demo table (`make demo`, every image, default
    > settings) shows it well above KMeans and Ward. Run the notebook without
    > `SKSELFLABEL_QUICK` to see that here.
    """),
    code(QUICK_CELL + '''

import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

from skselflabel import SelfLabelClusterer
from skselflabel.datasets import load_digits_images
from skselflabel.metrics import cluster_accuracy
from skselflabel.plotting import plot_cluster_grid, plot_confusion, plot_history

images, y = load_digits_images(return_X_y=True)  # (1797, 8, 8) float32 in [0, 1]
if QUICK:
    images, y = images[:500], y[:500]
images.shape'''),
    md("""
    ## Fit

    The defaults are the recipe; only the number of clusters and the seed are set.
    `labels_` holds the cluster of every training image.
    """),
    code('''
    budget = {"max_epochs": 3} if QUICK else {}
    start = time.perf_counter()
    clu = SelfLabelClusterer(n_clusters=10, random_state=0, **budget).fit(images)
    print(f"fitted in {time.perf_counter() - start:.1f} s, {clu.n_iter_} epochs")'''),
    md(BALANCE_TEXT),
    code('''
    sizes = pd.DataFrame({"self_labels_": np.bincount(clu.self_labels_[0], minlength=10),
                          "labels_": np.bincount(clu.labels_, minlength=10)}).T
    print(f"N / K = {len(images) / 10:.0f} images per cluster")
    sizes'''),
    md("""
    ## What each cluster holds

    One row per cluster: the ten images nearest the cluster's centre (the mean of its
    members) in the learned representation, from `cluster_examples`. Its
    `by="confidence"` option picks the members the network is surest of instead.
    """),
    code('''
    examples = clu.cluster_examples(images, n_examples=10)
    plot_cluster_grid(images, clu.labels_, n_per_cluster=10, examples=examples)'''),
    md("""
    ## Against the true digits

    Cluster numbers are arbitrary: the confusion matrix puts the cluster matched to each
    digit (Hungarian matching, as in clustering accuracy) on the diagonal.
    """),
    code("plot_confusion(y, clu.labels_)"),
    md("""
    ## ACC, NMI and ARI beside KMeans on the pixels

    At the quick budget (three epochs on 500 images) the network is barely trained and
    KMeans scores higher; at the full budget `SelfLabelClusterer` scores well above it
    (see the table of `make demo` in the README).
    """),
    code('''
    kmeans_labels = KMeans(n_clusters=10, n_init=10, random_state=0).fit_predict(
        images.reshape(len(images), -1))

    def scores(labels):
        return {"ACC": cluster_accuracy(y, labels),
                "NMI": normalized_mutual_info_score(y, labels),
                "ARI": adjusted_rand_score(y, labels)}

    pd.DataFrame({"SelfLabelClusterer": scores(clu.labels_),
                  "KMeans (pixels)": scores(kmeans_labels)}).T.round(3)'''),
    md("""
    ## The learned representation

    `transform` returns the backbone's features. Below they are projected on their first
    two principal axes and coloured by cluster. Two axes keep only a small part of the
    representation, so clusters can overlap in the picture and still lie apart in the
    representation. The silhouette scores (from -1 to 1; higher means better separated
    clusters) measure the separation of `labels_` in the whole representation, in the
    two axes shown and, for comparison, in the pixels.
    """),
    code('''
    features = clu.transform(images)
    xy = PCA(n_components=2, random_state=0).fit_transform(features)
    pixels = images.reshape(len(images), -1)
    print("silhouette of labels_ in the representation:",
          round(silhouette_score(features, clu.labels_), 3),
          "| in the two axes shown:", round(silhouette_score(xy, clu.labels_), 3),
          "| in the pixels:", round(silhouette_score(pixels, clu.labels_), 3))
    fig, ax = plt.subplots(figsize=(6, 5))
    points = ax.scatter(xy[:, 0], xy[:, 1], c=clu.labels_, cmap="tab10", s=6)
    ax.legend(*points.legend_elements(), title="cluster", fontsize=7, loc="best")
    ax.set_title(f"{features.shape[1]}-d representation, first two principal axes")
    plt.show()'''),
    md("## Training curves\n\nLoss and the fraction of labels each self-label step changed."),
    code("plot_history(clu.history_)"),
]


FASHION = [
    md("""
    # Fashion-MNIST: clusters and representations of real images

    The full pipeline on Zalando's Fashion-MNIST: fit `SelfLabelClusterer` on the training
    images, read the training curves, look at the clusters, probe the representation with
    a logistic regression, and see how the number of heads and clusters changes the result.

    The data come from local files (`apt-get install dataset-fashion-mnist`, or see
    `load_fashion_mnist`); nothing is downloaded.

    > **Read this first where the outputs below say "quick mode"** (as on the
    > documentation site, which runs the notebook on the test suite's budget: 600 training
    > images, one epoch): the model is barely trained, so the clusters are poor, most of
    > them may be empty (the image grid then has fewer rows than clusters), and the
    > training curves have a single point. The full budget (all 60,000 images, default
    > settings) gives the README's Fashion-MNIST results, far better than these. Run the
    > notebook without `SKSELFLABEL_QUICK` to see that here.
    """),
    code(QUICK_CELL + '''

import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import normalized_mutual_info_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skselflabel import SelfLabelClusterer
from skselflabel.datasets import load_fashion_mnist
from skselflabel.metrics import cluster_accuracy
from skselflabel.plotting import plot_cluster_grid, plot_confusion, plot_history

train = load_fashion_mnist(split="train", as_float=True)
test = load_fashion_mnist(split="test", as_float=True)
X_train, y_train, X_test, y_test = train.images, train.target, test.images, test.target
if QUICK:
    X_train, y_train = X_train[:600], y_train[:600]
    X_test, y_test = X_test[:300], y_test[:300]
print(X_train.shape, X_test.shape, "from", train.data_dir)'''),
    md("""
    ## Fit

    Default settings with 10 clusters. On the full training set this takes a while on a
    CPU. `verbose=1` shows a progress bar with the loss and the share of labels the latest
    self-label step changed (a line of text, redrawn in place).
    """),
    code('''
    budget = {"max_epochs": 1} if QUICK else {}
    start = time.perf_counter()
    clu = SelfLabelClusterer(n_clusters=10, random_state=0, verbose=1, **budget).fit(X_train)
    minutes = (time.perf_counter() - start) / 60
    print(f"fitted in {minutes:.1f} min, {clu.n_iter_} epochs")'''),
    md("""
    ## Training curves

    `history_` has one row per epoch. The label change is the fraction of samples whose
    self-label the latest Sinkhorn step changed: once it stays near zero, the clustering
    has settled (the quick budget's single epoch gives a single row).
    """),
    code("clu.history_.tail()"),
    code("plot_history(clu.history_)"),
    md("""
    ## The clusters as images

    Each row shows the twelve training images nearest the cluster's centre in the learned
    representation (`cluster_examples`).
    """),
    code("""
    examples = clu.cluster_examples(X_train, n_examples=12)
    plot_cluster_grid(X_train, clu.labels_, n_per_cluster=12, examples=examples)"""),
    code('''
    test_labels = clu.predict(X_test)
    pd.DataFrame({
        "ACC": [cluster_accuracy(y_train, clu.labels_), cluster_accuracy(y_test, test_labels)],
        "NMI": [normalized_mutual_info_score(y_train, clu.labels_),
                normalized_mutual_info_score(y_test, test_labels)],
    }, index=["train (labels_)", "test (predict)"]).round(3)'''),
    code("plot_confusion(y_test, test_labels, class_names=train.target_names, normalize='true')"),
    md("""
    ## A linear probe on the representation

    How much class information does the learned representation hold? A logistic
    regression on `transform` output, in a Pipeline. `FrozenEstimator` keeps the fitted
    clusterer as it is, so fitting the pipeline trains only the probe. The same probe on
    raw pixels is the baseline.
    """),
    code('''
    probe_iter = 1000
    probe = make_pipeline(FrozenEstimator(clu), StandardScaler(),
                          LogisticRegression(max_iter=probe_iter))
    probe.fit(X_train, y_train)
    pixels = make_pipeline(StandardScaler(), LogisticRegression(max_iter=probe_iter))
    pixels.fit(X_train.reshape(len(X_train), -1), y_train)
    pd.Series({
        "probe on SelfLabelClusterer.transform": probe.score(X_test, y_test),
        "probe on raw pixels": pixels.score(X_test.reshape(len(X_test), -1), y_test),
    }).round(3)'''),
    md("""
    ## Heads and clusters

    More clusters than classes (over-clustering) and several heads (each with its own
    self-labels) are the paper's levers for better representations. Each setting is fitted
    on the same subset with the same number of epochs; NMI and the probe compare them (ACC
    needs as many clusters as classes to be meaningful). At the quick budget, one epoch
    on 300 images, the table says little about how the settings rank at the full budget.
    """),
    code('''
    n_sub = 300 if QUICK else 10000
    per_setting = {"max_epochs": 1} if QUICK else {"max_epochs": 20}
    settings = [(10, 1), (10, 3), (30, 1)] if QUICK else [(10, 1), (10, 5), (50, 1), (50, 5)]
    rows = []
    for n_clusters, n_heads in settings:
        start = time.perf_counter()
        model = SelfLabelClusterer(n_clusters=n_clusters, n_heads=n_heads, random_state=0,
                                   **per_setting).fit(X_train[:n_sub])
        probe = make_pipeline(FrozenEstimator(model), StandardScaler(),
                              LogisticRegression(max_iter=probe_iter))
        probe.fit(X_train[:n_sub], y_train[:n_sub])
        rows.append({"n_clusters": n_clusters, "n_heads": n_heads,
                     "NMI (train)": normalized_mutual_info_score(y_train[:n_sub], model.labels_),
                     "probe accuracy (test)": probe.score(X_test, y_test),
                     "seconds": time.perf_counter() - start})
    pd.DataFrame(rows).round(3)'''),
]


ASSIGNER = [
    md("""
    # Balanced assignment with `SinkhornAssigner`

    The self-label step of SeLa on its own: given scores (or distances) of samples to
    clusters, `SinkhornAssigner` finds the assignment that agrees with them best while
    giving every cluster its share of the samples: equal shares by default, or the shares
    of a `prior`. Here it follows KMeans on the digits.
    """),
    code(QUICK_CELL + '''

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skselflabel import SinkhornAssigner
from skselflabel.metrics import cluster_accuracy

X, y = load_digits(return_X_y=True)
X = StandardScaler().fit_transform(X)
if QUICK:
    X, y = X[:800], y[:800]
K = 10
kmeans = KMeans(n_clusters=K, n_init=4 if QUICK else 10, random_state=0).fit(X)
distances = kmeans.transform(X)  # (n_samples, K) distances to the centres
X.shape'''),
    md("""
    ## Balanced clusters after KMeans

    KMeans clusters can be of any size. `SinkhornAssigner(input="distance")` on the
    distances to the KMeans centres (smaller is closer) gives clusters of equal size, to
    within a few samples, that stay as close to the centres as it can. With distances, the
    score is the negative *squared* distance divided by `distance_scale_`, the median
    squared distance of a sample to its nearest centre (fitted once), so the default
    `lam=25` suits data of any scale. The same thing as a pipeline:
    `make_pipeline(KMeans(K), SinkhornAssigner(input="distance"))`.
    """),
    code('''
    assigner = SinkhornAssigner(input="distance").fit(distances)
    print("distance_scale_:", round(assigner.distance_scale_, 1))
    sizes = pd.DataFrame({
        "KMeans": np.bincount(kmeans.labels_, minlength=K),
        "KMeans + SinkhornAssigner": np.bincount(assigner.labels_, minlength=K),
    })
    print("agreement with KMeans:", np.mean(assigner.labels_ == kmeans.labels_).round(3))
    print("ACC KMeans:", round(cluster_accuracy(y, kmeans.labels_), 3),
          " balanced:", round(cluster_accuracy(y, assigner.labels_), 3))
    sizes.T'''),
    code('''
    ax = sizes.plot.bar(figsize=(7, 3), width=0.8)
    ax.axhline(len(X) / K, color="k", linestyle="--", linewidth=1, label="N / K")
    ax.set_xlabel("cluster"); ax.set_ylabel("samples"); ax.legend()
    plt.show()'''),
    md("""
    ## Clusters of chosen sizes: a prior

    A `prior` sets the share of each cluster (normalised to sum to one). Here cluster
    `k` should get a share proportional to `k + 1`.
    """),
    code('''
    prior = np.arange(1, K + 1, dtype=float)
    skewed = SinkhornAssigner(input="distance", prior=prior).fit(distances)
    pd.DataFrame({
        "asked": np.round(prior / prior.sum() * len(X)).astype(int),
        "got": np.bincount(skewed.labels_, minlength=K),
    }).T'''),
    md("""
    ## New samples

    `transform` gives each row a distribution over the clusters using the fitted column
    scalings (`log_v_`), so rows are assigned independently of each other: one sample gets
    the same answer alone or in a batch.
    """),
    code('''
    proba = assigner.transform(distances[:5])
    alone = assigner.transform(distances[:1])
    print(np.round(proba, 3))
    print("same alone as in a batch:", np.allclose(alone, proba[:1]))
    print("predict:", assigner.predict(distances[:5]))'''),
    md("""
    ## What `lam` does

    `lam` is the inverse of the entropy regularisation. Small values give smooth
    assignments whose hard labels are only roughly balanced; large values approach the
    exact balanced partition, at the cost of more Sinkhorn iterations. The scores are
    squared distances in units of `distance_scale_`, so the same range of `lam` matters
    whatever the scale of the data.
    """),
    code('''
    rows = []
    lams = [0.3, 1, 3, 10, 25, 100]
    for lam in lams:
        a = SinkhornAssigner(input="distance", lam=lam, max_iter=5000).fit(distances)
        counts = np.bincount(a.labels_, minlength=K)
        rows.append({"lam": lam, "iterations": a.n_iter_,
                     "largest / smallest cluster": counts.max() / max(counts.min(), 1),
                     "mean top probability": a.transform(distances).max(axis=1).mean(),
                     "agreement with KMeans": np.mean(a.labels_ == kmeans.labels_)})
    lam_table = pd.DataFrame(rows).set_index("lam")
    lam_table.round(3)'''),
    code('''
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    for ax, column in zip(axes, ["iterations", "largest / smallest cluster",
                                 "mean top probability"]):
        ax.semilogx(lam_table.index, lam_table[column], marker="o")
        ax.set_xlabel("lam"); ax.set_title(column)
    plt.show()'''),
]


NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_fashion_mnist.ipynb": FASHION,
    "03_balanced_assignment.ipynb": ASSIGNER,
}


def build(name, cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                       "name": "python3"},
        "language_info": {"name": "python"},
    }
    # Stable ids keep regenerated notebooks identical when their cells did not change.
    for index, cell in enumerate(nb.cells):
        cell["id"] = f"{Path(name).stem[:2]}-{index:02d}"
    nbformat.validate(nb)
    nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        build(name, cells)
        print("wrote", HERE / name)
