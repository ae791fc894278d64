"""The processes of a fit and the devices they compute on: a ``torch.distributed`` group seen
as a :class:`Team` (one process: :data:`SOLO`, every collective the identity), and the device
policy (where to train, where a fitted model runs)."""
from contextlib import contextmanager
import inspect
import os
import warnings

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

# The variables torchrun sets: with all of them and WORLD_SIZE > 1, a fit that finds no
# process group initialises the default one itself.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Largest CPU tensor (elements) reduced by an all-gather (see DistributedTeam._reduce).
SMALL_REDUCE = 1 << 14


def _bounds(n, rank, world):
    """Rows ``[start, stop)`` of ``rank`` when ``n`` rows are split over ``world``."""
    return n * rank // world, n * (rank + 1) // world


class Team:
    """One process: every collective is the identity."""

    rank, world = 0, 1

    @property
    def leader(self):
        """Whether this process reports progress, warns and writes checkpoints (rank 0)."""
        return self.rank == 0

    def shard(self, n):
        """This process's rows ``[start, stop)`` of ``n`` (contiguous; sizes within one)."""
        return _bounds(n, self.rank, self.world)

    def share(self, batch):
        """This process's part of a batch of sample indices."""
        start, stop = _bounds(batch.shape[0], self.rank, self.world)
        return batch[start:stop]

    def gather_rows(self, local, n, out=None):
        """All ``n`` rows, from every process's shard (:meth:`shard`) ``local``."""
        return local if out is None else out.copy_(local)

    def sum_(self, tensor):
        """Sum ``tensor`` over the processes, in place."""
        return tensor

    def max_(self, tensor):
        """Elementwise maximum of ``tensor`` over the processes, in place."""
        return tensor

    def broadcast_(self, tensor, src=0):
        """``tensor`` as process ``src`` holds it, in place."""
        return tensor

    def any_process(self, flag):
        """Whether ``flag`` is true in any process."""
        return bool(flag)

    def gather(self, tensor):
        """The list of every process's ``tensor`` (a CPU tensor of the same shape in all)."""
        return [tensor]

    def share_bytes(self, data):
        """The leader's ``data`` (bytes or None) in every process."""
        return data

    def gather_object(self, obj):
        """The list of every process's ``obj`` (small, picklable: a few strings)."""
        return [obj]

    def wrap(self, module):
        """``module`` as it trains: wrapped in DistributedDataParallel with several
        processes."""
        return module

    def sync_buffers_(self, module):
        """Give ``module``'s buffers (BatchNorm statistics) the leader's values."""

    def close(self):
        """Give up the team's own process groups (after its last collective, or once a
        process has failed)."""


SOLO = Team()


