"""Sample sources: arrays, memory maps and torch Datasets read where they are, in their own
dtype, and fed to the network as scaled float32 batches on the device."""
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader

# Rows read at once by sequential passes (statistics, the neighbour space).
READ_ROWS = 4096
# A GPU holds the whole data set (in its own dtype) when it takes at most this share of
# the free device memory.
RESIDENT_SHARE = 0.25


def _shared_tensor(X):
    """A torch view of ``X``'s memory (no copy), or None when torch cannot view it."""
    try:
        with warnings.catch_warnings():
            # Read-only arrays (memory maps) are only ever read.
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(X)
    except (TypeError, ValueError, RuntimeError):
        return None     # non-native byte order, negative strides


class ArraySource:
    """Samples in a numpy array or memory map of any real dtype.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features) or (n_samples, c, h, w)
        Validated data, never modified or copied as a whole.
    """

    def __init__(self, X):
        self.X = X
        self.n_samples = X.shape[0]
        self.sample_shape = tuple(X.shape[1:])
        self.tensor = _shared_tensor(X)

    @property
    def nbytes(self):
        return self.X.nbytes

    def read(self, index):
        """float32 CPU tensor of the samples ``index`` (a slice or an int64 tensor)."""
        if self.tensor is not None:
            return self.tensor[index].to(torch.float32)
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        return torch.from_numpy(np.asarray(self.X[index], dtype=np.float32))

    def raw_sequential(self, batch_size=READ_ROWS):
        """All samples in order as unscaled float32 CPU batches."""
        return (self.read(slice(s, s + batch_size))
                for s in range(0, self.n_samples, batch_size))


def _collate(items):
    """Stack dataset items (tensors, or pairs whose first element is the sample)."""
    samples = [item[0] if isinstance(item, (tuple, list)) else item for item in items]
    return torch.stack([torch.as_tensor(s) for s in samples]).to(torch.float32)


class DatasetSource:
    """Samples of a map-style torch ``Dataset`` whose items are tensors or
    ``(tensor, target)`` pairs, read by ``DataLoader``s with ``num_workers`` workers.

    Images of shape ``(h, w)`` are read as ``(1, h, w)``.
    """

    tensor = None

    def __init__(self, dataset, num_workers=0):
        self.dataset = dataset
        self.num_workers = num_workers
        self.n_samples = len(dataset)
        first = _collate([dataset[0]])[0]
        self._add_channel = first.ndim == 2
        self.sample_shape = tuple(first.shape if first.ndim != 2 else (1, *first.shape))
        self.nbytes = None

    def _batch(self, batch):
        return batch[:, None] if self._add_channel else batch

    def read(self, index):
        """float32 CPU tensor of the samples ``index`` (a slice or an int64 tensor), read
        in this process."""
        if isinstance(index, slice):
            index = range(*index.indices(self.n_samples))
        return self._batch(_collate([self.dataset[int(i)] for i in index]))

    def raw_sequential(self, batch_size=READ_ROWS):
        """All samples in order as unscaled float32 CPU batches."""
        return self.loader([list(range(s, min(s + batch_size, self.n_samples)))
                            for s in range(0, self.n_samples, batch_size)])

    def loader(self, index_batches):
        """Batches of the samples in ``index_batches`` (a list of index lists), in order."""
        loader = DataLoader(self.dataset, batch_sampler=index_batches, collate_fn=_collate,
                            num_workers=self.num_workers)
        return (self._batch(b) for b in loader)


def as_source(X, num_workers=0):
    """An :class:`ArraySource` for an array, a :class:`DatasetSource` for a Dataset."""
    if isinstance(X, torch.utils.data.Dataset):
        return DatasetSource(X, num_workers)
    return ArraySource(X)


class Feeder:
    """Scaled float32 batches of a source on ``device``.

    Sample indices live on :attr:`index_device`: the training device when the data are
    there (or are CPU memory that torch reads in place), the CPU otherwise.
    """

    def __init__(self, source, scaling, device):
        self.source, self.scaling, self.device = source, scaling, torch.device(device)
        self.n_samples = source.n_samples
        self.resident = self._resident()
        self.index_device = self.device if self.resident is not None else torch.device("cpu")

    def _resident(self):
        raw = self.source.tensor
        if raw is None or self.device.type == "cpu":
            return raw if self.device.type == "cpu" else None
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if self.source.nbytes > RESIDENT_SHARE * free:
                return None
        return raw.to(self.device)

    def take(self, index):
        """The samples ``index`` (int64 tensor on :attr:`index_device`, or a slice)."""
        if self.resident is not None:
            raw = self.resident[index]
        else:
            raw = self.source.read(index.cpu() if isinstance(index, torch.Tensor) else index)
        return self.scaling.apply(raw.to(self.device, torch.float32, non_blocking=True))

    def batches(self, index_batches):
        """Batches for a list of index tensors, in order (a DataLoader reads Datasets)."""
        if isinstance(self.source, DatasetSource):
            lists = [b.tolist() for b in index_batches]
            return (self.scaling.apply(b.to(self.device)) for b in self.source.loader(lists))
        return (self.take(b) for b in index_batches)

    def sequential(self, batch_size=READ_ROWS, start=0, stop=None):
        """The samples ``[start, stop)`` (all by default) in order, ``batch_size`` at a
        time (the last batch may be shorter)."""
        stop = self.n_samples if stop is None else stop
        if isinstance(self.source, DatasetSource):
            return self.batches([torch.arange(s, min(s + batch_size, stop))
                                 for s in range(start, stop, batch_size)])
        return (self.take(slice(s, min(s + batch_size, stop)))
                for s in range(start, stop, batch_size))

    def rows(self, start, stop):
        """The samples ``[start, stop)`` as a feeder of their own (a process's shard)."""
        return FeederRows(self, start, stop)


class FeederRows:
    """The samples ``[start, stop)`` of a :class:`Feeder`, read in order: what sequential
    passes (embedding, the neighbour space) need of a feeder."""

    def __init__(self, feeder, start, stop):
        self.feeder, self.start, self.stop = feeder, start, stop
        self.n_samples = stop - start
        self.device, self.index_device = feeder.device, feeder.index_device

    def take(self, index):
        """The samples of the slice ``index`` of these rows."""
        first, last, _ = index.indices(self.n_samples)
        return self.feeder.take(slice(self.start + first, self.start + last))

    def sequential(self, batch_size=READ_ROWS):
        """These samples in order, ``batch_size`` at a time."""
        return self.feeder.sequential(batch_size, self.start, self.stop)
