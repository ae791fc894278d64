"""The team of a fit in one process: every collective is the identity, and nothing starts
a process group unless torchrun's variables say so (two processes:
tests/integration/test_distributed.py); the device policy."""
import numpy as np
import pytest
import torch
import torch.distributed as dist

from skselflabel import SelfLabelClusterer
from skselflabel._runtime import processes
from skselflabel._runtime.processes import (SOLO, inference_device, join_team, leader_warnings,
                                            process_device, training_device)


def test_one_process_is_the_whole_team():
    assert (SOLO.rank, SOLO.world, SOLO.leader) == (0, 1, True)
    assert SOLO.shard(7) == (0, 7)
    batch = torch.arange(5)
    assert torch.equal(SOLO.share(batch), batch)
    t = torch.tensor([1.0, 2.0])
    assert SOLO.sum_(t) is t and SOLO.max_(t) is t and SOLO.broadcast_(t) is t
    assert SOLO.gather_rows(t, 2) is t and SOLO.gather(t) == [t]
    assert SOLO.any_process(True) and not SOLO.any_process(0)
    assert SOLO.share_bytes(b"x") == b"x" and SOLO.share_bytes(None) is None
    module = torch.nn.Linear(2, 2)
    assert SOLO.wrap(module) is module


@pytest.mark.parametrize("n, world", [(7, 2), (10, 3), (1797, 4), (5, 5)])
def test_shards_and_shares_cover_the_rows_once(n, world):
    bounds = [processes._bounds(n, rank, world) for rank in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
def test_no_process_group_is_started_without_torchrun(monkeypatch):
    for name in processes.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert join_team(torch.device("cpu")) is SOLO and not dist.is_initialized()
    # torchrun with one process: still one process, no group.
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    monkeypatch.setenv("MASTER_PORT", "1")
    assert join_team(torch.device("cpu")) is SOLO and not dist.is_initialized()
    assert process_device(torch.device("cpu")) == torch.device("cpu")


def test_warnings_come_from_the_leader_only(recwarn):
    class Follower(processes.Team):
        rank, world = 1, 2

    import warnings
    with leader_warnings(Follower()):
        warnings.warn("from a follower")
    with leader_warnings(SOLO):
        warnings.warn("from the leader")
    assert [str(w.message) for w in recwarn] == ["from the leader"]


def test_a_fit_in_one_process_uses_no_process_group():
    from skselflabel import SelfLabelClusterer
    X = np.random.default_rng(0).standard_normal((60, 3))
    SelfLabelClusterer(3, max_epochs=1, random_state=0).fit(X)
    assert not (dist.is_available() and dist.is_initialized())


def test_device_policy():
    assert training_device("cpu") == torch.device("cpu")
    assert training_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="torch device"):
        training_device("gpu please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            training_device("cuda:0")
        assert inference_device("cuda:1") == torch.device("cpu")
    assert inference_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("device, match", [
    # Issue #10, item 5: torch's RuntimeError ("META device type not an accelerator", "Cannot
    # execute getNewGenerator() without MPS backend") instead of the CUDA-like message.
    ("meta", "holds no data"),
    pytest.param("mps", "MPS .* is not available", marks=pytest.mark.skipif(
        torch.backends.mps.is_available(), reason="MPS is available here")),
])
def test_unavailable_devices_are_explained(device, match):
    with pytest.raises(ValueError, match=match):
        training_device(device)
    X = np.random.RandomState(0).randn(50, 4).astype("float32")
    with pytest.raises(ValueError, match=match):
        SelfLabelClusterer(3, max_epochs=1, device=device).fit(X)
