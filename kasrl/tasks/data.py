"""Task datasets, read from local files only (nothing is ever downloaded).

=================  ==================================================================
name               where the files come from
=================  ==================================================================
``fashion_mnist``  IDX files (``train-images-idx3-ubyte[.gz]`` ...), searched in
                   ``path``, then ``path/FashionMNIST/raw`` (a torchvision root); with
                   no ``path``: Debian's ``/usr/share/datasets/fashion-mnist/``, and
                   if that is absent too, scikit-learn's digits resized to 28x28
                   (announced in one line on stderr)
``digits``         scikit-learn's ``load_digits`` (8x8, 1797 images; every fifth
                   image is held out for testing)
``cifar10``        the binary version: ``path`` is ``cifar-10-batches-bin`` or its parent
``cifar100``       the binary version: ``path`` is ``cifar-100-binary`` or its parent
                   (fine labels)
``synthetic``      no files: random N(0, 1) images of ``image_shape`` and uniform labels
                   over ``num_classes``, drawn from ``seed``. For latency-only searches
                   (a GPU task needs no dataset to time kernels); its labels carry no
                   signal, so accuracies on it are chance and mean nothing
=================  ==================================================================

Images come back as float32 ``[N, C, H, W]``, normalised with the dataset's
channel mean and standard deviation; labels as int64 ``[N]``.

>>> splits = load_dataset(DatasetSpec("digits", train_size=100, test_size=50, resize=(28, 28)))
>>> splits.train.tensors[0].shape, splits.num_classes, splits.image_size
(torch.Size([100, 1, 28, 28]), 10, (28, 28))
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from kasrl.errors import ConfigError, DatasetError

__all__ = [
    "DatasetSpec",
    "DatasetSplits",
    "DatasetInfo",
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "load_dataset",
    "dataset_info",
    "read_idx",
    "subset_indices",
    "find_fashion_mnist",
    "check_dataset_files",
]

log = logging.getLogger(__name__)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the IDX files."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset looks like, known without reading it."""

    in_channels: int
    """Channels per image."""
    num_classes: int
    """Number of label classes."""
    image_size: tuple[int, int]
    """Native height and width in pixels."""
    mean: tuple[float, ...]
    """Per-channel mean of the [0, 1] pixels, used to normalise."""
    std: tuple[float, ...]
    """Per-channel standard deviation of the [0, 1] pixels, used to normalise."""
    needs_path: bool
    """Whether ``path`` is required."""


DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(1, 10, (28, 28), (0.2860,), (0.3530,), needs_path=False),
    "digits": DatasetInfo(1, 10, (8, 8), (0.3053,), (0.3759,), needs_path=False),
    "cifar10": DatasetInfo(3, 10, (32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), needs_path=True),
    "cifar100": DatasetInfo(3, 100, (32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), needs_path=True),
    # the default shape; ``image_shape`` and ``num_classes`` change it (already N(0, 1): mean 0, std 1)
    "synthetic": DatasetInfo(3, 10, (32, 32), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), needs_path=False),
}
"""Dataset name -> its shape, classes and normalisation constants."""


