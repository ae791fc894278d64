"""Resolving the "auto" parameters: one function, frozen settings."""
import dataclasses

import pytest

from skselflabel import SelfLabelClusterer
from skselflabel._data.augment import ImageAugment
from skselflabel._fit.config import n_batches, resolve_config


def _params(**changes):
    return SelfLabelClusterer(**changes).get_params(deep=False)


@pytest.mark.parametrize("n, shape, expected", [
    # digits table: batches of 128, 15 steps an epoch, 40 epochs, the paper's 100 updates,
    # 19 diffusion steps for clusters of 180
    (1797, (64,), dict(batch_size=128, steps_per_epoch=15, max_epochs=40,
                       n_label_updates=100, diffusion_steps=19, neighbor_prob=0.5,
                       neighbor_features="input", n_neighbors=10)),
    # 8x8 digit images: pixels for the graph, always a neighbour view
    (1797, (1, 8, 8), dict(neighbor_features="input", neighbor_prob=1.0)),
    # Fashion-MNIST: 10 epochs, 10 updates, 60 diffusion steps, gradient histograms
    (60000, (1, 28, 28), dict(batch_size=128, steps_per_epoch=469, max_epochs=10,
                              n_label_updates=10, diffusion_steps=60,
                              neighbor_features="gradients")),
    # tiny data: small batches, enough steps per epoch, neighbours capped at n - 1, a
    # short walk for clusters of 4
    (40, (3,), dict(batch_size=16, steps_per_epoch=3, max_epochs=100, n_neighbors=10,
                    diffusion_steps=3)),
    (5, (3,), dict(batch_size=5, n_neighbors=4)),
])
def test_auto_values(n, shape, expected):
    config = resolve_config(_params(), n, shape)
    for name, value in expected.items():
        assert getattr(config, name) == value, name
    assert config.total_steps == config.max_epochs * config.steps_per_epoch


def test_explicit_values_win_and_the_config_is_frozen():
    config = resolve_config(_params(batch_size=32, max_epochs=3, n_label_updates=2,
                                    lr=0.5, optimizer="sgd", n_neighbors=0,
                                    neighbor_prob=0.25, diffusion_steps=7,
                                    neighbor_features="gradients"), 1000, (1, 8, 8))
    assert (config.batch_size, config.max_epochs, config.n_label_updates, config.lr,
            config.n_neighbors, config.neighbor_prob, config.diffusion_steps,
            config.neighbor_features) == (32, 3, 2, 0.5, 0, 0.25, 7, "gradients")
    assert resolve_config(_params(optimizer="sgd"), 1000, (4,)).lr == 0.05
    assert isinstance(resolve_config(_params(), 100, (1, 8, 8)).augment, ImageAugment)
    assert resolve_config(_params(), 100, (4,)).augment is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0


@pytest.mark.parametrize("n, n_clusters, steps, walk", [
    (60000, 3000, 6, 6),                # clusters of 20: the rule's 6 either way
    (1_281_167, 3000, 29, 6),           # clusters of 427: the feature walk stops at 6
    (1797, 10, 19, 6),
])
def test_the_walk_on_features_takes_at_most_six_steps(n, n_clusters, steps, walk):
    config = resolve_config(_params(n_clusters=n_clusters), n, (128,))
    assert (config.diffusion_steps, config.feature_walk_steps) == (steps, walk)
    explicit = resolve_config(_params(n_clusters=n_clusters, diffusion_steps=29), n, (128,))
    assert (explicit.diffusion_steps, explicit.feature_walk_steps) == (29, 29)


def test_a_trailing_batch_of_one_is_dropped():
    assert n_batches(33, 16) == 2 and n_batches(34, 16) == 3 and n_batches(1, 16) == 1


def test_label_updates_are_at_most_three_per_epoch():
    assert resolve_config(_params(max_epochs=1), 60000, (64,)).n_label_updates == 3
    assert resolve_config(_params(max_epochs=4), 1797, (64,)).n_label_updates == 12
    assert resolve_config(_params(max_epochs=40), 1797, (64,)).n_label_updates == 100


def test_processes_share_each_batch_and_each_needs_two_samples():
    # The trailing batch must give every process two samples, or it is dropped.
    assert n_batches(37, 16, n_processes=2) == 3 and n_batches(35, 16, n_processes=2) == 2
    assert n_batches(33, 16, n_processes=1) == 2
    config = resolve_config(_params(batch_size=8), 100, (4,), n_processes=4)
    assert config.batch_size == 8 and config.steps_per_epoch == 12    # 4 left: 1 each
    with pytest.raises(ValueError, match="shared by 4 processes.*at least 8"):
        resolve_config(_params(batch_size=6), 100, (4,), n_processes=4)


@pytest.mark.parametrize("max_epochs, n_init, expected", [
    (40, "auto", (4, 8)),       # digits: four starts, trials of a fifth of the epochs
    (10, "auto", (4, 2)),       # Fashion-MNIST's ten epochs: trials of two
    (4, "auto", (1, 1)),        # too short to compare starts
    (4, 3, (3, 1)),             # asked for: trials of one epoch
    (1, 3, (1, 0)),             # one epoch leaves no room for a trial
])
def test_starts_and_their_trials(max_epochs, n_init, expected):
    config = resolve_config(_params(max_epochs=max_epochs, n_init=n_init), 1000, (4,))
    assert (config.n_init, config.trial_epochs) == expected


def test_the_recall_asked_of_the_graph_search_is_carried_and_checked():
    import numpy as np

    assert resolve_config(_params(), 1000, (4,)).neighbor_recall == 0.95
    assert resolve_config(_params(neighbor_recall=0.8), 1000, (4,)).neighbor_recall == 0.8
    with pytest.raises(ValueError, match="neighbor_recall"):
        SelfLabelClusterer(neighbor_recall=0.0).fit(np.zeros((10, 2)))
