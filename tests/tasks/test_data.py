"""Task datasets: IDX parsing, CIFAR binaries, synthetic data, subsets of any dataset, loaders that return the wrong thing."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest
import torch

from kasrl.errors import ConfigError, DatasetError
from kasrl.tasks import data
from kasrl.tasks.data import DEBIAN_FASHION_MNIST, DatasetSpec, load_dataset, read_idx, subset_indices

HAS_DEBIAN = (DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").is_file()
needs_debian = pytest.mark.skipif(not HAS_DEBIAN, reason=f"Debian's dataset-fashion-mnist is not installed ({DEBIAN_FASHION_MNIST})")


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fashion(folder, n_train=30, n_test=20, gz=False):
    """Fake Fashion-MNIST IDX files: image i is filled with the value i % 256."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.broadcast_to((np.arange(n) % 256)[:, None, None], (n, 28, 28))
        labels = rng.integers(0, 10, n)
        for kind, arr, dims in (("images", images, 3), ("labels", labels, 1)):
            name = f"{prefix}-{kind}-idx{dims}-ubyte"
            raw = _idx_bytes(arr)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
    return folder


@needs_debian
def test_reads_the_real_debian_files():
    labels = read_idx(DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    images = read_idx(DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz")
    assert images.shape == (10000, 28, 28)


@needs_debian
def test_default_fashion_mnist_loads_from_debian():
    splits = load_dataset(DatasetSpec("fashion_mnist", train_size=200, test_size=100))
    x, y = splits.train.tensors
    assert x.shape == (200, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert splits.name == "fashion_mnist" and str(DEBIAN_FASHION_MNIST) in splits.source
    assert len(splits.test) == 100 and splits.num_classes == 10 and splits.image_size == (28, 28)


@pytest.mark.parametrize("gz", [False, True])
def test_reads_raw_and_gzipped_idx_from_an_explicit_path(tmp_path, gz):
    _write_fashion(tmp_path, gz=gz)
    splits = load_dataset(DatasetSpec("fashion_mnist", {"path": str(tmp_path)}))
    assert len(splits.train) == 30 and len(splits.test) == 20 and str(tmp_path) in splits.source


def test_finds_a_torchvision_style_root(tmp_path):
    _write_fashion(tmp_path / "FashionMNIST" / "raw")
    splits = load_dataset(DatasetSpec("fashion_mnist", {"path": str(tmp_path)}, train_size=5))
    assert "FashionMNIST/raw" in splits.source and len(splits.train) == 5


def test_normalises_and_resizes(tmp_path):
    _write_fashion(tmp_path)
    splits = load_dataset(DatasetSpec("fashion_mnist", {"path": str(tmp_path), "resize": [14, 14]}))
    x = splits.train.tensors[0]
    assert x.shape == (30, 1, 14, 14) and splits.image_size == (14, 14)
    expected = (3 / 255 - 0.2860) / 0.3530  # image 3 is filled with 3, resizing keeps constants
    assert torch.allclose(x[3], torch.full_like(x[3], expected), atol=1e-5)


def test_truncated_idx_file_is_named(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(_idx_bytes(np.zeros((4, 28, 28)))[:-10])
    with pytest.raises(DatasetError, match=re.escape(f"{path} is truncated: dims [4, 28, 28] need 3152 bytes, file has 3142")):
        read_idx(path)


def test_truncated_gzip_file_is_named(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(np.zeros(100)))[:-12])
    with pytest.raises(DatasetError, match=re.escape(f"cannot read {path}")):
        read_idx(path)


def test_bad_magic_number_is_named(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x01\x02\x08\x01" + bytes(8))
    with pytest.raises(DatasetError, match=re.escape(f"{path} is not an IDX file (bad magic number 01020801)")):
        read_idx(path)


def test_explicit_missing_path_errors_without_fallback(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=re.escape(f"`task.dataset.kwargs.path`: folder {missing} does not exist")):
        load_dataset(DatasetSpec("fashion_mnist", {"path": str(missing)}))


def test_explicit_empty_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match=re.escape(f"`task.dataset.kwargs.path`: no Fashion-MNIST IDX files in {tmp_path}")):
        load_dataset(DatasetSpec("fashion_mnist", {"path": str(tmp_path)}))


def test_absent_debian_files_are_an_error_at_the_dataset_level(tmp_path, monkeypatch):
    """The loader itself never falls back: the task's ``fallback`` does (tests/tasks/test_fallback.py)."""
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(DatasetError, match=re.escape(f"Fashion-MNIST not found in {tmp_path / 'absent'}")):
        load_dataset(DatasetSpec("fashion_mnist", train_size=10, test_size=10))
    assert "Fashion-MNIST not found" in data.dataset_missing(DatasetSpec("fashion_mnist"))


def test_digits_sizes_larger_than_the_split_fail():
    with pytest.raises(DatasetError, match=re.escape("`task.dataset.train_size` is 5000 but digits has only 1438 images")):
        load_dataset(DatasetSpec("digits", train_size=5000))


def test_subsets_are_deterministic_by_seed():
    a = load_dataset(DatasetSpec("digits", train_size=100, test_size=50, seed=1))
    b = load_dataset(DatasetSpec("digits", train_size=100, test_size=50, seed=1))
    c = load_dataset(DatasetSpec("digits", train_size=100, test_size=50, seed=2))
    assert torch.equal(a.train_indices, b.train_indices) and torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert torch.equal(a.test_indices, b.test_indices)
    assert not torch.equal(a.train_indices, c.train_indices)
    assert len(set(a.train_indices.tolist())) == 100


def test_subset_indices_all_when_size_is_none():
    g = torch.Generator().manual_seed(0)
    assert subset_indices(5, None, g).tolist() == [0, 1, 2, 3, 4]
    assert subset_indices(5, 9, g).tolist() == [0, 1, 2, 3, 4]


def _write_cifar(folder, files, label_bytes, n=4):
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        rows = np.zeros((n, label_bytes + 3072), dtype=np.uint8)
        rows[:, label_bytes - 1] = np.arange(n) + 3  # the (fine) label
        rows[:, label_bytes:] = 128
        (folder / f).write_bytes(rows.tobytes())


def test_cifar10_binary(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"], 1)
    splits = load_dataset(DatasetSpec("cifar10", {"path": str(tmp_path)}))
    x, y = splits.train.tensors
    assert x.shape == (20, 3, 32, 32) and y[:4].tolist() == [3, 4, 5, 6] and len(splits.test) == 4
    assert splits.in_channels == 3 and splits.num_classes == 10


def test_cifar100_binary_uses_fine_labels(tmp_path):
    _write_cifar(tmp_path, ["train.bin", "test.bin"], 2)
    splits = load_dataset(DatasetSpec("cifar100", {"path": str(tmp_path)}))
    assert splits.train.tensors[1].tolist() == [3, 4, 5, 6] and splits.num_classes == 100


def test_truncated_cifar_file_is_named(tmp_path):
    _write_cifar(tmp_path, ["train.bin", "test.bin"], 2)
    (tmp_path / "test.bin").write_bytes(bytes(3000))
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'test.bin'} is truncated or not a CIFAR binary file")):
        load_dataset(DatasetSpec("cifar100", {"path": str(tmp_path)}))


def test_cifar_needs_a_path():
    with pytest.raises(ConfigError, match=re.escape("`task.dataset.kwargs.path` is required for 'cifar10'")):
        DatasetSpec("cifar10")


def test_unknown_dataset_suggests():
    with pytest.raises(ConfigError, match=re.escape("`task.dataset.target`: 'fashion-mnist' is neither a built-in dataset (") ) as e:
        DatasetSpec("fashion-mnist")
    assert str(e.value).endswith("nor an import path 'package.module:loader'; did you mean 'fashion_mnist'?")


# -- synthetic data ------------------------------------------------------------------------------------
def test_synthetic_data_is_random_images_of_the_given_shape_seeded():
    """Synthetic data has the asked shape and classes and follows its seed."""
    spec = DatasetSpec("synthetic", {"image_shape": [3, 16, 12], "num_classes": 5}, train_size=40, test_size=10, seed=3)
    a, b = load_dataset(spec), load_dataset(spec)
    x, y = a.train.tensors
    assert x.shape == (40, 3, 16, 12) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert a.test.tensors[0].shape == (10, 3, 16, 12) and int(y.min()) >= 0 and int(y.max()) < 5
    assert (a.num_classes, a.in_channels, a.image_size, a.name) == (5, 3, (16, 12), "synthetic")
    assert torch.equal(x, b.train.tensors[0]) and torch.equal(y, b.train.tensors[1])  # seeded
    other = load_dataset(DatasetSpec("synthetic", {"image_shape": [3, 16, 12], "num_classes": 5}, train_size=40, test_size=10, seed=4))
    assert not torch.equal(x, other.train.tensors[0])
    assert "no signal" in a.source and abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1


def test_synthetic_defaults_and_resize():
    """Synthetic defaults: 1024/256 images of 3x32x32, 10 classes; resize applies."""
    splits = load_dataset(DatasetSpec("synthetic"))
    assert splits.train.tensors[0].shape == (1024, 3, 32, 32) and len(splits.test) == 256 and splits.num_classes == 10
    small = load_dataset(DatasetSpec("synthetic", {"resize": [8, 8]}, train_size=4, test_size=2))
    assert small.image_size == (8, 8) and data.dataset_info(DatasetSpec("synthetic", {"resize": [8, 8]})).image_size == (8, 8)
    assert data.dataset_info(DatasetSpec("synthetic", {"image_shape": [1, 28, 28], "num_classes": 3})).in_channels == 1


@pytest.mark.parametrize("target, kwargs, message", [
    ("digits", {"num_classes": 4}, "unknown key `task.dataset.kwargs.num_classes` for dataset 'digits'; known: resize"),
    ("synthetic", {"image_shape": [3, 32]}, "`task.dataset.kwargs.image_shape` must be [channels, height, width], all at least 1"),
    ("synthetic", {"image_shape": [0, 32, 32]}, "`task.dataset.kwargs.image_shape` must be [channels, height, width]"),
    ("synthetic", {"num_classes": 1}, "`task.dataset.kwargs.num_classes` must be an integer of at least 2, got 1"),
])
def test_synthetic_fields_are_checked(target, kwargs, message):
    """The synthetic loader's arguments are checked, and refused by loaders that do not take them."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        DatasetSpec(target, kwargs)
