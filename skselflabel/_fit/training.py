"""Training: epochs of cross-entropy steps on the self-labels, with self-label steps on
SeLa's schedule in between, Ctrl-C handled, progress reported through events and the state
handed to the checkpoint (the user guide's "The label schedule")."""
from dataclasses import dataclass
import math
import time
from typing import NamedTuple
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._data.augment import draws_per_sample
from .._runtime.allocation import memory_step
from .._runtime.interrupt import InterruptFlag, interrupt_requested
from .._runtime.memory import FLOAT32, Need
from .._runtime.processes import SOLO
from .._runtime.shared_norm import shared_batch_norm
from .events import EpochRecord


def make_optimizer(name, modules, lr, momentum, weight_decay):
    """The ``optimizer`` parameter as a torch optimiser of the ``modules``' parameters
    (SGD with Nesterov momentum), with torch's fused kernel where it has one for them."""
    params = [p for module in modules for p in module.parameters()]
    if name == "sgd":
        cls, kwargs = torch.optim.SGD, dict(momentum=momentum, nesterov=momentum > 0)
    else:
        cls, kwargs = (torch.optim.Adam if name == "adam" else torch.optim.AdamW), {}
    try:
        # One kernel per step instead of a loop over parameters in Python: on small
        # networks the loop costs more than the forward and backward passes.
        return cls(params, lr=lr, weight_decay=weight_decay, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        # Older torch, or parameters on a device or of a dtype without the kernel.
        return cls(params, lr=lr, weight_decay=weight_decay, **kwargs)


def cosine_schedule(optimizer, total_steps):
    """Learning rate decayed from its initial value to zero over ``total_steps`` steps."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))


def label_update_steps(n_updates, total_steps):
    r"""Gradient-step indices before which the self-labels are recomputed.

    Parameters
    ----------
    n_updates : int
        Number of self-label steps over the whole run, ``>= 1``.
    total_steps : int
        Number of gradient steps in the run.

    Returns
    -------
    steps : ndarray of int64
        Sorted, unique indices in ``[0, total_steps)``; ``steps[0] == 0``. Update ``t``
        lands at :math:`\lfloor (t / (T - 1))^2 \cdot S \rceil` for ``T = n_updates`` and
        ``S = total_steps``; updates that would fall on the same step are merged and any
        at ``S`` itself (after the last gradient step) are dropped, because a final
        labelling happens after training anyway.

    Examples
    --------
    >>> from skselflabel._fit.training import label_update_steps
    >>> label_update_steps(5, 100).tolist()
    [0, 6, 25, 56]
    """
    if n_updates < 1 or total_steps < 1:
        raise ValueError(
            f"n_updates and total_steps must be >= 1, got {n_updates} and {total_steps}."
        )
    if n_updates == 1:
        return np.zeros(1, dtype=np.int64)
    fractions = (np.arange(n_updates) / (n_updates - 1)) ** 2
    steps = np.unique(np.rint(fractions * total_steps).astype(np.int64))
    return steps[steps < total_steps]


class Network(nn.Module):
    """The backbone and its heads as one module (what DistributedDataParallel wraps):
    returns the logits of every head."""

    def __init__(self, backbone, heads):
        super().__init__()
        self.backbone, self.heads = backbone, heads

    def forward(self, x):
        features = self.backbone(x)
        return [head(features) for head in self.heads]


class Interruption(NamedTuple):
    """Where a Ctrl-C stopped training: after ``batch`` of ``steps_per_epoch`` in ``epoch``."""

    epoch: int
    batch: int
    steps_per_epoch: int


@dataclass
class TrainOutcome:
    """Where training ended: ``epochs`` run (the last one partial when interrupted), and
    the :class:`Interruption` after a Ctrl-C, else None."""

    epochs: int
    interrupted: Interruption = None


@dataclass
class Generators:
    """The random choices of training: the order of samples and their neighbour views (on
    the data's index device, seeded alike in every process), and augmentation (on the
    training device)."""

    views: torch.Generator
    augment: torch.Generator


class Trainer:
    """Trains a network in place on the self-labels of a prepared data set.

    Parameters
    ----------
    network : FittedNetwork
        The backbone and heads, already on the training device, and the history of the
        fits that trained them (warm starts continue its epoch count).
    config : FitConfig
        Resolved settings (optimiser, batch size, epochs, schedule, neighbour views,
        augmentation).
    labeller : SelfLabeller
        The self-label step, and the neighbour graph (its ``graph``) the views come from.
    generators : Generators
        Sources of the random choices of training.
    events : EventStream
        Where progress is reported.
    team : skselflabel._runtime.processes.Team, default=one process
        The processes that share the batches.
    checkpoint : object with ``save(training, labels)`` and ``due()``, default=None
        Where the training state goes at the end of each epoch, after a self-label step
        when ``due()`` says so, and on Ctrl-C.
    """

    def __init__(self, network, config, labeller, generators, events, team=SOLO,
                 checkpoint=None):
        self.backbone, self.heads = network.backbone, network.heads
        self.width, self.first_epoch = network.head_width, len(network.history) + 1
        self.sample_values = math.prod(network.sample_shape)
        self.config, self.labeller, self.graph = config, labeller, labeller.graph
        self.events, self.team, self.checkpoint = events, team, checkpoint
        self.view_generator, self.augment_generator = generators.views, generators.augment
        self.optimizer = make_optimizer(config.optimizer, (self.backbone, self.heads),
                                        config.lr, config.momentum, config.weight_decay)
        self.network = team.wrap(Network(self.backbone, self.heads))
        self.scheduler = cosine_schedule(self.optimizer, config.total_steps)
        self.update_at = set(label_update_steps(config.n_label_updates,
                                                config.total_steps).tolist())
        self.step = self.batch = self.epoch = self.epoch_steps = 0
        self.labels_step = -1           # the step of the latest self-label step
        self.finished = self.stop_agreed = False
        self.label_change = torch.tensor(float("nan"), dtype=torch.float64)
        self.loss_sum, self.epoch_start, self.labels = None, 0.0, None
        self.view_state = self.resume_at = None

    def _relabel(self, feeder, labels, final=False):
        # Eval-mode BatchNorm uses running statistics: the same in every process.
        self.team.sync_buffers_(self.network)
        self.label_change = self.labeller.relabel_(
            self.backbone, self.heads, self.width, feeder, labels, self.events,
            progress=1.0 if final else self.step / self.config.total_steps)
        self.labels_step = self.step
        if final:
            self.events.label_update(float(self.label_change), self.labeller.last_error,
                                     self.labeller.last_iterations, final=True,
                                     label_moved=self.labeller.last_moved)

    def run(self, feeder, labels, until=None):
        """Train on the samples of ``feeder`` with the self-labels ``labels`` (updated in
        place): to the end, or to the end of epoch ``until`` (a trial of a start, which a
        later call continues)."""
        cfg = self.config
        interrupted, status, self.labels = None, "failed", labels
        self.events.fit_begin(cfg.max_epochs, cfg.steps_per_epoch, first_epoch=self.epoch + 1)
        try:
            with (InterruptFlag(deferred=self.team.world > 1), warnings.catch_warnings(),
                  shared_batch_norm(self.network, self.team, cfg.sync_batch_norm)):
                # DDP warns when a gradient's strides differ from its bucket's in a size-1
                # dimension only (1-channel convolutions on the CPU): the same memory.
                warnings.filterwarnings("ignore", message="Grad strides do not match")
                self._train(feeder, labels, cfg.max_epochs if until is None else until)
                if self.finished:
                    # A last self-label step so that the self-labels match the final network.
                    self._relabel(feeder, labels, final=True)
            status = "done" if self.finished else "paused"
        except KeyboardInterrupt:
            if not self.stop_agreed and self.team.world > 1:
                raise     # a second Ctrl-C in one process: no agreed place to stop at
            interrupted = Interruption(self.epoch, self.batch, cfg.steps_per_epoch)
            status = "interrupted"
            self._save()                    # before the partial epoch is closed
            if self.loss_sum is not None:
                self._end_epoch()           # the partial epoch: history_ matches n_iter_
        finally:
            self.backbone.eval()
            self.heads.eval()
            self.events.fit_end(status)
        return TrainOutcome(epochs=self.epoch, interrupted=interrupted)

    def _train(self, feeder, labels, last):
        """The epochs from the next one (the first, or where a trial or a checkpoint left
        off) to ``last``."""
        cfg = self.config
        if self.finished:           # resumed after the last epoch: only the final step is left
            return
        for self.epoch in range(self.epoch + 1, last + 1):
            self._start_epoch(feeder.device)
            for _ in self._batches(feeder, labels):
                if self.team.any_process(interrupt_requested()):
                    self.stop_agreed = True
                    raise KeyboardInterrupt
            stop = self._end_epoch()
            self.finished = stop or self.epoch == cfg.max_epochs
            self._save()
            if stop:
                break

    def _save(self):
        if self.checkpoint is not None:
            self.checkpoint.save(self.state(), self.labels)

    def _start_epoch(self, device):
        self.view_state = self.view_generator.get_state()
        self.loss_sum, self.epoch_steps, elapsed = torch.zeros((), device=device), 0, 0.0
        if self.resume_at is not None:      # an epoch a checkpoint left open
            resume, self.resume_at = self.resume_at, None
            self.loss_sum += resume["loss_sum"].to(device)
            self.epoch_steps, elapsed = resume["epoch_steps"], resume["seconds"]
        self.epoch_start = time.perf_counter() - elapsed
        self.events.epoch_begin(self.epoch)

    def _end_epoch(self):
        """Report the epoch (one host sync; with several processes, their totals); returns
        whether a listener asks to stop."""
        totals = self.team.sum_(torch.tensor([self.loss_sum.item(), self.epoch_steps],
                                             dtype=torch.float64))
        seconds = self.team.max_(torch.tensor([time.perf_counter() - self.epoch_start],
                                              dtype=torch.float64))
        steps = int(totals[1])
        loss = float(totals[0]) / steps if steps else float("nan")
        record = EpochRecord(self.first_epoch + self.epoch - 1, loss,
                             float(self.label_change), self.labeller.last_error,
                             self.labeller.last_iterations, float(seconds[0]),
                             self.labeller.last_moved)
        self.loss_sum = None
        return self.team.any_process(self.events.epoch_end(record))

    def _epoch_indices(self, device):
        """The samples of each batch of an epoch, and the inputs that stand for them
        (neighbour views), drawn before the epoch so that a DataLoader can prefetch; with
        several processes, this process's share of each batch."""
        cfg, gen = self.config, self.view_generator
        order = torch.randperm(cfg.n_samples, generator=gen, device=device)
        targets = [order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                   for b in range(cfg.steps_per_epoch)]
        inputs = (targets if self.graph is None else
                  [self.graph.views(idx, cfg.neighbor_prob, gen) for idx in targets])
        return ([self.team.share(t) for t in targets], [self.team.share(t) for t in inputs],
                [len(t) for t in targets])

    def _batches(self, feeder, labels):
        """One epoch of gradient steps (those a resumed epoch has left); yields the batch
        number after each step."""
        cfg = self.config
        self.network.train()
        targets, inputs, batch_sizes = self._epoch_indices(feeder.index_device)
        done = self.epoch_steps
        batches = zip(targets[done:], feeder.batches(inputs[done:]))
        for batch, (idx, xb) in enumerate(batches, done + 1):
            self.batch = batch
            if self.step in self.update_at and self.step != self.labels_step:
                self._relabel(feeder, labels)
                if self.checkpoint is not None and self.checkpoint.due():
                    self._save()
                self.network.train()
            with memory_step(self._where, self._batch_needs):
                if cfg.augment is not None:
                    xb = self._augment(xb, batch_sizes[batch - 1])
                self.loss_sum += self._step(xb, labels[:, idx.to(labels.device)])
            self.step += 1
            self.epoch_steps += 1
            self.events.batch_end(self.step)
            yield batch

    def _where(self):
        return f"training batch {self.batch} of epoch {self.epoch}"

    def _batch_needs(self):
        """What a training step holds besides the backbone's activations (which depend on
        the backbone): its inputs, the weights with their gradients and optimiser state."""
        cfg = self.config
        weights = sum(p.numel() for group in self.optimizer.param_groups
                      for p in group["params"])
        return training_needs(-(-cfg.batch_size // self.team.world), self.sample_values,
                              weights, cfg.optimizer, cfg.augment is not None)

    def _augment(self, xb, batch_size):
        """This process's share ``xb`` of a batch of ``batch_size`` samples, augmented. With
        several processes and a built-in augmentation, every row gets the draws it would get
        in one process (the share is augmented in place within a batch of the whole size,
        from a generator seeded alike in every process), so that the processes together
        take the one-process step, up to the order of floating-point sums."""
        augment = self.config.augment
        if self.team.world == 1 or not draws_per_sample(augment):
            return augment(xb, self.augment_generator)
        start, stop = self.team.shard(batch_size)
        whole = xb.new_zeros((batch_size, *xb.shape[1:]))
        whole[start:stop] = xb
        return augment(whole, self.augment_generator)[start:stop]

    def _step(self, xb, targets):
        """One gradient step on a batch; returns its (detached) loss."""
        losses = [F.cross_entropy(logits, targets[h])
                  for h, logits in enumerate(self.network(xb))]
        # One head (the default) needs no extra add/divide kernels per step.
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    def state(self):
        """What a checkpoint keeps of the training, as tensors and plain values: the
        position (a clean epoch boundary, or the batches done of an open epoch), the
        optimiser and schedule, the labeller's state, and the generator states that make
        the rest of the run (the view generator's as of the start of the open epoch, which
        redraws the epoch's batches). ``augment_generator`` and ``loss_sum`` are this
        process's own."""
        is_open = self.loss_sum is not None
        return {
            "epoch": self.epoch if is_open else self.epoch + 1,
            "epoch_steps": self.epoch_steps if is_open else 0,
            "seconds": time.perf_counter() - self.epoch_start if is_open else 0.0,
            "loss_sum": (self.loss_sum if is_open else torch.zeros(())).detach().cpu(),
            "step": self.step, "labels_step": self.labels_step, "finished": self.finished,
            "label_change": float(self.label_change), **self.labeller.state(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "view_generator": self.view_state if is_open else self.view_generator.get_state(),
            "augment_generator": self.augment_generator.get_state(),
        }

    def restore(self, state):
        """Continue from :meth:`state` (this process's parts picked out)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.view_generator.set_state(state["view_generator"])
        self.augment_generator.set_state(state["augment_generator"])
        self.step, self.labels_step = state["step"], state["labels_step"]
        self.finished, self.epoch = state["finished"], state["epoch"] - 1
        self.label_change = torch.tensor(state["label_change"], dtype=torch.float64)
        self.labeller.restore(state)
        self.resume_at = {name: state[name] for name in ("epoch", "epoch_steps", "seconds",
                                                         "loss_sum")}


# Values an optimiser keeps per weight: momentum for SGD, two moments for Adam and AdamW.
OPTIMIZER_SLOTS = {"sgd": 1, "adam": 2, "adamw": 2}


def training_needs(batch_rows, sample_values, n_weights, optimizer, augmented):
    """What one gradient step allocates beyond the backbone's activations: the batch (and
    its augmented copy), the weights, their gradients and the optimiser's state."""
    return [Need("training batch", (1 + augmented) * batch_rows * sample_values * FLOAT32,
                 "batch_size"),
            Need("weights, gradients and optimiser state",
                 (2 + OPTIMIZER_SLOTS[optimizer]) * n_weights * FLOAT32,
                 "a smaller backbone, or n_clusters and n_heads")]
