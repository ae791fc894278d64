"""A fit's checkpoint: the state it is handed, written so that a killed fit resumes exactly,
whether a file belongs to this fit, and how a fit resumes from it (the user guide's page on
several GPUs, "Checkpoints and resuming")."""
from dataclasses import replace
from datetime import datetime
import hashlib
import inspect
import os
from pathlib import Path
import time
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator

from .._data.input_scaling import InputScaling
from .._runtime.checkpoint_file import (CheckpointError, check_writable, checkpoint_path,
                                        read_checkpoint, remove_checkpoint, write_checkpoint)
from .events import HISTORY_COLUMNS, EpochRecord, empty_history, history_frame

# Format 2: history rows gained label_iterations, the labeller its duals (warm starts).
FORMAT, VERSION = "skselflabel SelfLabelClusterer fit", 2
# Parameters that change how a fit runs, not what it computes: a fit resumes under other
# values of these (a different device type is caught by the fingerprint's "device").
UNFINGERPRINTED = frozenset({"checkpoint", "verbose", "n_jobs", "num_workers", "device",
                             "warm_start"})
# Rows of the data hashed into the fingerprint, evenly spread.
SAMPLE_ROWS = 64
# A self-label step in the middle of an epoch writes a checkpoint when the last one is at
# least this old (long epochs); every epoch's end writes one anyway.
LABEL_UPDATE_SECONDS = 60.0
# What every process keeps of its own: augmentation draws, its part of the epoch's loss.
PER_PROCESS = ("augment_generator", "loss_sum")
REQUIRED = ("fingerprint", "training", "per_process", "network", "labels", "history",
            "earlier_history", "scaling", "written")


def _digest(*arrays):
    sha = hashlib.sha256()
    for array in arrays:
        sha.update(np.ascontiguousarray(array).tobytes())
    return sha.hexdigest()[:16]


