"""What ``SelfLabelClusterer.fit`` does, from the input to the model it commits: everything is
built in locals and returned, so a failing fit leaves an earlier model as it was."""
from contextlib import contextmanager
import copy
from dataclasses import dataclass, replace
import math

import numpy as np
import torch
from sklearn.utils import check_random_state

from .._data.augment import draws_per_sample
from .._data.checks import CheckedInput, check_cluster_count, check_fit_input
from .._data.input_scaling import InputScaling, whitening_needs, whitens
from .._data.sources import Feeder
from .._runtime.allocation import memory_step, plan
from .._runtime.failures import SharedFailures
from .._runtime.heap import release_free_heap
from .._runtime.memory import INT64, Need
from .._runtime.processes import (Team, join_team, leader_warnings, process_device,
                                  training_device)
from .agreement import check_agreement
from .backbones import build_network, place_backbone
from .config import AUTO_NEIGHBORS, FitConfig, resolve_config
from .events import HistoryRecorder, empty_history, fit_events, trial_events
from .graph import NEIGHBOR_RECALL, NeighborGraph, knn_needs, neighbor_width
from .inference import first_head_labels
from .kmeans_choice import keep_better_partition, offers_kmeans
from .labelling import NonFiniteOutput, SelfLabeller, label_step_needs
from .resume import FitCheckpoint, open_checkpoint
from .size_choice import fork
from .state import FittedModel, FittedNetwork
from .training import Generators, Trainer, TrainOutcome


def fit_model(estimator, X, y):
    """Train a model of ``estimator``'s parameters on ``X``.

    Returns
    -------
    fitted : FittedModel
        Every fitted attribute, committed by ``SelfLabelClusterer.fit``.
    messages : list of str
        Warnings to give once the model is committed (none in other processes than the
        leader).
    """
    params = estimator.get_params(deep=False)
    device = process_device(training_device(params["device"]))
    team = join_team(device)
    with leader_warnings(team), SharedFailures(team):
        data = check_fit_input(estimator, X, params["num_workers"])
        check_agreement(team, data, params)
        check_cluster_count(data, params["n_clusters"])
        config = resolve_config(params, data.n_samples, data.sample_shape, team.world, device)
        run = _start(config, data, team, open_checkpoint(config, data, team),
                     estimator._fitted_network())
        events = fit_events(estimator, X, y, run.history, run.snapshot, config.verbose,
                            team.leader)
        fitted, outcome = _train(run, events)
    if outcome.interrupted is None and run.checkpoint is not None:
        run.checkpoint.remove()            # the fit is complete: nothing to resume
    release_free_heap()      # the graph, logits and solver buffers are freed by now
    messages = []
    stop = outcome.interrupted
    if stop is not None and team.leader:
        messages.append(
            f"fit was interrupted (KeyboardInterrupt) at epoch {stop.epoch} of "
            f"{config.max_epochs}, after batch {stop.batch} of {stop.steps_per_epoch}; the "
            "estimator is fitted with the network as trained so far." + (
                "" if run.checkpoint is None else " Fit again to resume from the checkpoint "
                f"{str(run.checkpoint.path)!r}."))
    return fitted, messages


@dataclass
class Run:
    """The parts of one fit in progress."""

    config: FitConfig
    data: CheckedInput
    team: Team
    checkpoint: FitCheckpoint        # or None
    network: FittedNetwork
    feeder: Feeder
    generators: Generators
    labels: torch.Tensor             # the self-labels, (n_heads, n_samples)
    history: HistoryRecorder
    seeds: list                      # the first start's seeds (others derive from them)
    n_starts: int = 1                # starts compared by their trial (n_init)
    compare_sizes: bool = False      # train a twin with estimated sizes (size_choice)

    def snapshot(self):
        """Fitted attributes of the network as it stands (copies), for the fitted
        estimators that scikit-learn callbacks may ask for."""
        network = replace(self.network, backbone=copy.deepcopy(self.network.backbone).eval(),
                          heads=copy.deepcopy(self.network.heads).eval())
        return self.fitted(network, first_head_labels(network, self.feeder)).attributes()

    def fitted(self, network, labels, **results):
        """The fitted model of ``network`` with first-head ``labels`` and ``results``."""
        return FittedModel(network=network, labels=labels.cpu().numpy(),
                           n_features_in=self.data.n_features_in,
                           feature_names_in=self.data.feature_names_in,
                           device=str(self.feeder.device), **results)