class DistributedTeam(Team):
    """The processes of the default ``torch.distributed`` group, training on ``device``.

    Their collectives go through process groups of the team's own, made here (a collective
    of the default group) and destroyed by :meth:`close`: a process that fails closes their
    connections, which wakes the others waiting on it (see :mod:`.failures`), and the
    default group stays usable.
    """

    def __init__(self, device):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = torch.device(device)
        backend = dist.get_backend()
        # NCCL moves CUDA tensors only; gloo moves CPU tensors (and some CUDA ones, slowly).
        self.wire = self.device if backend == "nccl" else torch.device("cpu")
        self.group = dist.new_group(backend=backend)
        # Control messages (CPU tensors) go over gloo beside an NCCL group.
        self.control = dist.new_group(backend="gloo") if backend != "gloo" else self.group

    def close(self):
        for group in {self.group, self.control} - {None}:
            try:
                dist.destroy_process_group(group)
            except Exception:  # noqa: BLE001 - given up either way
                pass
        self.group = self.control = None

    def _route(self, tensor, collective):
        """Run ``collective(t, group)`` on ``tensor``, in place: CPU tensors over the gloo
        control group, others over the team's group on its device."""
        if tensor.device.type == "cpu":
            collective(tensor, self.control)
            return tensor
        moved = tensor.to(self.wire)
        collective(moved, self.group)
        if moved is not tensor:
            tensor.copy_(moved)
        return tensor

    def sum_(self, tensor):
        return self._reduce(tensor, torch.sum, dist.ReduceOp.SUM)

    def max_(self, tensor):
        return self._reduce(tensor, torch.amax, dist.ReduceOp.MAX)

    def _reduce(self, tensor, combine, op):
        """All-reduce ``tensor`` in place. Small CPU tensors (BatchNorm statistics, several
        per training step) are all-gathered and combined here, which gloo does faster than
        an all-reduce; every process combines the same parts in rank order, so all of them
        hold the same result."""
        if tensor.device.type != "cpu" or tensor.numel() > SMALL_REDUCE:
            return self._route(tensor, lambda t, g: dist.all_reduce(t, op, group=g))
        flat = tensor.reshape(-1).contiguous()
        parts = flat.new_empty(self.world * flat.numel())
        dist.all_gather_into_tensor(parts, flat, group=self.control)
        tensor.copy_(combine(parts.view(self.world, -1), dim=0).view(tensor.shape))
        return tensor

    def broadcast_(self, tensor, src=0):
        return self._route(tensor, lambda t, g: dist.broadcast(t, src, group=g))

    def any_process(self, flag):
        return bool(self.max_(torch.tensor([int(bool(flag))]))[0])

    def gather(self, tensor):
        flat = tensor.detach().cpu().reshape(-1).contiguous()
        parts = [torch.empty_like(flat) for _ in range(self.world)]
        dist.all_gather(parts, flat, group=self.control)
        return [part.view(tensor.shape) for part in parts]

    def gather_rows(self, local, n, out=None):
        # all_gather needs equal sizes: every shard is padded to the largest.
        size = -(-n // self.world)
        padded = local.new_zeros((size, *local.shape[1:]), device=self.wire)
        padded[:local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded, group=self.group)
        if out is None:
            out = torch.empty((n, *local.shape[1:]), dtype=local.dtype, device=local.device)
        for rank, part in enumerate(parts):
            start, stop = _bounds(n, rank, self.world)
            out[start:stop] = part[:stop - start]
        return out

    def share_bytes(self, data):
        size = torch.tensor([-1 if data is None else len(data)], dtype=torch.int64)
        dist.broadcast(size, 0, group=self.control)
        if int(size[0]) < 0:
            return None
        buffer = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.leader
                  else torch.empty(int(size[0]), dtype=torch.uint8))
        dist.broadcast(buffer, 0, group=self.control)
        return data if self.leader else buffer.numpy().tobytes()

    def gather_object(self, obj):
        found = [None] * self.world
        dist.all_gather_object(found, obj, group=self.control)
        return found

    def wrap(self, module):
        # Buffers are not broadcast from rank 0 at every forward: BatchNorm statistics come
        # from the whole batch (shared_norm), so they stay equal, and the trainer syncs
        # buffers once before each self-label step, for user modules' own buffers. The
        # graph is the same at every step, which lets DDP find parameters that a user's
        # backbone leaves unused once, in the first step, instead of at every step.
        ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, static_graph=True,
                                       process_group=self.group, **_NO_BUFFER_SYNC)

    def sync_buffers_(self, module):
        for buffer in module.buffers():
            self.broadcast_(buffer.data)


# torch >= 2.13 names the option forward_sync_buffers (and warns about the old name).
_NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False})


def _launched_by_torchrun():
    return (all(name in os.environ for name in TORCHRUN_VARIABLES)
            and int(os.environ["WORLD_SIZE"]) > 1)


def _world_size():
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1")) if _launched_by_torchrun() else 1


def process_device(device):
    """The device of this process: under data-parallel training "cuda" without an index
    is the process's own GPU (``LOCAL_RANK``), made the current CUDA device (NCCL needs
    it)."""
    if device.type != "cuda" or _world_size() <= 1:
        return device
    if device.index is None:
        rank = dist.get_rank() if dist.is_initialized() else int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count()))
        device = torch.device("cuda", local)
    torch.cuda.set_device(device)
    return device


def join_team(device):
    """The team of a fit on ``device``: the default process group when it has more than
    one process (initialised here, NCCL for CUDA and gloo otherwise, when torchrun's
    variables are set and the script did not), else one process."""
    if not dist.is_available():
        return SOLO
    if not dist.is_initialized():
        if not _launched_by_torchrun():
            return SOLO
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_world_size() == 1:
        return SOLO
    return DistributedTeam(device)


@contextmanager
def leader_warnings(team):
    """Warnings as usual in the leader; silenced in the other processes, whose warnings
    would repeat the leader's."""
    if team.leader:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def training_device(device):
    """The device to train on, from the ``device`` parameter ("auto": CUDA when present)."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'auto' or a torch device such as 'cpu' or 'cuda:0', got "
            f"{device!r}."
        ) from exc
    if resolved.type == "meta":
        raise ValueError(f"device={device!r} holds no data, so nothing can be trained on it; "
                         "use device='auto', 'cpu' or 'cuda'.")
    if not _available(resolved):
        name = {"cuda": "CUDA", "mps": "MPS (Apple GPUs)"}.get(resolved.type, resolved.type)
        raise ValueError(
            f"device={device!r} was requested but {name} is not available; use "
            "device='auto' or 'cpu'."
        )
    return resolved


def _available(device):
    """Whether torch can compute on ``device`` in this process."""
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.is_available()
    if device.type == "mps":
        return torch.backends.mps.is_available()
    try:    # other backends (xpu, ...): whether a tensor and a generator can be made there
        torch.empty(1, device=device)
        torch.Generator(device=device)
    except (RuntimeError, AssertionError, AttributeError):
        return False
    return True


def inference_device(trained_on):
    """Where a model trained on ``trained_on`` runs here: there if it exists, else the CPU."""
    device = torch.device(trained_on)
    if device.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        return torch.device("cpu")
    return device