@dataclass(frozen=True)
class DatasetSpec:
    """Which data a task trains and tests on."""

    name: str = "fashion_mnist"
    """Dataset name, a key of :data:`DATASETS`."""
    path: str | None = None
    """Folder holding the files (``~`` and ``$VARS`` expanded); None = the default locations."""
    train_size: int | None = None
    """Training images drawn (None = all)."""
    test_size: int | None = None
    """Test images drawn (None = all)."""
    resize: tuple[int, int] | None = None
    """Height and width in pixels to resize images to (None = native size)."""
    seed: int = 0
    """Seed that picks the training and test subsets (``synthetic``: that draws the images and labels)."""
    image_shape: tuple[int, int, int] | None = None
    """``[channels, height, width]`` of the ``synthetic`` images (None: [3, 32, 32]); only for ``synthetic``."""
    num_classes: int | None = None
    """Label classes of the ``synthetic`` data (None: 10); only for ``synthetic``."""

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            close = difflib.get_close_matches(str(self.name), DATASETS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"`task.dataset.name`: unknown dataset {self.name!r}{hint}; known: {', '.join(DATASETS)}")
        for field in ("train_size", "test_size"):
            v = getattr(self, field)
            if v is not None and v < 1:
                raise ConfigError(f"`task.dataset.{field}` must be at least 1 (or null for all), got {v}")
        if self.resize is not None and (len(self.resize) != 2 or min(self.resize) < 1):
            raise ConfigError(f"`task.dataset.resize` must be [height, width] with both at least 1, got {list(self.resize)}")
        for field in ("image_shape", "num_classes"):
            if getattr(self, field) is not None and self.name != "synthetic":
                raise ConfigError(f"`task.dataset.{field}` is only for the 'synthetic' dataset, not {self.name!r}; remove it")
        if self.image_shape is not None and (len(self.image_shape) != 3 or min(self.image_shape) < 1):
            raise ConfigError(f"`task.dataset.image_shape` must be [channels, height, width], all at least 1, got {list(self.image_shape)}")
        if self.num_classes is not None and self.num_classes < 2:
            raise ConfigError(f"`task.dataset.num_classes` must be at least 2, got {self.num_classes}")
        if DATASETS[self.name].needs_path and not self.path:
            raise ConfigError(f"`task.dataset.path` is required for {self.name!r} (the folder holding its binary-version files)")

    @property
    def resolved_path(self) -> Path | None:
        """``path`` with ``~`` and environment variables expanded."""
        return Path(os.path.expanduser(os.path.expandvars(self.path))) if self.path else None


@dataclass(frozen=True)
class DatasetSplits:
    """Training and test data, ready for a ``DataLoader``."""

    train: TensorDataset
    """Training images float32 ``[N, C, H, W]`` and labels int64 ``[N]``."""
    test: TensorDataset
    """Test images and labels, as ``train``."""
    num_classes: int
    """Number of label classes."""
    in_channels: int
    """Channels per image."""
    image_size: tuple[int, int]
    """Height and width in pixels after any resize."""
    name: str
    """The dataset actually loaded (``digits`` after a Fashion-MNIST fallback)."""
    source: str
    """Where the data came from, in words (files or package, and any fallback)."""
    train_indices: torch.Tensor
    """Indices of the drawn training images in the full training split."""
    test_indices: torch.Tensor
    """Indices of the drawn test images in the full test split."""


def dataset_info(spec: DatasetSpec) -> DatasetInfo:
    """The shape and classes ``spec`` yields, with ``image_size`` after any resize.

    A Fashion-MNIST fallback to digits yields the same shape, so this never
    needs to read files.
    """
    info = DATASETS[spec.name]
    if spec.name == "synthetic" and (spec.image_shape is not None or spec.num_classes is not None):
        c, h, w = spec.image_shape or (info.in_channels, *info.image_size)
        info = DatasetInfo(c, spec.num_classes or info.num_classes, (h, w), (0.0,) * c, (1.0,) * c, needs_path=False)
    if spec.resize is None:
        return info
    return DatasetInfo(info.in_channels, info.num_classes, tuple(spec.resize), info.mean, info.std, info.needs_path)