def _start(config, data, team, checkpoint, previous):
    """A fit's network (restored from the checkpoint when it holds a fit), data feed,
    generators and initial self-labels; ``previous`` is the estimator's network, if any."""
    seeds = team.broadcast_(torch.as_tensor(fit_seeds(config.random_state),
                                            dtype=torch.int64)).tolist()
    init_gen = torch.Generator().manual_seed(seeds[0])
    network = initial_network(config, data, init_gen, previous)
    if checkpoint is not None and checkpoint.saved is not None:
        network = checkpoint.restore_network(network)
    check_fit_memory(config, data, network)
    feeder = Feeder(data.source, network.scaling, config.device)
    fresh = ((checkpoint is None or checkpoint.saved is None)
             and not _continues(config, data, previous))
    restarts = config.n_init > 1 and fresh
    return Run(config=config, data=data, team=team, checkpoint=checkpoint, network=network,
               feeder=feeder, generators=_generators(config, feeder, team, seeds),
               labels=initial_labels(network.heads, data.n_samples, init_gen, config.device),
               history=HistoryRecorder(), seeds=seeds,
               n_starts=config.n_init if restarts else 1,
               compare_sizes=config.compare_sizes and fresh and checkpoint is None)


def _generators(config, feeder, team, seeds):
    """The training generators of a start: batch order and neighbour views alike in every
    process; augmentation alike too when it draws per sample (Trainer._augment gives each
    row its one-process draws), else each process's own."""
    return Generators(
        views=torch.Generator(feeder.index_device).manual_seed(seeds[1]),
        augment=torch.Generator(config.device).manual_seed(
            seeds[2] + (0 if draws_per_sample(config.augment) else team.rank)))


def _continues(config, data, previous):
    """Whether the fit continues ``previous`` (a warm start) rather than starting afresh."""
    return (config.warm_start and previous is not None
            and previous.sample_shape == data.sample_shape)


def _train(run, events):
    """The fitted model and the trainer's outcome."""
    config, device = run.config, run.config.device
    # Restore torch's global RNG afterwards in case a user module (e.g. Dropout) uses it.
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        graph = None
        if config.n_neighbors > 0:
            with memory_step("building the neighbour graph", lambda: knn_needs(
                    run.data.n_samples, neighbor_width(config.neighbor_features,
                                                       run.data.sample_shape),
                    config.n_neighbors, config.neighbor_recall, run.feeder.index_device)):
                graph = NeighborGraph.build(run.feeder, config.neighbor_features,
                                            config.n_neighbors, run.team,
                                            config.neighbor_recall)
            release_free_heap()       # the search's buffers are not needed at that size again
        trainer, start_scores, outcome = (_best_start(run, graph, events) if run.n_starts > 1
                                          else (_trainer(run, graph, events), None, None))
        if run.checkpoint is not None:
            if run.checkpoint.saved is not None:
                run.checkpoint.restore_training(trainer, run.labels, run.history)
            run.checkpoint.follow(run.history, run.network)
        # The trials brought training to where estimated sizes would start: fork there.
        twin = (fork(run, trainer, graph) if run.compare_sizes and run.n_starts > 1
                and outcome is None else None)
        if outcome is None:         # else a Ctrl-C stopped the trials
            with diverged_training(trainer, run.history, config):
                outcome = trainer.run(run.feeder, run.labels)
        size_scores = None
        # Not after a Ctrl-C, nor after a callback asked to stop: the user wants it over.
        if twin is not None and outcome.interrupted is None and trainer.epoch == (
                config.max_epochs):
            trainer, outcome, size_scores = _keep_better_sizes(run, graph, trainer, outcome,
                                                               twin)
        kmeans_scores = None
        if offers_kmeans(run) and outcome.interrupted is None and trainer.epoch == (
                config.max_epochs):
            trainer, outcome, kmeans_scores = keep_better_partition(
                run, _judge(run, graph), trainer, outcome)
    labeller = trainer.labeller
    network = replace(run.network, history=run.history.frame(run.network.history))
    fitted = run.fitted(network, first_head_labels(network, run.feeder, run.team),
                         self_labels=run.labels.cpu().numpy(), n_iter=outcome.epochs,
                         cluster_sizes=labeller.sizes(config.n_clusters),
                         sizes_estimated=labeller.estimates_sizes(),
                         start_scores=start_scores, size_scores=size_scores,
                         kmeans_scores=kmeans_scores)
    return fitted, outcome


