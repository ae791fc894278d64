"""The trainer: schedule of self-label steps, stopping, interruption."""
import signal

import numpy as np
import pytest
import torch
from torch import nn

from skselflabel import SelfLabelClusterer
from skselflabel._config import resolve_config
from skselflabel._events import EventStream, FitListener
from skselflabel._schedule import label_update_steps
from skselflabel._training import InterruptFlag, Trainer, cosine_schedule, make_optimizer


class _CountingLabeller:
    """Records the gradient step at which each self-label step happens."""

    def __init__(self):
        self.steps, self.trainer = [], None

    def relabel_(self, backbone, heads, width, X_t, labels):
        self.steps.append(self.trainer.step)
        labels.copy_(torch.arange(labels.shape[1]) % 3)
        return torch.tensor(0.25, dtype=torch.float64)


def _trainer(listeners=(), **params):
    X_t = torch.randn(60, 4, generator=torch.Generator().manual_seed(0))
    config = resolve_config(SelfLabelClusterer(n_clusters=3, n_neighbors=0, **params)
                            .get_params(deep=False), 60, (4,))
    torch.manual_seed(0)
    backbone, heads = nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.ModuleList([nn.Linear(8, 3)])
    optimizer = make_optimizer("adam", (backbone, heads), config.lr, 0.9, 0.0)
    labeller = _CountingLabeller()
    trainer = Trainer(backbone, heads, 8, config, optimizer, labeller, None,
                      torch.Generator().manual_seed(1), EventStream(listeners))
    labeller.trainer = trainer
    return trainer, labeller, X_t, config


def test_self_label_steps_follow_the_schedule_then_one_final_step():
    trainer, labeller, X_t, config = _trainer(max_epochs=3, n_label_updates=5)
    outcome = trainer.run(X_t, torch.zeros((1, 60), dtype=torch.int64))
    planned = label_update_steps(5, config.total_steps).tolist()
    assert labeller.steps == planned + [config.total_steps]
    assert outcome.epochs == 3 and outcome.interrupted is None
    assert not trainer.backbone.training


def test_a_listener_can_stop_training():
    class StopAfter2(FitListener):
        def on_epoch_end(self, record):
            return record.epoch == 2

    trainer, labeller, X_t, config = _trainer([StopAfter2()], max_epochs=6)
    outcome = trainer.run(X_t, torch.zeros((1, 60), dtype=torch.int64))
    assert outcome.epochs == 2 and trainer.step == 2 * config.steps_per_epoch
    assert labeller.steps[-1] == trainer.step          # the final self-label step ran


def test_interruption_is_reported_where_it_happened():
    class Interrupt(FitListener):
        def on_epoch_begin(self, epoch):
            if epoch == 2:
                raise KeyboardInterrupt

    trainer, labeller, X_t, config = _trainer([Interrupt()], max_epochs=4)
    outcome = trainer.run(X_t, torch.zeros((1, 60), dtype=torch.int64))
    assert outcome.epochs == 2 and outcome.interrupted[0] == 2


def test_cosine_schedule_ends_at_zero():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_schedule(opt, 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 1.0 and np.all(np.diff(lrs) < 0) and opt.param_groups[0]["lr"] == 0.0


def test_interrupt_flag_restores_the_handler():
    before = signal.getsignal(signal.SIGINT)
    with InterruptFlag() as flag:
        assert signal.getsignal(signal.SIGINT) != before
        signal.raise_signal(signal.SIGINT)
        assert flag.requested
        with pytest.raises(KeyboardInterrupt):      # a second Ctrl-C interrupts at once
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
