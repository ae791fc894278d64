"""The training loop: epochs of cross-entropy steps on the self-labels, with self-label
steps on SeLa's schedule in between.

:class:`Trainer` owns the optimiser, the learning-rate schedule and the interruption
handling; it trains the modules it is given in place and reports what happens through an
:class:`~skselflabel._events.EventStream`. A Ctrl-C ends training after the current batch
and leaves the modules as trained so far (:class:`TrainOutcome` says where it stopped).
"""
from dataclasses import dataclass
import math
import signal
import threading
import time

import torch
import torch.nn.functional as F

from ._events import EpochRecord
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


class InterruptFlag:
    """Turns the first Ctrl-C during training into a flag checked after each batch.

    Only the main thread can install signal handlers; elsewhere a KeyboardInterrupt is
    caught where it lands instead. A second Ctrl-C raises at once.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            try:
                self._previous = signal.signal(signal.SIGINT, self._handle)
            except ValueError:  # e.g. embedded interpreters without signal support
                self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


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
    generator : torch.Generator
        Source of every random choice of training, on the training device.
    events : EventStream
        Where progress is reported.
    first_epoch : int, default=1
        Number of the first epoch in the history (warm starts continue the count).
    """

    def __init__(self, backbone, heads, width, config, optimizer, labeller, graph,
                 generator, events, first_epoch=1):
        self.backbone, self.heads, self.width = backbone, heads, width
        self.config, self.optimizer, self.labeller = config, optimizer, labeller
        self.graph, self.generator, self.events = graph, generator, events
        self.first_epoch = first_epoch
        self.scheduler = cosine_schedule(optimizer, config.total_steps)
        self.update_at = set(label_update_steps(config.n_label_updates,
                                                config.total_steps).tolist())
        self.step = self.batch = 0
        self.label_change = torch.tensor(float("nan"), dtype=torch.float64)

    def _relabel(self, X_t, labels, final=False):
        self.label_change = self.labeller.relabel_(self.backbone, self.heads, self.width,
                                                   X_t, labels)
        if final:
            self.events.label_update(float(self.label_change), final=True)

    def run(self, X_t, labels):
        """Train over ``X_t`` with the self-labels ``labels`` (updated in place)."""
        cfg = self.config
        epoch = 0
        interrupted, status = None, "failed"
        self.events.fit_begin(cfg.max_epochs)
        try:
            with InterruptFlag() as stop:
                for epoch in range(1, cfg.max_epochs + 1):
                    tic = time.perf_counter()
                    self.events.epoch_begin(epoch)
                    loss_sum = torch.zeros((), device=X_t.device)
                    for _ in self._batches(X_t, labels, loss_sum):
                        if stop.requested:
                            raise KeyboardInterrupt
                    # One host sync per epoch.
                    record = EpochRecord(self.first_epoch + epoch - 1,
                                         loss_sum.item() / cfg.steps_per_epoch,
                                         float(self.label_change),
                                         time.perf_counter() - tic)
                    if self.events.epoch_end(record):
                        break
                # A last self-label step so that the self-labels match the final network.
                self._relabel(X_t, labels, final=True)
            status = "done"
        except KeyboardInterrupt:
            interrupted, status = (epoch, self.batch, cfg.steps_per_epoch), "interrupted"
        finally:
            self.backbone.eval()
            self.heads.eval()
            self.events.fit_end(status)
        return TrainOutcome(epochs=epoch, interrupted=interrupted)

    def _batches(self, X_t, labels, loss_sum):
        """One epoch of gradient steps; yields the batch number after each step."""
        cfg, gen = self.config, self.generator
        self.backbone.train()
        self.heads.train()
        order = torch.randperm(cfg.n_samples, generator=gen, device=X_t.device)
        for batch in range(1, cfg.steps_per_epoch + 1):
            self.batch = batch
            if self.step in self.update_at:
                self._relabel(X_t, labels)
                self.backbone.train()
                self.heads.train()
            idx = order[(batch - 1) * cfg.batch_size: batch * cfg.batch_size]
            source = idx if self.graph is None else self.graph.views(idx, cfg.neighbor_prob,
                                                                     gen)
            xb = X_t[source]
            if cfg.augment is not None:
                xb = cfg.augment(xb, gen)
            loss_sum += self._step(xb, labels[:, idx])
            self.step += 1
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