def _keep_better_sizes(run, graph, trainer, outcome, twin):
    """Train ``twin`` (estimated sizes) to the end beside the finished run of ``trainer``
    (equal sizes), and keep the one whose self-labels agree better with the neighbour
    graph; ``run`` takes the twin's network, labels and history when it wins (or when a
    Ctrl-C stops it). Returns the kept trainer, its outcome, and both agreements."""
    config = run.config
    with diverged_training(twin.trainer, twin.history, config):
        twin_outcome = twin.trainer.run(run.feeder, twin.labels)
    if twin_outcome.interrupted is not None:
        return trainer, outcome, None
    judge = _judge(run, graph)
    scores = np.array([judge.agreement(labels[0], config.n_clusters)
                       for labels in (run.labels, twin.labels)])
    if scores[1] > scores[0]:
        run.network, run.labels = twin.network, twin.labels
        run.history.records = list(twin.history.records)
        return twin.trainer, twin_outcome, scores
    return trainer, outcome, scores


def _judge(run, graph):
    """The neighbour graph that compares runs: the fit's own, or with ``n_neighbors=0``
    one built only for that."""
    if graph is not None:
        return graph
    with memory_step("building the neighbour graph that compares the starts"):
        return NeighborGraph.build(run.feeder, run.config.neighbor_features,
                                   min(AUTO_NEIGHBORS, run.config.n_samples - 1), run.team,
                                   run.config.neighbor_recall)


def _trainer(run, graph, events):
    """A trainer of ``run``'s network, with a self-labeller of its own."""
    config = run.config
    labeller = SelfLabeller(config.assigner, graph, config.diffusion_steps, run.team,
                            config.feature_walk_steps)
    return Trainer(run.network, run.config, labeller, run.generators, events, run.team,
                   run.checkpoint)


def _best_start(run, graph, events):
    """Train ``run.n_starts`` starts for ``config.trial_epochs`` epochs each and keep the
    one whose self-labels agree best with the neighbour graph (``n_init``): ``run`` takes
    the chosen start's network, generators, labels and history.

    Returns its trainer (to go on with ``events``), every start's agreement, and the
    outcome of training when a Ctrl-C ended the trials (the best start so far is kept),
    else None. The first start is the one of ``n_init=1``; the others draw their seeds
    from its seeds. Only the best start so far stays in memory beside the one on trial.
    """
    config = run.config
    judge = _judge(run, graph)
    best, scores, outcome = None, [], None
    for start in range(run.n_starts):
        candidate = replace(run if start == 0 else _other_start(run, start),
                            checkpoint=None, history=HistoryRecorder())
        trainer = _trainer(candidate, graph, trial_events(
            candidate.history, start, run.n_starts, config.verbose, run.team.leader))
        with diverged_training(trainer, candidate.history, config):
            outcome = trainer.run(run.feeder, candidate.labels, until=config.trial_epochs)
        scores.append(judge.agreement(candidate.labels[0], config.n_clusters))
        if best is None or scores[-1] > scores[best[0]]:
            best = (start, candidate, trainer)
        if outcome.interrupted is not None:
            break
    _, chosen, trainer = best
    run.network, run.generators, run.labels = chosen.network, chosen.generators, chosen.labels
    run.history.records = list(chosen.history.records)
    trainer.events, trainer.checkpoint = events, run.checkpoint
    stopped = outcome.interrupted is not None
    return (trainer, np.asarray(scores),
            TrainOutcome(trainer.epoch, outcome.interrupted) if stopped else None)


def _other_start(run, start):
    """Start number ``start`` (> 0) of ``run``: a new network and new generators and
    labels from seeds derived from the first start's, the same input scaling."""
    seeds = np.random.SeedSequence([*run.seeds, start]).generate_state(3) % (2**31 - 1)
    seeds = [int(v) for v in seeds]
    init_gen = torch.Generator().manual_seed(seeds[0])
    network = initial_network(run.config, run.data, init_gen, scaling=run.network.scaling)
    return replace(run, network=network, history=HistoryRecorder(),
                   generators=_generators(run.config, run.feeder, run.team, seeds),
                   labels=initial_labels(network.heads, run.data.n_samples, init_gen,
                                         run.config.device))


