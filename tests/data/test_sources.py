"""Samples read batch by batch from arrays, memory maps and Datasets, never copied whole."""
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from skselflabel import SelfLabelClusterer
from skselflabel._data.input_scaling import InputScaling
from skselflabel._data.sources import READ_ROWS, ArraySource, DatasetSource, Feeder
from feeding import feeder_of


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    X = (rng.random((120, 8, 8)) * 60).astype(np.uint8)
    X[:40, :4] += 150
    X[40:80, :, :4] += 150
    return X


@pytest.fixture
def memmap(images, tmp_path):
    path = tmp_path / "images.npy"
    np.save(path, images)
    return np.load(path, mmap_mode="r")


def test_array_source_reads_float32_batches_of_any_dtype():
    X = np.arange(12, dtype=">u2").reshape(6, 2)        # big-endian: torch cannot view it
    source = ArraySource(X)
    assert source.tensor is None
    batch = source.read(torch.tensor([4, 1]))
    assert batch.dtype == torch.float32 and batch.tolist() == [[8.0, 9.0], [2.0, 3.0]]
    u8 = ArraySource(np.zeros((3, 2), np.uint8))
    assert u8.tensor is not None and u8.read(slice(0, 2)).dtype == torch.float32


def test_memmaps_are_read_in_place(memmap):
    source = ArraySource(memmap[:, None])
    assert source.tensor.data_ptr() == memmap.__array_interface__["data"][0]
    feeder = Feeder(source, InputScaling(np.float32(0), np.float32(1)), "cpu")
    assert feeder.resident is source.tensor            # CPU training reads the map itself
    rows = torch.tensor([3, 100])
    torch.testing.assert_close(feeder.take(rows), torch.from_numpy(
        memmap[[3, 100]][:, None].astype(np.float32)))


class _Pairs(Dataset):
    def __init__(self, X):
        self.X = torch.from_numpy(X)

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i], 0                   # (sample, target), sample of shape (h, w)


def test_dataset_items_become_batches():
    X = np.random.default_rng(0).random((10, 4, 4)).astype(np.float32)
    source = DatasetSource(_Pairs(X))
    assert source.n_samples == 10 and source.sample_shape == (1, 4, 4)
    batches = list(source.loader([[2, 5], [7]]))
    torch.testing.assert_close(batches[0], torch.from_numpy(X[[2, 5]][:, None]))
    assert torch.cat(list(source.raw_sequential(3))).shape == (10, 1, 4, 4)


def test_uint8_memmap_dataset_and_float_array_fit_the_same(images, memmap, monkeypatch):
    kw = dict(n_clusters=3, max_epochs=3, random_state=0)
    widest = []
    apply = InputScaling.apply
    monkeypatch.setattr(InputScaling, "apply",
                        lambda self, t: widest.append(t.shape[0]) or apply(self, t))
    on_map = SelfLabelClusterer(**kw).fit(memmap)
    assert max(widest) <= READ_ROWS                     # never the whole set as float32
    as_float = SelfLabelClusterer(**kw).fit(images.astype(np.float32))
    np.testing.assert_array_equal(on_map.labels_, as_float.labels_)
    dataset = TensorDataset(torch.from_numpy(images.astype(np.float32)))
    on_data = SelfLabelClusterer(**kw).fit(dataset)
    np.testing.assert_array_equal(on_data.labels_, as_float.labels_)
    np.testing.assert_array_equal(on_data.predict(dataset), on_data.labels_)
    np.testing.assert_array_equal(on_map.transform(memmap), as_float.transform(images))


def test_dataset_with_worker_processes(images):
    dataset = _Pairs(images.astype(np.float32))
    kw = dict(n_clusters=3, max_epochs=2, random_state=0)
    ref = SelfLabelClusterer(**kw).fit(dataset)
    workers = SelfLabelClusterer(num_workers=2, **kw).fit(dataset)
    np.testing.assert_array_equal(ref.labels_, workers.labels_)


def test_dataset_errors():
    with pytest.raises(ValueError, match="at least 2"):
        SelfLabelClusterer(n_clusters=2).fit(TensorDataset(torch.zeros(1, 3)))
    with pytest.raises(ValueError, match="items must be vectors"):
        SelfLabelClusterer(n_clusters=2).fit(TensorDataset(torch.zeros(4, 2, 2, 2, 2)))


def test_a_feeder_reads_a_range_of_rows_as_a_feeder_of_its_own():
    X = np.arange(40, dtype=np.float32).reshape(10, 4)
    feeder = feeder_of(X)
    part = feeder.rows(3, 8)
    assert part.n_samples == 5 and part.device == feeder.device
    torch.testing.assert_close(torch.cat(list(part.sequential(2))), torch.from_numpy(X[3:8]))
    torch.testing.assert_close(part.take(slice(1, 3)), torch.from_numpy(X[4:6]))
    torch.testing.assert_close(torch.cat(list(feeder.sequential(3, 2, 9))),
                               torch.from_numpy(X[2:9]))
    dataset = Feeder(DatasetSource(TensorDataset(torch.from_numpy(X))),
                     InputScaling(np.float32(0.0), np.float32(1.0)), "cpu")
    torch.testing.assert_close(torch.cat(list(dataset.rows(3, 8).sequential(2))),
                               torch.from_numpy(X[3:8]))