# --------------------------------------------------------------------- IDX files

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"cannot read {path}: {e}") from e


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or gzipped) into an array.

    The header is two zero bytes, a type code, the number of dimensions and
    one big-endian uint32 size per dimension; the data follow, big-endian.

    Raises:
        DatasetError: naming the file, when it is missing, malformed or truncated.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DatasetError(f"{path} is malformed: header needs {header} bytes for {ndim} dimensions, file has {len(data)}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise DatasetError(f"{path} is {what}: dims {list(dims)} need {expected} bytes, file has {len(data)}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _idx_files_in(folder: Path) -> dict[str, Path] | None:
    found = {}
    for key, stem in _FASHION_FILES.items():
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def find_fashion_mnist(path: str | Path | None) -> dict[str, Path] | None:
    """The four Fashion-MNIST IDX files, or None when none of the folders has them.

    Searches ``path``, then ``path/FashionMNIST/raw``; with no ``path``,
    :data:`DEBIAN_FASHION_MNIST`.
    """
    folders = [Path(path), Path(path) / "FashionMNIST" / "raw"] if path else [DEBIAN_FASHION_MNIST]
    for folder in folders:
        files = _idx_files_in(folder)
        if files is not None:
            return files
    return None


def _load_fashion(files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    arrays = {key: read_idx(p) for key, p in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(
                f"{files[f'{split}_images']} and {files[f'{split}_labels']} do not match: "
                f"images {list(images.shape)}, labels {list(labels.shape)}"
            )
    return (arrays["train_images"][:, None], arrays["train_labels"], arrays["test_images"][:, None], arrays["test_labels"])


# ------------------------------------------------------------------ other sources


def _load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)[:, None]
    test = np.arange(len(images)) % 5 == 4
    return images[~test], d.target[~test], images[test], d.target[test]


_CIFAR = {
    # name: (folder name, train files, test files, label bytes, which label byte)
    "cifar10": ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"], 1, 0),
    "cifar100": ("cifar-100-binary", ["train.bin"], ["test.bin"], 2, 1),
}


def _read_cifar_bin(path: Path, label_bytes: int, label_at: int) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + 3072
    data = _read_bytes(path)
    if not data or len(data) % record:
        raise DatasetError(f"{path} is truncated or not a CIFAR binary file: {len(data)} bytes is not a multiple of {record}")
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), rows[:, label_at].astype(np.int64)


def _cifar_folder(name: str, root: Path) -> Path:
    folder_name, train_files, test_files, _, _ = _CIFAR[name]
    if not root.is_dir():
        raise DatasetError(f"`task.dataset.path`: folder {root} does not exist (it should hold the {name} binary version)")
    folder = root if (root / train_files[0]).is_file() else root / folder_name
    missing = [f for f in train_files + test_files if not (folder / f).is_file()]
    if missing:
        raise DatasetError(f"`task.dataset.path`: {root} has no {name} binary files (missing {missing[0]} in {folder})")
    return folder


def _load_cifar(name: str, root: Path) -> tuple[tuple[np.ndarray, ...], Path]:
    _, train_files, test_files, label_bytes, label_at = _CIFAR[name]
    folder = _cifar_folder(name, root)
    parts = {}
    for split, files in (("train", train_files), ("test", test_files)):
        chunks = [_read_cifar_bin(folder / f, label_bytes, label_at) for f in files]
        parts[split] = (np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]))
    return (*parts["train"], *parts["test"]), folder


def _missing_fashion(path: Path) -> DatasetError:
    if not path.is_dir():
        return DatasetError(f"`task.dataset.path`: folder {path} does not exist (it should hold the Fashion-MNIST IDX files)")
    return DatasetError(f"`task.dataset.path`: no Fashion-MNIST IDX files in {path} or {path / 'FashionMNIST' / 'raw'}")


def check_dataset_files(spec: DatasetSpec) -> None:
    """Check that the files ``spec`` needs are there, without reading them.

    Raises:
        DatasetError: naming ``task.dataset.path`` and the folder.
    """
    if spec.name in _CIFAR:
        _cifar_folder(spec.name, spec.resolved_path)
    elif spec.name == "fashion_mnist" and spec.path and find_fashion_mnist(spec.resolved_path) is None:
        raise _missing_fashion(spec.resolved_path)


# ------------------------------------------------------------------ subsets, tensors


def subset_indices(n: int, size: int | None, generator: torch.Generator) -> torch.Tensor:
    """``size`` distinct indices below ``n`` drawn with ``generator``, in ascending order.

    ``size=None`` (or ``size >= n``) gives every index.
    """
    if size is None or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:size].sort().values


def _check_size(spec: DatasetSpec, field: str, size: int | None, available: int, clamp: bool) -> int | None:
    if size is None or size <= available:
        return size
    if clamp:
        return available
    raise DatasetError(f"`task.dataset.{field}` is {size} but {spec.name} has only {available} images in that split")


def _to_tensor(images: np.ndarray, info: DatasetInfo, resize: tuple[int, int] | None) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).div_(255.0)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    x = (x - mean) / std
    if resize is not None and tuple(x.shape[-2:]) != tuple(resize):
        x = F.interpolate(x, size=tuple(resize), mode="bilinear", align_corners=False)
    return x.contiguous()


