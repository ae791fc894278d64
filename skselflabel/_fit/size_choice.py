"""Equal or estimated cluster sizes, chosen without labels: a twin of the training run that
estimates the sizes, kept when its self-labels agree better with the neighbour graph (the
user guide's "Cluster sizes learned from the data")."""
import copy
from dataclasses import dataclass, replace

import torch

from .assigner_protocol import check_assigner
from .config import default_assigner
from .events import HistoryRecorder, twin_events
from .labelling import SelfLabeller
from .training import Generators, Trainer


@dataclass
class Twin:
    """The run with estimated sizes, forked from the run with equal ones."""

    trainer: Trainer
    network: object              # FittedNetwork
    labels: torch.Tensor
    history: HistoryRecorder


def estimating():
    """The default assigner, estimating the cluster proportions (``prior="auto"``), checked
    as every fit's assigner is."""
    return check_assigner(default_assigner().set_params(prior="auto"))


def fork(run, trainer, graph):
    """A twin of ``run`` (trained by ``trainer`` up to a clean epoch boundary) whose
    self-label steps estimate the cluster sizes from here on; ``run`` is left as it was.
    The twin has copies of the network, optimiser and schedule, generators and labels."""
    config = run.config
    state = copy.deepcopy(trainer.state())
    network = replace(run.network, backbone=copy.deepcopy(run.network.backbone),
                      heads=copy.deepcopy(run.network.heads))
    generators = Generators(views=_copy_generator(run.generators.views),
                            augment=_copy_generator(run.generators.augment))
    history = HistoryRecorder()
    history.records = copy.deepcopy(run.history.records)
    labeller = SelfLabeller(estimating(), graph, config.diffusion_steps, run.team,
                            config.feature_walk_steps)
    twin = Trainer(network, config, labeller, generators,
                   twin_events(history, config.verbose, run.team.leader), run.team)
    twin.restore(state)
    return Twin(trainer=twin, network=network, labels=run.labels.clone(), history=history)


def _copy_generator(generator):
    twin = torch.Generator(generator.device)
    twin.set_state(generator.get_state())
    return twin
