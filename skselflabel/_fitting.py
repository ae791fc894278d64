"""What ``SelfLabelClusterer.fit`` does, from the input to the model it commits.

:func:`fit_model` builds everything in locals (settings, network, neighbour graph, trainer,
checkpoint), trains, and returns the fitted attributes with the warnings to give once they
are committed; the estimator's ``fit`` only commits them, so a failing fit leaves an
earlier model as it was.

Under data-parallel training (:mod:`skselflabel._distributed`) every process runs this
with the same ``X``: the processes draw the leader's seeds, split the batches, the
embedding and the graph search, and end with the same model; only the leader warns,
reports progress and writes the checkpoint.
"""
import warnings

import torch

from ._augment import draws_per_sample
from ._config import resolve_config
from ._distributed import join_team, leader_warnings, process_device
from ._events import HistoryRecorder, fit_events
from ._graph import NeighborGraph
from ._inputs import check_cluster_count, check_fit_input, training_device
from ._labelling import SelfLabeller
from ._model import (check_fit_memory, checked_assigner, data_attributes,
                     diverged_training, first_head_labels, fit_seeds, initial_labels,
                     initial_model, snapshot)
from ._resume import (FitCheckpoint, fingerprint, restore_model, restore_training,
                      resume_message)
from ._source import Feeder
from ._training import Trainer, make_optimizer


def fit_model(estimator, X, y):
    """Train ``estimator``'s model on ``X``.

    Returns
    -------
    model : dict
        Every fitted attribute, for :func:`skselflabel._model.commit`.
    messages : list of str
        Warnings to give once the model is committed (none in other processes than the
        leader).
    """
    device = process_device(training_device(estimator.device))
    team = join_team(device)
    with leader_warnings(team):
        data = check_fit_input(estimator, X, estimator.num_workers)
        check_cluster_count(data, estimator.n_clusters)
        config = resolve_config(estimator.get_params(deep=False), data.n_samples,
                                data.sample_shape, team.world)
        assigner = checked_assigner(estimator.assigner, estimator.n_clusters)
        checkpoints, saved = _open_checkpoint(estimator, data, device, team, config)
        model, outcome = _train(estimator, (X, y, data), config, assigner, device, team,
                                (checkpoints, saved))
    if outcome.interrupted is None and checkpoints is not None:
        checkpoints.remove()            # the fit is complete: nothing to resume
    messages = []
    if outcome.interrupted is not None and team.leader:
        epoch, batch, steps = outcome.interrupted
        messages.append(
            f"fit was interrupted (KeyboardInterrupt) at epoch {epoch} of "
            f"{config.max_epochs}, after batch {batch} of {steps}; the estimator is fitted "
            "with the network as trained so far." + (
                "" if checkpoints is None else " Fit again to resume from the checkpoint "
                f"{str(checkpoints.path)!r}."))
    return model, messages


def _open_checkpoint(estimator, data, device, team, config):
    """The fit's :class:`FitCheckpoint` (None without ``checkpoint``) and the state it
    resumes from (None when there is no file yet)."""
    if estimator.checkpoint is None:
        return None, None
    checkpoints = FitCheckpoint(estimator.checkpoint,
                                fingerprint(estimator, data, device, team), team, device)
    saved = checkpoints.load()
    if saved is not None:
        warnings.warn(resume_message(saved, checkpoints.path, config), UserWarning,
                      stacklevel=5)
    return checkpoints, saved


def _train(estimator, inputs, config, assigner, device, team, resume):
    """The trained model (a dict of fitted attributes) and the trainer's outcome."""
    X, y, data = inputs
    checkpoints, saved = resume
    seeds = team.broadcast_(torch.as_tensor(fit_seeds(estimator.random_state),
                                            dtype=torch.int64)).tolist()
    init_gen = torch.Generator().manual_seed(seeds[0])
    model = initial_model(estimator, data, init_gen, device)
    if saved is not None:
        restore_model(model, saved)
    check_fit_memory(estimator, config, data, model, device)
    feeder = Feeder(data.source, model["_scaling"], device)
    # Batch order and neighbour views alike in every process; augmentation alike too when
    # it draws per sample (Trainer._augment gives each row its one-process draws), else
    # each process's own.
    generators = (torch.Generator(feeder.index_device).manual_seed(seeds[1]),
                  torch.Generator(device).manual_seed(
                      seeds[2] + (0 if draws_per_sample(config.augment) else team.rank)))
    labels = initial_labels(model["heads_"], data.n_samples, init_gen, device)
    history = HistoryRecorder()
    events = fit_events(estimator, history, X, y, lambda: snapshot(model, data, feeder),
                        team.leader)
    # Restore torch's global RNG afterwards in case a user module (e.g. Dropout) uses it.
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        trainer = _trainer(estimator, model, config, assigner, feeder, generators, events,
                           team, checkpoints)
        if saved is not None:
            restore_training(trainer, labels, history, saved, team)
        if checkpoints is not None:
            checkpoints.follow(history, model)
        with diverged_training(trainer, history, estimator):
            outcome = trainer.run(feeder, labels)
    model.update(self_labels_=labels.cpu().numpy(), n_iter_=outcome.epochs,
                 cluster_sizes_=trainer.labeller.sizes(estimator.n_clusters),
                 history_=history.frame(model["history_"]), _device=str(device),
                 labels_=first_head_labels(model, feeder, team).cpu().numpy(),
                 **data_attributes(data))
    return model, outcome


def _trainer(estimator, model, config, assigner, feeder, generators, events, team,
             checkpoints):
    """The neighbour graph, the optimiser and the trainer of a fit."""
    graph = (NeighborGraph.build(feeder, config.neighbor_features, config.n_neighbors, team)
             if config.n_neighbors > 0 else None)
    optimizer = make_optimizer(estimator.optimizer, (model["backbone_"], model["heads_"]),
                               config.lr, estimator.momentum, estimator.weight_decay)
    return Trainer(
        model["backbone_"], model["heads_"], model["_head_width"], config, optimizer,
        SelfLabeller(assigner, graph, config.diffusion_steps, team), graph, generators,
        events, first_epoch=len(model["history_"]) + 1, team=team, checkpoints=checkpoints)