def _tensor_dataset(
    images: np.ndarray, labels: np.ndarray, idx: torch.Tensor, info: DatasetInfo, resize: tuple[int, int] | None
) -> TensorDataset:
    rows = idx.numpy()
    return TensorDataset(_to_tensor(images[rows], info, resize), torch.as_tensor(labels[rows], dtype=torch.int64))


def _read_source(spec: DatasetSpec) -> tuple[str, tuple[np.ndarray, ...], str, bool]:
    """Returns (dataset loaded, arrays, source text, whether this is a fallback)."""
    if spec.name == "digits":
        return "digits", _load_digits(), "scikit-learn load_digits", False
    if spec.name == "fashion_mnist":
        files = find_fashion_mnist(spec.resolved_path)
        if files is not None:
            return "fashion_mnist", _load_fashion(files), f"IDX files in {files['train_images'].parent}", False
        if spec.path:
            raise _missing_fashion(spec.resolved_path)
        return "digits", _load_digits(), f"scikit-learn load_digits (Fashion-MNIST not found in {DEBIAN_FASHION_MNIST})", True
    arrays, folder = _load_cifar(spec.name, spec.resolved_path)
    return spec.name, arrays, f"binary files in {folder}", False


#: Images drawn for ``synthetic`` when ``train_size`` / ``test_size`` are null (it has no "all").
SYNTHETIC_SIZES = {"train_size": 1024, "test_size": 256}


def _load_synthetic(spec: DatasetSpec) -> DatasetSplits:
    """Random images and labels: a dataset that costs nothing to have, for timing (see the module docstring)."""
    info = dataset_info(dataclasses.replace(spec, resize=None))
    g = torch.Generator().manual_seed(spec.seed)
    splits = []
    for field in ("train_size", "test_size"):
        n = getattr(spec, field) or SYNTHETIC_SIZES[field]
        x = torch.randn(n, info.in_channels, *info.image_size, generator=g)
        if spec.resize is not None and tuple(x.shape[-2:]) != tuple(spec.resize):
            x = F.interpolate(x, size=tuple(spec.resize), mode="bilinear", align_corners=False).contiguous()
        splits.append(TensorDataset(x, torch.randint(info.num_classes, (n,), generator=g)))
    train, test = splits
    return DatasetSplits(
        train=train,
        test=test,
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        image_size=tuple(train.tensors[0].shape[-2:]),
        name="synthetic",
        source=f"synthetic: random N(0, 1) images and uniform labels from seed {spec.seed} (no signal: accuracy is chance)",
        train_indices=torch.arange(len(train)),
        test_indices=torch.arange(len(test)),
    )


def load_dataset(spec: DatasetSpec) -> DatasetSplits:
    """Read, subset, normalise and resize the data ``spec`` names.

    A Fashion-MNIST request with no ``path`` and no files falls back to the
    digits, resized to 28x28 (unless ``resize`` says otherwise) and with the
    sizes capped at what digits has; it is announced in one line on stderr.

    Raises:
        DatasetError: when the files are missing, malformed or too small for
            the requested sizes.
    """
    if spec.name == "synthetic":
        return _load_synthetic(spec)
    loaded, (x_train, y_train, x_test, y_test), source, fallback = _read_source(spec)
    resize = spec.resize
    if fallback:
        resize = resize or DATASETS["fashion_mnist"].image_size
        log.warning(
            "kasrl: Fashion-MNIST not found in %s; using scikit-learn digits resized to %dx%d instead", DEBIAN_FASHION_MNIST, *resize
        )
    train_size = _check_size(spec, "train_size", spec.train_size, len(x_train), clamp=fallback)
    test_size = _check_size(spec, "test_size", spec.test_size, len(x_test), clamp=fallback)
    g = torch.Generator().manual_seed(spec.seed)
    train_idx = subset_indices(len(x_train), train_size, g)
    test_idx = subset_indices(len(x_test), test_size, g)
    info = DATASETS[loaded]
    train = _tensor_dataset(x_train, y_train, train_idx, info, resize)
    test = _tensor_dataset(x_test, y_test, test_idx, info, resize)
    return DatasetSplits(
        train=train,
        test=test,
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        image_size=tuple(train.tensors[0].shape[-2:]),
        name=loaded,
        source=source,
        train_indices=train_idx,
        test_indices=test_idx,
    )
