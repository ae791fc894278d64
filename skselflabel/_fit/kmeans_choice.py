"""KMeans's partition or the fit's, chosen without labels: on tables, KMeans on the scaled
inputs is kept (the network then trained on its labels) when it agrees better with the
neighbour graph (the user guide's "KMeans as a candidate")."""
from dataclasses import replace

import numpy as np
import torch
from sklearn.cluster import KMeans

from .events import twin_events
from .training import Trainer

# KMeans restarts, as scikit-learn's KMeans(n_init=10) that the benchmarks compare with.
KMEANS_N_INIT = 10
# Tables up to this many rows, and rows times clusters, get the candidate: KMeans with its
# restarts runs on a copy of the scaled inputs in memory, at a cost that grows with both.
KMEANS_MAX_SAMPLES = 100_000
KMEANS_MAX_CELLS = 10_000_000
# Epochs that train the network on KMeans's labels once they are kept: enough for the
# network's argmax to reproduce them (the labels do not move; nothing is self-labelled).
DISTILL_EPOCHS = 10
DISTILL_DESC = "SelfLabelClusterer learning KMeans's labels"


class FixedLabels:
    """A self-labeller that keeps the labels it is given: the network learns them as they
    are (the distillation of a kept KMeans partition)."""

    def __init__(self, graph, proportions):
        self.graph = graph                  # the neighbour views of the inputs, as before
        self.proportions = proportions
        self.last_error, self.last_iterations, self.last_moved = float("nan"), 0, 0.0

    def relabel_(self, *args, **kwargs):
        return torch.zeros((), dtype=torch.float64)     # no label changed

    def sizes(self, n_clusters):
        return self.proportions

    def estimates_sizes(self):
        return True                         # KMeans's sizes are the data's


def offers_kmeans(run):
    """Whether the fit compares its partition with KMeans's: on tables, where it compares
    equal and estimated sizes (the default assigner, a fresh fit of several starts), in one
    process, for at most ``KMEANS_MAX_SAMPLES`` rows and ``KMEANS_MAX_CELLS`` rows times
    clusters. Never on images: KMeans on pixels is a poor partition of images."""
    n = run.data.n_samples
    return (not run.config.is_image and run.compare_sizes and run.n_starts > 1
            and run.team.world == 1
            and n <= KMEANS_MAX_SAMPLES and n * run.config.n_clusters <= KMEANS_MAX_CELLS)


def kmeans_labels(run):
    """KMeans(``n_clusters``, ``KMEANS_N_INIT`` restarts) on the inputs as the network sees
    them (after the input scaling), seeded from the fit's seeds."""
    inputs = torch.cat([batch.flatten(1).float().cpu() for batch in run.feeder.sequential()])
    seed = int(np.random.SeedSequence([*run.seeds, 1]).generate_state(1)[0] % (2**31 - 1))
    labels = KMeans(run.config.n_clusters, n_init=KMEANS_N_INIT,
                    random_state=seed).fit_predict(inputs.numpy())
    return torch.as_tensor(labels, dtype=torch.int64)


def keep_better_partition(run, judge, trainer, outcome):
    """Keep the fit's partition or KMeans's, whichever agrees better with the ``judge``
    graph. When KMeans's wins, the first head's self-labels become its labels (the other
    heads keep their last ones, of equal sizes) and the network trains ``DISTILL_EPOCHS``
    more epochs on them (a fresh optimiser and schedule), its epochs added to the fit's
    history (with ``verbose``, under a bar of their own).

    Returns the trainer whose labeller reports the sizes, the outcome (its epochs
    counting the distillation) and both agreements (the fit's, KMeans's).
    """
    config = run.config
    candidate = kmeans_labels(run).to(run.labels.device)
    scores = np.array([judge.agreement(labels, config.n_clusters)
                       for labels in (run.labels[0], candidate)])
    if not scores[1] > scores[0]:
        return trainer, outcome, scores
    run.labels[0] = candidate
    shares = np.bincount(candidate.cpu().numpy(), minlength=config.n_clusters)
    distill = replace(config, max_epochs=DISTILL_EPOCHS, n_label_updates=1)
    distiller = Trainer(run.network, distill, FixedLabels(trainer.graph, shares / shares.sum()),
                        run.generators, twin_events(run.history, config.verbose,
                                                    run.team.leader, desc=DISTILL_DESC),
                        run.team)
    # Its bar counts its own epochs; history_ numbers them after the fit's.
    done, last = len(run.history.records), trainer.first_epoch - 1 + trainer.epoch
    more = distiller.run(run.feeder, run.labels)
    for record in run.history.records[done:]:
        record.epoch += last - distiller.first_epoch + 1
    return distiller, replace(more, epochs=outcome.epochs + more.epochs), scores