def initial_network(config, data, generator, previous=None, scaling=None):
    """The network (on the training device), input scaling and history a fit starts from:
    copies of ``previous`` for a warm start on samples of the same shape, new ones
    otherwise (with ``scaling`` when given, else one fitted to the data)."""
    if _continues(config, data, previous):
        network = copy.deepcopy(previous)
    else:
        backbone, heads, width, n_out = build_network(
            config.backbone, data.sample_shape, config.n_clusters, config.n_heads, generator)
        if scaling is None:
            covariance = whitens(config.whiten, data.sample_shape)
            with memory_step("fitting the input scaling", lambda: whitening_needs(
                    data.sample_shape[0]) if covariance else []):
                scaling = InputScaling.fit(data.source, whiten=config.whiten)
        network = FittedNetwork(backbone=backbone, heads=heads, head_width=width,
                                n_features_out=n_out, scaling=scaling,
                                history=empty_history(), sample_shape=data.sample_shape)
    place_backbone(network.backbone, config.device)
    network.heads.to(config.device)
    return network


def fit_seeds(random_state):
    """Three seeds for a fit: drawn from ``random_state``, or for None from fresh entropy
    of the operating system, never from (nor advancing) numpy's global RNG."""
    if random_state is None:
        return np.random.default_rng().integers(0, 2**31 - 1, size=3)
    return check_random_state(random_state).randint(0, 2**31 - 1, size=3)


def initial_labels(heads, n_samples, generator, device):
    """Balanced random labels (i mod K, permuted) per head, as in SeLa; the first
    self-label step replaces them before any gradient step."""
    return torch.stack([torch.randperm(n_samples, generator=generator) % head.out_features
                        for head in heads]).to(device)


def fit_phases(n, d, n_clusters, n_heads, width, n_neighbors, diffusion_steps,
               search=("cpu", NEIGHBOR_RECALL)):
    """The phases of a fit, each a list of :class:`Need` alive at once: building the
    neighbour graph, then the self-label steps. The data are read where they are, batch
    by batch: no copy of them is counted.

    Parameters
    ----------
    n, d : int
        Training samples and values per sample.
    n_clusters, n_heads : int
        Clusters per head and heads.
    width : int
        Width of the backbone's output (the heads' input).
    n_neighbors, diffusion_steps : int
        Resolved graph settings (0 neighbours: no graph, no diffusion).
    search : tuple, default=("cpu", 0.95)
        ``(device, neighbor_recall)``: where the graph is searched (exactly on a GPU where
        its blocks fit) and the recall asked of the approximate search.
    """
    resident = [Need("self-labels", n_heads * n * INT64, "n_heads")]
    phases = []
    if n_neighbors > 0:
        phases.append(resident + knn_needs(n, d, n_neighbors, search[1], search[0]))
    phases.append(resident + label_step_needs(n, n_clusters, width, n_neighbors,
                                              diffusion_steps))
    return phases


def check_fit_memory(config, data, network):
    """Refuse, with a MemoryError that says why, a fit whose buffers do not fit its device;
    run before the large allocations."""
    d = neighbor_width(config.neighbor_features, data.sample_shape)
    plan(fit_phases(data.n_samples, d, config.n_clusters, config.n_heads,
                    network.head_width, config.n_neighbors, config.diffusion_steps,
                    (config.device, config.neighbor_recall)),
         config.device, "SelfLabelClusterer.fit")


@contextmanager
def diverged_training(trainer, history, config):
    """Turn non-finite network outputs met by a self-label step into a FloatingPointError
    that says when it happened and what to try."""
    try:
        yield
    except NonFiniteOutput as exc:
        raise FloatingPointError(_divergence_message(exc, trainer, history, config)) from None


def _divergence_message(exc, trainer, history, config):
    counts = f"{exc.n_bad} NaN or inf values (out of {exc.n_values}) on the training data"
    if trainer.step == 0:
        return (f"The network's {exc.part} output holds {counts} before any training step: "
                "it produces them from the start. Check the backbone (a division by zero, the "
                "log of a non-positive number, an overflow) on inputs of this scale.")
    epoch = (trainer.first_epoch
             + min(trainer.step // config.steps_per_epoch, config.max_epochs - 1))
    bad_loss = [r.epoch for r in history.records if not math.isfinite(r.loss)]
    since = f"; the loss was first NaN or inf in epoch {bad_loss[0]}" if bad_loss else ""
    return (f"Training diverged: the network's {exc.part} output holds {counts} at the "
            f"self-label step of epoch {epoch}, after {trainer.step} gradient steps{since}. "
            f"Lower lr (it is {config.lr:g} with optimizer={config.optimizer!r}), try "
            "optimizer='adam', or check the backbone for operations that overflow.")
