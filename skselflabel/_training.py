"""The training loop: epochs of cross-entropy steps on the self-labels, with self-label
steps on SeLa's schedule in between.

:class:`Trainer` owns the optimiser, the learning-rate schedule and the interruption
handling; it trains the modules it is given in place and reports what happens through an
:class:`~skselflabel._events.EventStream`. A Ctrl-C ends training after the current batch
and leaves the modules as trained so far (:class:`TrainOutcome` says where it stopped).
"""
from dataclasses import dataclass
import math
import time

import torch
import torch.nn.functional as F

from ._events import EpochRecord
from ._interrupt import InterruptFlag, check_interrupt
from ._schedule import label_update_steps


def make_optimizer(name, modules, lr, momentum, weight_decay):
    """The ``optimizer`` parameter as a torch optimiser of the ``modules``' parameters
    (SGD with Nesterov momentum)."""
    params = [p for module in modules for p in module.parameters()]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0,
                               weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def cosine_schedule(optimizer, total_steps):
    """Learning rate decayed from its initial value to zero over ``total_steps`` steps."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))


@dataclass
class TrainOutcome:
    """Where training ended: ``epochs`` run (the last one partial when interrupted), and
    ``interrupted`` as ``(epoch, batch, steps_per_epoch)`` after a Ctrl-C, else None."""

    epochs: int
    interrupted: tuple = None


class Trainer:
    """Trains ``backbone`` and ``heads`` in place on the self-labels of a prepared tensor.

    Parameters
    ----------
    backbone, heads : nn.Module, nn.ModuleList
        The network, already on the training device.
    width : int
        Width of the backbone's output (the heads' input).
    config : FitConfig
        Resolved settings (batch size, epochs, schedule, neighbour views, augmentation).
    optimizer : torch.optim.Optimizer
        Optimiser of the network's parameters.
    labeller : SelfLabeller
        The self-label step.
    graph : NeighborGraph or None
        Source of neighbour views.
    generators : tuple of torch.Generator
        Sources of the random choices of training: the order of samples and their
        neighbour views (on the index device of the data), and augmentation (on the
        training device).
    events : EventStream
        Where progress is reported.
    first_epoch : int, default=1
        Number of the first epoch in the history (warm starts continue the count).
    """

    def __init__(self, backbone, heads, width, config, optimizer, labeller, graph,
                 generators, events, first_epoch=1):
        self.backbone, self.heads, self.width = backbone, heads, width
        self.config, self.optimizer, self.labeller = config, optimizer, labeller
        self.graph, self.events = graph, events
        self.view_generator, self.augment_generator = generators
        self.first_epoch = first_epoch
        self.scheduler = cosine_schedule(optimizer, config.total_steps)
        self.update_at = set(label_update_steps(config.n_label_updates,
                                                config.total_steps).tolist())
        self.step = self.batch = self.epoch = 0
        self.label_change = torch.tensor(float("nan"), dtype=torch.float64)
        self.loss_sum, self.epoch_steps, self.epoch_start = None, 0, 0.0

    def _relabel(self, feeder, labels, final=False):
        self.label_change = self.labeller.relabel_(
            self.backbone, self.heads, self.width, feeder, labels, self.events,
            progress=1.0 if final else self.step / self.config.total_steps)
        if final:
            self.events.label_update(float(self.label_change), self.labeller.last_error,
                                     final=True)

    def run(self, feeder, labels):
        """Train on the samples of ``feeder`` with the self-labels ``labels`` (updated in
        place)."""
        cfg = self.config
        interrupted, status = None, "failed"
        self.events.fit_begin(cfg.max_epochs, cfg.steps_per_epoch)
        try:
            with InterruptFlag():
                for self.epoch in range(1, cfg.max_epochs + 1):
                    self._start_epoch(feeder.device)
                    for _ in self._batches(feeder, labels):
                        check_interrupt()
                    if self._end_epoch():
                        break
                # A last self-label step so that the self-labels match the final network.
                self._relabel(feeder, labels, final=True)
            status = "done"
        except KeyboardInterrupt:
            interrupted, status = (self.epoch, self.batch, cfg.steps_per_epoch), "interrupted"
            if self.loss_sum is not None:
                self._end_epoch()           # the partial epoch: history_ matches n_iter_
        finally:
            self.backbone.eval()
            self.heads.eval()
            self.events.fit_end(status)
        return TrainOutcome(epochs=self.epoch, interrupted=interrupted)

    def _start_epoch(self, device):
        self.epoch_start = time.perf_counter()
        self.loss_sum, self.epoch_steps = torch.zeros((), device=device), 0
        self.events.epoch_begin(self.epoch)

    def _end_epoch(self):
        """Report the epoch (one host sync); returns whether a listener asks to stop."""
        loss = self.loss_sum.item() / self.epoch_steps if self.epoch_steps else float("nan")
        record = EpochRecord(self.first_epoch + self.epoch - 1, loss,
                             float(self.label_change), self.labeller.last_error,
                             time.perf_counter() - self.epoch_start)
        self.loss_sum = None
        return self.events.epoch_end(record)

    def _epoch_indices(self, device):
        """The samples of each batch of an epoch, and the inputs that stand for them
        (neighbour views), drawn before the epoch so that a DataLoader can prefetch."""
        cfg, gen = self.config, self.view_generator
        order = torch.randperm(cfg.n_samples, generator=gen, device=device)
        targets = [order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                   for b in range(cfg.steps_per_epoch)]
        if self.graph is None:
            return targets, targets
        return targets, [self.graph.views(idx, cfg.neighbor_prob, gen) for idx in targets]

    def _batches(self, feeder, labels):
        """One epoch of gradient steps; yields the batch number after each step."""
        cfg = self.config
        self.backbone.train()
        self.heads.train()
        targets, inputs = self._epoch_indices(feeder.index_device)
        for batch, (idx, xb) in enumerate(zip(targets, feeder.batches(inputs)), 1):
            self.batch = batch
            if self.step in self.update_at:
                self._relabel(feeder, labels)
                self.backbone.train()
                self.heads.train()
            if cfg.augment is not None:
                xb = cfg.augment(xb, self.augment_generator)
            self.loss_sum += self._step(xb, labels[:, idx.to(labels.device)])
            self.step += 1
            self.epoch_steps += 1
            self.events.batch_end(self.step)
            yield batch

    def _step(self, xb, targets):
        """One gradient step on a batch; returns its (detached) loss."""
        features = self.backbone(xb)
        losses = [F.cross_entropy(head(features), targets[h])
                  for h, head in enumerate(self.heads)]
        # One head (the default) needs no extra add/divide kernels per step.
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()
