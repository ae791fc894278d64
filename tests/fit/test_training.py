"""The trainer: schedule of self-label steps, stopping, interruption, its state."""
import numpy as np
import pytest
import torch
from torch import nn

from skselflabel import SelfLabelClusterer
from skselflabel._fit.config import resolve_config
from skselflabel._fit.events import EventStream, FitListener, HistoryRecorder, empty_history
from skselflabel._fit.state import FittedNetwork
from skselflabel._fit.training import (Generators, Trainer, cosine_schedule,
                                       label_update_steps, make_optimizer)
from feeding import feeder_of


class _CountingLabeller:
    """Records the gradient step at which each self-label step happens."""

    graph = None

    def __init__(self):
        self.steps, self.trainer, self.last_error, self.last_iterations = [], None, 0.0, 0
        self.last_moved = 0.0

    def relabel_(self, backbone, heads, width, feeder, labels, events=None, progress=1.0):
        self.steps.append(self.trainer.step)
        labels.copy_(torch.arange(labels.shape[1]) % 3)
        return torch.tensor(0.25, dtype=torch.float64)


def _trainer(listeners=(), **params):
    X_t = torch.randn(60, 4, generator=torch.Generator().manual_seed(0))
    config = resolve_config(SelfLabelClusterer(n_clusters=3, n_neighbors=0, **params)
                            .get_params(deep=False), 60, (4,))
    torch.manual_seed(0)
    backbone, heads = nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.ModuleList([nn.Linear(8, 3)])
    network = FittedNetwork(backbone, heads, head_width=8, n_features_out=8, scaling=None,
                            history=empty_history(), sample_shape=(4,))
    labeller = _CountingLabeller()
    generators = Generators(views=torch.Generator().manual_seed(1),
                            augment=torch.Generator().manual_seed(2))
    trainer = Trainer(network, config, labeller, generators, EventStream(listeners))
    labeller.trainer = trainer
    return trainer, labeller, feeder_of(X_t), config


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

    history = HistoryRecorder()
    trainer, labeller, X_t, config = _trainer([history, Interrupt()], max_epochs=4)
    outcome = trainer.run(X_t, torch.zeros((1, 60), dtype=torch.int64))
    assert outcome.epochs == 2 and outcome.interrupted[0] == 2
    # The partial epoch is recorded too (no step ran in it: its loss is NaN).
    assert [r.epoch for r in history.records] == [1, 2] and np.isnan(history.records[1].loss)


def test_cosine_schedule_ends_at_zero():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_schedule(opt, 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 1.0 and np.all(np.diff(lrs) < 0) and opt.param_groups[0]["lr"] == 0.0


def test_a_process_augments_its_share_with_its_one_process_draws():
    # Data-parallel fits with a built-in augmentation: process 1 of 2, holding rows 3..6 of
    # a batch of 7, gets exactly the rows one process would get from the same generator.
    from types import SimpleNamespace

    from skselflabel._data.augment import ImageAugment
    from skselflabel._runtime.processes import Team

    class SecondOfTwo(Team):
        rank, world = 1, 2

    batch = torch.randn(7, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    augment = ImageAugment(flip=True, erase=0.5)
    whole = augment(batch, torch.Generator().manual_seed(5))
    start, stop = SecondOfTwo().shard(7)
    trainer = SimpleNamespace(team=SecondOfTwo(), config=SimpleNamespace(augment=augment),
                              augment_generator=torch.Generator().manual_seed(5))
    share = Trainer._augment(trainer, batch[start:stop], 7)
    assert (start, stop) == (3, 7)
    torch.testing.assert_close(share, whole[start:stop], rtol=0, atol=0)


def test_label_update_schedule_is_quadratic_and_starts_at_zero():
    steps = label_update_steps(11, 1000)
    assert steps[0] == 0 and (np.diff(steps) > 0).all() and steps[-1] < 1000
    gaps = np.diff(steps)
    assert gaps[0] < gaps[-1]  # dense early
    assert steps[5] == round(0.25 * 1000)
    assert label_update_steps(1, 10).tolist() == [0]
    assert label_update_steps(50, 10).tolist() == list(range(10))
    with pytest.raises(ValueError):
        label_update_steps(0, 10)


def test_the_optimizer_follows_the_config():
    trainer, *_ = _trainer(optimizer="sgd", momentum=0.5, weight_decay=0.25, lr=0.1)
    group = trainer.optimizer.param_groups[0]
    assert isinstance(trainer.optimizer, torch.optim.SGD) and group["nesterov"]
    assert (group["momentum"], group["weight_decay"]) == (0.5, 0.25)
    trainer, *_ = _trainer(optimizer="adamw")
    assert isinstance(trainer.optimizer, torch.optim.AdamW)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_the_optimizer_takes_the_fused_kernel_and_falls_back_without_it(name, monkeypatch):
    module = nn.Linear(3, 2)
    optimizer = make_optimizer(name, [module], 0.1, 0.9, 0.0)
    assert optimizer.defaults["fused"] is True
    # A torch without the kernel for these parameters refuses fused=True when built.
    cls = type(optimizer)

    class NoFusedKernel(cls):
        def __init__(self, params, **kwargs):
            if kwargs.get("fused"):
                raise RuntimeError("`fused=True` requires all the params to be floating "
                                   "point Tensors of supported devices")
            super().__init__(params, **kwargs)

    monkeypatch.setattr(torch.optim, cls.__name__, NoFusedKernel)
    fallback = make_optimizer(name, [module], 0.1, 0.9, 0.0)
    assert isinstance(fallback, NoFusedKernel) and not fallback.defaults["fused"]
    module.weight.grad = torch.ones_like(module.weight)
    before = module.weight.detach().clone()
    fallback.step()
    assert not torch.equal(module.weight, before)


def test_the_checkpoint_is_handed_the_state_it_writes():
    class Recorder:
        def __init__(self):
            self.saved = []

        def due(self):
            return False

        def save(self, training, labels):
            self.saved.append((training, labels.clone()))

    class Labeller(_CountingLabeller):
        def state(self):
            return {"label_error": 0.5, "proportions": None}

    trainer, _, X_t, config = _trainer(max_epochs=2)
    trainer.labeller = labeller = Labeller()
    labeller.trainer = trainer
    trainer.checkpoint = recorder = Recorder()
    trainer.run(X_t, torch.zeros((1, 60), dtype=torch.int64))
    assert len(recorder.saved) == 2                      # one at the end of each epoch
    training, labels = recorder.saved[-1]
    assert (training["epoch"], training["epoch_steps"], training["finished"]) == (3, 0, True)
    assert training["label_error"] == 0.5 and training["proportions"] is None
    assert training["step"] == 2 * config.steps_per_epoch and labels.shape == (1, 60)