def _tensor_bytes(tensor):
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def describe(value):
    """A parameter's value as a short string that changes when the value does."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, np.random.RandomState):
        return "a RandomState instance"
    if isinstance(value, torch.nn.Module):
        weights = [_tensor_bytes(t) for t in value.state_dict().values()]
        return f"{type(value).__qualname__} module, weights sha256 {_digest(*weights)}"
    if isinstance(value, BaseEstimator):
        params = value.get_params(deep=False)
        return f"{type(value).__name__}(" + ", ".join(
            f"{k}={describe(v)}" for k, v in sorted(params.items())) + ")"
    if inspect.isroutine(value) or inspect.isclass(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', value)}"
    if callable(value):
        return f"{type(value).__qualname__} {value!r}"[:300]
    array = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value)
    return f"array of shape {array.shape}, {array.dtype}, sha256 {_digest(array)}"


def _data_dtype(source):
    X = getattr(source, "X", None)
    return str(X.dtype) if X is not None else f"{type(source.dataset).__qualname__} items"


def fingerprint(config, data, team):
    """What must match for a checkpoint to resume this fit: the parameters that shape its
    result, the data (:func:`data_fingerprint`), the number of processes and the device
    type."""
    found = {f"parameter {name}": describe(value)
             for name, value in sorted(config.params.items()) if name not in UNFINGERPRINTED}
    found.update(data_fingerprint(data))
    found.update({"processes": str(team.world), "device type": config.device.type})
    return found


def data_fingerprint(data):
    """The data as a fingerprint sees them: their shape, dtype and a hash of
    :data:`SAMPLE_ROWS` rows spread over them."""
    n = data.n_samples
    rows = np.unique(np.linspace(0, n - 1, min(n, SAMPLE_ROWS)).round().astype(np.int64))
    sample = data.source.read(torch.from_numpy(rows))
    return {"data shape": str((n, *data.sample_shape)),
            "data dtype": _data_dtype(data.source),
            "data sample": _digest(sample.numpy())}


def _on_cpu(obj):
    """``obj`` with every tensor in it copied to the CPU (a file that loads anywhere)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {key: _on_cpu(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(value) for value in obj)
    return obj


def _history_rows(records):
    return [[int(r.epoch), float(r.loss), float(r.label_change), float(r.label_error),
             int(r.label_iterations), float(r.seconds), float(r.label_moved)]
            for r in records]


class FitCheckpoint:
    """The ``checkpoint`` file of one fit.

    Parameters
    ----------
    checkpoint : str or path-like
        The file.
    fingerprint : dict of str
        This fit's :func:`fingerprint`.
    team : skselflabel._runtime.processes.Team
        The processes of the fit; the leader reads and writes the file.
    device : torch.device
        The training device (its RNG state is kept for user modules that draw from it).
    """

    def __init__(self, checkpoint, fingerprint, team, device):
        self.path = Path(os.fspath(checkpoint))
        self.fingerprint, self.team, self.device = fingerprint, team, device
        self.last_write = time.monotonic()
        self.history = self.network = None
        self.saved = None               # the state read by load(), if the file had one

    def _read(self):
        """The file's bytes or None, read by the leader and shared, once the leader has found
        that the path can be written; the leader's errors are raised in every process."""
        message = None
        if self.team.leader:
            try:
                path = checkpoint_path(self.path)
                check_writable(path)
                message = b"F" + path.read_bytes() if path.exists() else b"N"
            except (OSError, ValueError) as exc:
                message = b"E" + str(exc).encode()
        message = self.team.share_bytes(message)
        if message[:1] == b"E":
            raise ValueError(message[1:].decode())
        return None if message == b"N" else message[1:]

    def load(self):
        """The checkpoint's state if the file exists, None if not (kept as :attr:`saved`);
        a CheckpointError if it cannot be used (naming what differs when it comes from a
        different fit)."""
        data = self._read()
        if data is None:
            return None
        state = read_checkpoint(data, self.path)
        where = f"The checkpoint file {str(self.path)!r}"
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"{where} does not hold a SelfLabelClusterer fit.")
        if state.get("version") != VERSION:
            raise CheckpointError(f"{where} was written in checkpoint format "
                                  f"{state.get('version')!r}; this version of skselflabel "
                                  f"reads format {VERSION}. Delete it to train afresh.")
        missing = [key for key in REQUIRED if key not in state]
        if missing:
            raise CheckpointError(f"{where} lacks {', '.join(missing)}.")
        self._check_fingerprint(state["fingerprint"], where)
        self.saved = state
        return state

    def _check_fingerprint(self, found, where):
        differences = [
            f"{key}: {found.get(key, '(absent)')} in the checkpoint, "
            f"{self.fingerprint.get(key, '(absent)')} now"
            for key in sorted(set(found) | set(self.fingerprint))
            if found.get(key) != self.fingerprint.get(key)]
        if differences:
            raise CheckpointError(
                f"{where} was written by a different fit, so it was neither used nor "
                "overwritten. " + "; ".join(differences) + ". Pass another checkpoint "
                "path, delete the file to train afresh, or fit as before to resume it.")

    def follow(self, history, network):
        """Save, from now on, the rows of ``history`` and ``network`` (its weights, and
        the input scaling and earlier ``history_`` it came with)."""
        self.history, self.network = history, network

    def due(self):
        """Whether a self-label step in the middle of an epoch should write a checkpoint
        (agreed by every process)."""
        return self.team.any_process(time.monotonic() - self.last_write
                                     >= LABEL_UPDATE_SECONDS)

    def save(self, training, labels):
        """Write the fit's state: the trainer's ``training`` state (each process's own
        parts gathered) and the self-labels, beside the followed network and history
        (every process calls this)."""
        training = dict(training)
        own = {name: self.team.gather(torch.as_tensor(training.pop(name)))
               for name in PER_PROCESS}
        own["torch_rng"] = self.team.gather(torch.get_rng_state())
        if self.device.type == "cuda":
            own["cuda_rng"] = self.team.gather(torch.cuda.get_rng_state(self.device))
        if self.team.leader:
            write_checkpoint(self.path, self._payload(training, own, labels))
        self.last_write = time.monotonic()

    def _payload(self, training, own, labels):
        scaling = self.network.scaling
        return {
            "format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint,
            "written": datetime.now().isoformat(sep=" ", timespec="seconds"),
            "training": _on_cpu(training), "per_process": own,
            "network": {"backbone": _on_cpu(self.network.backbone.state_dict()),
                        "heads": _on_cpu(self.network.heads.state_dict())},
            "labels": labels.to(torch.int32).cpu(),
            "history": _history_rows(self.history.records),
            "earlier_history": self.network.history.reindex(columns=HISTORY_COLUMNS)
                                                   .to_numpy(dtype=float).tolist(),
            "scaling": {"mean": torch.from_numpy(scaling.mean),
                        "scale": torch.from_numpy(scaling.scale),
                        "transform": (None if scaling.transform is None
                                      else torch.from_numpy(scaling.transform)),
                        "n_lifted": scaling.n_lifted},
        }

    def remove(self):
        """Delete the file: the fit it belongs to has completed."""
        if self.team.leader:
            remove_checkpoint(self.path)

    def restore_network(self, network):
        """``network`` with the saved weights (loaded into its modules), input scaling and
        earlier ``history_``."""
        state = self.saved
        try:
            network.backbone.load_state_dict(state["network"]["backbone"])
            network.heads.load_state_dict(state["network"]["heads"])
        except RuntimeError as exc:
            raise CheckpointError(f"The checkpoint's network does not fit this fit's: {exc}"
                                  ) from None
        rows = state["earlier_history"]
        history = empty_history() if not rows else history_frame(rows)
        scaling = state["scaling"]
        transform = scaling.get("transform")
        return replace(network, scaling=InputScaling(
            scaling["mean"].numpy(), scaling["scale"].numpy(),
            None if transform is None else transform.numpy(), scaling.get("n_lifted", 0)),
            history=history)

    def restore_training(self, trainer, labels, history):
        """Continue ``trainer`` (its ``labels`` and ``history``) where the saved state left
        off; this process takes its own generator states and partial loss."""
        state = self.saved
        own = {name: parts[self.team.rank] for name, parts in state["per_process"].items()}
        if tuple(state["labels"].shape) != tuple(labels.shape):
            raise CheckpointError(f"The checkpoint's self-labels have shape "
                                  f"{tuple(state['labels'].shape)}, not {tuple(labels.shape)}.")
        trainer.restore({**state["training"], **{name: own[name] for name in PER_PROCESS}})
        labels.copy_(state["labels"].to(labels.device, torch.int64))
        history.records = [_record(r) for r in state["history"]]
        torch.set_rng_state(own["torch_rng"])
        if "cuda_rng" in own:
            torch.cuda.set_rng_state(own["cuda_rng"], labels.device)


def _record(row):
    """An :class:`EpochRecord` from a row of :func:`_history_rows` (rows written before
    ``label_moved`` existed have six values: NaN there, as in ``history_``)."""
    epoch, loss, change, error, iterations, seconds, *moved = row
    return EpochRecord(int(epoch), loss, change, error, int(iterations), seconds,
                       moved[0] if moved else float("nan"))


def open_checkpoint(config, data, team):
    """The fit's :class:`FitCheckpoint` (None without ``checkpoint``), with the state it
    resumes from loaded (and a warning that it resumes) when the file has one."""
    if config.checkpoint is None:
        return None
    checkpoint = FitCheckpoint(config.checkpoint, fingerprint(config, data, team), team,
                               config.device)
    saved = checkpoint.load()
    if saved is not None:
        warnings.warn(resume_message(saved, checkpoint.path, config), UserWarning,
                      stacklevel=5)
    return checkpoint


def resume_message(state, path, config):
    """What a fit that resumes from ``state`` says."""
    training = state["training"]
    where = (f"after batch {training['epoch_steps']} of {config.steps_per_epoch} of epoch "
             f"{training['epoch']} of {config.max_epochs}" if not training["finished"]
             else "after its last epoch (the final self-label step is left)")
    return (f"fit resumes from the checkpoint {str(path)!r} (written "
            f"{state['written']}): {where}.")
