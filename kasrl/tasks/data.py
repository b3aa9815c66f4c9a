"""Task data: a loader named by import path, the subsets a task draws from it, and kasrl's own loaders.

A task's ``dataset`` names a loader (``target``: a built-in name or
``package.module:loader``) and its arguments (``kwargs``). A loader returns
``(train, test)``: two ``torch.utils.data.Dataset`` (or DataLoaders: their
datasets are used, batched by the task's recipe), optionally with a third item,
a dict with ``num_classes`` and ``input_shape`` ``(C, H, W)`` (and, if it likes,
``source``: where the data came from, in words). Without that dict the input
shape is read from the first training item and the classes from the labels.
Items are ``(image [C, H, W], label)``. A loader whose signature names
``train_size``, ``test_size`` or ``seed`` gets the task's values (to draw or read
only that many); either way the task then draws ``train_size`` / ``test_size``
items from each split with ``seed``, for any dataset.

In-memory tensors (a plain ``TensorDataset``) are trained by indexing, the fast
path; any other dataset goes through a seeded ``DataLoader``
(:func:`kasrl.eval.runtime.train_and_test`).

Built-in loaders (read from local files only; nothing is ever downloaded):

=================  ==================================================================
name               arguments; where the data come from
=================  ==================================================================
``fashion_mnist``  ``path``, ``resize``: IDX files (``train-images-idx3-ubyte[.gz]``
                   ...) in ``path``, then ``path/FashionMNIST/raw`` (a torchvision
                   root); with no ``path``, Debian's ``/usr/share/datasets/fashion-mnist/``
                   (the task's ``fallback`` applies when they are absent)
``digits``         ``resize``: scikit-learn's ``load_digits`` (8x8, 1797 images; every
                   fifth image is held out for testing)
``cifar10``        ``path``, ``resize``: the binary version (``cifar-10-batches-bin`` or
                   its parent)
``cifar100``       ``path``, ``resize``: the binary version (``cifar-100-binary`` or its
                   parent; fine labels)
``synthetic``      ``image_shape``, ``num_classes``, ``resize``: no files, random N(0, 1)
                   images and uniform labels drawn from ``seed`` (``train_size`` /
                   ``test_size`` of them, default 1024 / 256). For latency-only searches:
                   its labels carry no signal, so accuracies on it are chance
=================  ==================================================================

Built-in images come back as float32 ``[N, C, H, W]`` normalised with the
dataset's channel mean and standard deviation (``resize``: bilinear, after
normalising); labels as int64 ``[N]``.

>>> splits = load_dataset(DatasetSpec("digits", {"resize": [28, 28]}, train_size=100, test_size=50))
>>> splits.train.tensors[0].shape, splits.num_classes, splits.image_size
(torch.Size([100, 1, 28, 28]), 10, (28, 28))
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from kasrl.errors import ConfigError, DatasetError
from kasrl.tasks.structured import Checked
from kasrl.tasks.targets import ALIASES, Target, check_kwargs, loader_hooks, parameters, resolve

__all__ = [
    "DatasetSpec",
    "DatasetSplits",
    "DatasetInfo",
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "ImageArrays",
    "load_dataset",
    "dataset_info",
    "dataset_missing",
    "check_dataset_files",
    "read_idx",
    "subset_indices",
    "find_fashion_mnist",
    "fashion_mnist",
    "digits",
    "cifar10",
    "cifar100",
    "synthetic",
]

log = logging.getLogger(__name__)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the IDX files."""

DATASETS = ALIASES["dataset"]
"""Built-in dataset name -> import path of its loader (the registry of :mod:`kasrl.tasks.targets`)."""

#: Arguments kasrl passes to a loader whose signature names them (from the task's dataset section).
SUPPLIED = ("train_size", "test_size", "seed")


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset looks like: enough to build a network for it."""

    in_channels: int
    """Channels per image."""
    num_classes: int
    """Number of label classes."""
    image_size: tuple[int, int]
    """Height and width in pixels (after any resize)."""


@dataclass(frozen=True)
class DatasetSpec(Checked):
    """Which data a task trains and tests on: a loader, its arguments, and the subsets drawn."""

    _prefix: ClassVar[str] = "task.dataset"
    target: str = "fashion_mnist"
    """The loader: a built-in name (:data:`DATASETS`) or an import path ``package.module:loader``."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Arguments of the loader (built-in ones: ``path``, ``resize``, ...; see the module docstring)."""
    train_size: int | None = None
    """Training items drawn (None = all)."""
    test_size: int | None = None
    """Test items drawn (None = all)."""
    seed: int = 0
    """Seed that draws the training and test subsets (and, for a loader that takes ``seed``, its data)."""

    @classmethod
    def _prepare(cls, data: dict, prefix: str) -> dict:
        return prepare_target_section(data, prefix, "dataset", ("target", "kwargs", "train_size", "test_size", "seed"), SUPPLIED)

    def _validate(self) -> None:
        target = self.loader
        check_kwargs(target, self.kwargs, f"{self._prefix}.kwargs", "dataset", SUPPLIED)
        for name in ("train_size", "test_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"`{self._prefix}.{name}` must be at least 1 (or null for all), got {v}")
        hook = getattr(target.obj, "kasrl_validate", None)
        if hook is not None:
            hook(**self.kwargs)

    @property
    def loader(self) -> Target:
        """The resolved loader (imported)."""
        return resolve("dataset", self.target, f"{self._prefix}.target")

    @property
    def name(self) -> str:
        """The built-in name of the loader, or its import path."""
        return self.loader.name

    def call_kwargs(self) -> dict:
        """The loader's arguments: ``kwargs`` plus the task's sizes and seed where the loader takes them."""
        params = parameters(self.loader.obj)
        kwargs = dict(self.kwargs)
        for name in SUPPLIED:
            value = getattr(self, name)
            if value is not None and name not in kwargs and (params is None or name in params):
                kwargs[name] = value
        return kwargs


def prepare_target_section(data: dict, prefix: str, kind: str, fields: Sequence[str], supplied: Sequence[str]) -> dict:
    """Read the older layout of a network or dataset section, and its shorthand, into ``target`` and ``kwargs``.

    ``name`` becomes ``target`` (``{name: small_cnn, width: 32}`` is the old layout), and
    a key that is not a field of the section but an argument of the target goes into
    ``kwargs`` (``dataset.path`` means ``dataset.kwargs.path``). Other keys are unknown.

    Raises:
        ConfigError: naming the unknown key.
    """
    from kasrl.tasks.structured import unknown_key
    from kasrl.tasks.targets import ANY_KWARGS

    data = dict(data)
    if "name" in data:
        if "target" in data:
            raise ConfigError(f"`{prefix}` has both `name` (the older layout) and `target`; keep `target`")
        data["target"] = data.pop("name")
    extra = [k for k in data if k not in fields]
    if not extra:
        return data
    default = {"network": "small_cnn", "dataset": "fashion_mnist"}[kind]
    target = resolve(kind, data.get("target", default), f"{prefix}.target")
    params = parameters(target.obj)
    kwargs = dict(data.get("kwargs") or {})
    for key in extra:
        if params is not ANY_KWARGS and key not in params:
            raise unknown_key(f"{prefix}.{key}", [*fields, *(p for p in params if p not in supplied)])
        kwargs[key] = data.pop(key)
    data["kwargs"] = kwargs
    return data


@dataclass(frozen=True)
class DatasetSplits:
    """Training and test data, ready for training."""

    train: Dataset
    """Training items; a ``TensorDataset`` of float32 ``[N, C, H, W]`` images and int64 ``[N]`` labels for in-memory data."""
    test: Dataset
    """Test items, as ``train``."""
    num_classes: int
    """Number of label classes."""
    in_channels: int
    """Channels per image."""
    image_size: tuple[int, int]
    """Height and width in pixels after any resize."""
    name: str
    """The loader's built-in name, or its import path."""
    source: str
    """Where the data came from, in words."""
    train_indices: torch.Tensor
    """Indices of the drawn training items in the loader's training split."""
    test_indices: torch.Tensor
    """Indices of the drawn test items in the loader's test split."""


# --------------------------------------------------------------------- arrays of images


class ImageArrays(Dataset):
    """uint8 images ``[N, C, H, W]`` and labels, normalised (and resized) only for the items drawn.

    :meth:`take` turns drawn rows into a ``TensorDataset`` (in memory, the fast
    training path); a whole split of 60000 images is never converted to floats
    when the task draws 4000.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: Sequence[float], std: Sequence[float],
                 resize: Sequence[int] | None = None) -> None:
        self.images = images
        self.labels = labels
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.resize = tuple(resize) if resize is not None else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple:
        x = _to_tensor(self.images[i : i + 1], self.mean, self.std, self.resize)[0]
        return x, torch.as_tensor(int(self.labels[i]), dtype=torch.int64)

    def take(self, idx: torch.Tensor) -> TensorDataset:
        """The rows ``idx`` as float32 tensors in memory."""
        rows = idx.numpy()
        return TensorDataset(_to_tensor(self.images[rows], self.mean, self.std, self.resize),
                             torch.as_tensor(self.labels[rows], dtype=torch.int64))


def _to_tensor(images: np.ndarray, mean: Sequence[float], std: Sequence[float], resize: Sequence[int] | None) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).div_(255.0)
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    if resize is not None and tuple(x.shape[-2:]) != tuple(resize):
        x = F.interpolate(x, size=tuple(resize), mode="bilinear", align_corners=False)
    return x.contiguous()


def _check_resize(resize: Any) -> None:
    if resize is not None and (not isinstance(resize, (list, tuple)) or len(resize) != 2
                               or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in resize)):
        shown = list(resize) if isinstance(resize, (list, tuple)) else resize
        raise ConfigError(f"`task.dataset.kwargs.resize` must be [height, width] with both at least 1, got {shown!r}")


def _size(native: tuple[int, int], resize: Sequence[int] | None) -> tuple[int, int]:
    return tuple(resize) if resize is not None else native


def _expand(path: str | os.PathLike | None) -> Path | None:
    return Path(os.path.expanduser(os.path.expandvars(str(path)))) if path else None


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
_FASHION_STATS = ((0.2860,), (0.3530,))


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


def _fashion_missing(path: str | None = None, resize: Any = None) -> str:
    folder = _expand(path)
    if find_fashion_mnist(folder) is not None:
        return ""
    if folder is None:
        return (f"Fashion-MNIST not found in {DEBIAN_FASHION_MNIST} (Debian's dataset-fashion-mnist package); "
                f"set `task.dataset.kwargs.path` to a folder of its IDX files")
    if not folder.is_dir():
        raise DatasetError(f"`task.dataset.kwargs.path`: folder {folder} does not exist (it should hold the Fashion-MNIST IDX files)")
    raise DatasetError(f"`task.dataset.kwargs.path`: no Fashion-MNIST IDX files in {folder} or {folder / 'FashionMNIST' / 'raw'}")


@loader_hooks(info=lambda path=None, resize=None: DatasetInfo(1, 10, _size((28, 28), resize)), missing=_fashion_missing,
              validate=lambda path=None, resize=None: _check_resize(resize), location=("path",))
def fashion_mnist(path: str | None = None, resize: Sequence[int] | None = None) -> tuple:
    """Fashion-MNIST from its IDX files (see the module docstring for where they are searched).

    Raises:
        DatasetError: when the files are absent or malformed.
    """
    reason = _fashion_missing(path, resize)
    if reason:
        raise DatasetError(reason)
    files = find_fashion_mnist(_expand(path))
    arrays = {key: read_idx(p) for key, p in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(f"{files[f'{split}_images']} and {files[f'{split}_labels']} do not match: "
                               f"images {list(images.shape)}, labels {list(labels.shape)}")
    train = ImageArrays(arrays["train_images"][:, None], arrays["train_labels"], *_FASHION_STATS, resize)
    test = ImageArrays(arrays["test_images"][:, None], arrays["test_labels"], *_FASHION_STATS, resize)
    return train, test, {"num_classes": 10, "input_shape": (1, *_size((28, 28), resize)),
                         "source": f"IDX files in {files['train_images'].parent}"}


# ------------------------------------------------------------------ digits


@loader_hooks(info=lambda resize=None: DatasetInfo(1, 10, _size((8, 8), resize)), validate=lambda resize=None: _check_resize(resize))
def digits(resize: Sequence[int] | None = None) -> tuple:
    """scikit-learn's 8x8 digits (1797 images; every fifth is held out for testing), optionally resized."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)[:, None]
    test = np.arange(len(images)) % 5 == 4
    stats = ((0.3053,), (0.3759,))
    return (ImageArrays(images[~test], d.target[~test], *stats, resize), ImageArrays(images[test], d.target[test], *stats, resize),
            {"num_classes": 10, "input_shape": (1, *_size((8, 8), resize)), "source": "scikit-learn load_digits"})


# ------------------------------------------------------------------ CIFAR

_CIFAR = {
    # name: (folder name, train files, test files, label bytes, which label byte, classes, mean, std)
    "cifar10": ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"], 1, 0, 10,
                (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("cifar-100-binary", ["train.bin"], ["test.bin"], 2, 1, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _read_cifar_bin(path: Path, label_bytes: int, label_at: int) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + 3072
    data = _read_bytes(path)
    if not data or len(data) % record:
        raise DatasetError(f"{path} is truncated or not a CIFAR binary file: {len(data)} bytes is not a multiple of {record}")
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), rows[:, label_at].astype(np.int64)


def _cifar_folder(name: str, path: str | None) -> Path:
    folder_name, train_files, test_files = _CIFAR[name][:3]
    root = _expand(path)
    if root is None:
        raise ConfigError(f"`task.dataset.kwargs.path` is required for {name!r} (the folder holding its binary-version files)")
    if not root.is_dir():
        raise DatasetError(f"`task.dataset.kwargs.path`: folder {root} does not exist (it should hold the {name} binary version)")
    folder = root if (root / train_files[0]).is_file() else root / folder_name
    missing = [f for f in train_files + test_files if not (folder / f).is_file()]
    if missing:
        raise DatasetError(f"`task.dataset.kwargs.path`: {root} has no {name} binary files (missing {missing[0]} in {folder})")
    return folder


def _cifar(name: str, path: str | None, resize: Sequence[int] | None) -> tuple:
    _, train_files, test_files, label_bytes, label_at, classes, mean, std = _CIFAR[name]
    folder = _cifar_folder(name, path)
    parts = []
    for files in (train_files, test_files):
        chunks = [_read_cifar_bin(folder / f, label_bytes, label_at) for f in files]
        parts.append(ImageArrays(np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]), mean, std, resize))
    return parts[0], parts[1], {"num_classes": classes, "input_shape": (3, *_size((32, 32), resize)), "source": f"binary files in {folder}"}


def _cifar_hooks(name: str) -> Any:
    def validate(path: str | None = None, resize: Any = None) -> None:
        _check_resize(resize)
        if not path:
            raise ConfigError(f"`task.dataset.kwargs.path` is required for {name!r} (the folder holding its binary-version files)")

    def missing(path: str | None = None, resize: Any = None) -> str:
        _cifar_folder(name, path)  # a wrong explicit folder is an error, never a reason to fall back
        return ""

    return loader_hooks(info=lambda path=None, resize=None: DatasetInfo(3, _CIFAR[name][5], _size((32, 32), resize)),
                        missing=missing, validate=validate, location=("path",))


@_cifar_hooks("cifar10")
def cifar10(path: str | None = None, resize: Sequence[int] | None = None) -> tuple:
    """CIFAR-10, binary version, from ``path`` (``cifar-10-batches-bin`` or its parent)."""
    return _cifar("cifar10", path, resize)


@_cifar_hooks("cifar100")
def cifar100(path: str | None = None, resize: Sequence[int] | None = None) -> tuple:
    """CIFAR-100 (fine labels), binary version, from ``path`` (``cifar-100-binary`` or its parent)."""
    return _cifar("cifar100", path, resize)


# ------------------------------------------------------------------ synthetic

#: Images drawn for ``synthetic`` when ``train_size`` / ``test_size`` are null (it has no "all").
SYNTHETIC_SIZES = {"train_size": 1024, "test_size": 256}


def _synthetic_check(image_shape: Any = (3, 32, 32), num_classes: Any = 10, resize: Any = None, **_: Any) -> None:
    _check_resize(resize)
    if (not isinstance(image_shape, (list, tuple)) or len(image_shape) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in image_shape)):
        shown = list(image_shape) if isinstance(image_shape, (list, tuple)) else image_shape
        raise ConfigError(f"`task.dataset.kwargs.image_shape` must be [channels, height, width], all at least 1, got {shown!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ConfigError(f"`task.dataset.kwargs.num_classes` must be an integer of at least 2, got {num_classes!r}")


def _synthetic_info(image_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, resize: Any = None, **_: Any) -> DatasetInfo:
    c, h, w = image_shape
    return DatasetInfo(c, num_classes, _size((h, w), resize))


@loader_hooks(info=_synthetic_info, validate=_synthetic_check)
def synthetic(image_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, resize: Sequence[int] | None = None,
              train_size: int | None = None, test_size: int | None = None, seed: int = 0) -> tuple:
    """Random N(0, 1) images and uniform labels drawn from ``seed``: data that cost nothing to have, for timing.

    Its labels carry no signal, so any accuracy on it is chance and means nothing.
    """
    c, h, w = image_shape
    g = torch.Generator().manual_seed(seed)
    splits = []
    for n in (train_size or SYNTHETIC_SIZES["train_size"], test_size or SYNTHETIC_SIZES["test_size"]):
        x = torch.randn(n, c, h, w, generator=g)
        if resize is not None and tuple(x.shape[-2:]) != tuple(resize):
            x = F.interpolate(x, size=tuple(resize), mode="bilinear", align_corners=False).contiguous()
        splits.append(TensorDataset(x, torch.randint(num_classes, (n,), generator=g)))
    return splits[0], splits[1], {"num_classes": num_classes, "input_shape": (c, *_size((h, w), resize)),
                                  "source": f"synthetic: random N(0, 1) images and uniform labels from seed {seed} "
                                            f"(no signal: accuracy is chance)"}


# ------------------------------------------------------------------ loading any dataset


def subset_indices(n: int, size: int | None, generator: torch.Generator) -> torch.Tensor:
    """``size`` distinct indices below ``n`` drawn with ``generator``, in ascending order.

    ``size=None`` (or ``size >= n``) gives every index.
    """
    if size is None or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:size].sort().values


def dataset_missing(spec: DatasetSpec) -> str:
    """Why the loader's files are absent ("" when present, or when the loader cannot tell without loading).

    Raises:
        DatasetError: when the task points at a wrong place (a folder that does not exist...).
    """
    hook = getattr(spec.loader.obj, "kasrl_missing", None)
    return hook(**spec.kwargs) if hook is not None else ""


def check_dataset_files(spec: DatasetSpec) -> None:
    """Check that the files ``spec`` needs are there, without reading them.

    Raises:
        DatasetError: naming the key and the folder.
    """
    reason = dataset_missing(spec)
    if reason:
        raise DatasetError(reason)


def _unpack(out: Any, spec: DatasetSpec) -> tuple:
    """``(train, test, info dict)`` from what a loader returned."""
    key = f"{spec._prefix}.target"
    parts = list(out) if isinstance(out, (tuple, list)) else None
    if parts is None or len(parts) not in (2, 3):
        raise ConfigError(f"`{key}`: {spec.target} returned {type(out).__name__}; a loader must return (train, test) Datasets or "
                          f"DataLoaders, optionally with a dict {{'num_classes': N, 'input_shape': (C, H, W)}}")
    info = parts[2] if len(parts) == 3 else {}
    if not isinstance(info, Mapping):
        raise ConfigError(f"`{key}`: {spec.target} returned a third item of type {type(info).__name__}; it must be a dict "
                          f"with 'num_classes' and 'input_shape'")
    splits = []
    for which, ds in zip(("train", "test"), parts[:2], strict=True):
        if isinstance(ds, DataLoader):
            ds = ds.dataset
        if not isinstance(ds, Dataset):
            raise ConfigError(f"`{key}`: {spec.target} returned a {which} split of type {type(ds).__name__}, not a "
                              f"torch.utils.data.Dataset or DataLoader")
        try:
            len(ds)
        except TypeError:
            raise ConfigError(f"`{key}`: the {which} split of {spec.target} has no len() (an IterableDataset?); "
                              f"a task draws subsets by index") from None
        splits.append(ds)
    return splits[0], splits[1], dict(info)


def _take(ds: Dataset, idx: torch.Tensor) -> Dataset:
    """The items ``idx`` of ``ds``: in-memory tensors stay tensors, anything else is a ``Subset``."""
    if isinstance(ds, ImageArrays):
        return ds.take(idx)
    if len(idx) == len(ds):
        return ds
    if type(ds) is TensorDataset:
        return TensorDataset(*(t[idx] for t in ds.tensors))
    return Subset(ds, idx.tolist())


def _labels(ds: Dataset) -> Any:
    if type(ds) is TensorDataset and len(ds.tensors) >= 2:
        return ds.tensors[1]
    if isinstance(ds, Subset):
        inner = _labels(ds.dataset)
        return None if inner is None else torch.as_tensor(inner)[torch.as_tensor(ds.indices, dtype=torch.long)]
    targets = getattr(ds, "targets", None)
    return None if targets is None else torch.as_tensor(targets)


def _info(train: Dataset, given: Mapping, spec: DatasetSpec) -> DatasetInfo:
    key = f"{spec._prefix}.target"
    shape = given.get("input_shape")
    if shape is None:
        if len(train) == 0:
            raise ConfigError(f"`{key}`: the training split of {spec.target} is empty")
        x = train[0][0]
        shape = tuple(torch.as_tensor(x).shape)
    shape = tuple(int(v) for v in shape)
    if len(shape) != 3:
        raise ConfigError(f"`{key}`: {spec.target} gives images of shape {list(shape)}; kernels need [C, H, W] images")
    classes = given.get("num_classes")
    if classes is None:
        n = len(getattr(train, "classes", ()) or ())
        labels = _labels(train) if not n else None
        if labels is None and not n:
            raise ConfigError(f"`{key}`: cannot tell how many classes {spec.target} has; return a third item "
                              f"{{'num_classes': N, 'input_shape': (C, H, W)}}")
        classes = n or int(labels.max()) + 1
    return DatasetInfo(shape[0], int(classes), (shape[1], shape[2]))


_INFO_CACHE: dict = {}


def _spec_key(spec: DatasetSpec) -> str:
    return json.dumps([spec.target, spec.kwargs, spec.train_size, spec.test_size, spec.seed], sort_keys=True, default=str)


def load_dataset(spec: DatasetSpec) -> DatasetSplits:
    """Call the loader ``spec`` names, check what it returns and draw the subsets.

    Raises:
        DatasetError: when the loader's files are missing, malformed or too small for
            the sizes asked.
        ConfigError: naming ``task.dataset.target`` when the loader does not return a
            ``(train, test)`` pair of Datasets.
    """
    loader = spec.loader
    train, test, given = _unpack(loader.obj(**spec.call_kwargs()), spec)
    g = torch.Generator().manual_seed(spec.seed)
    sizes = []
    for name, ds in (("train_size", train), ("test_size", test)):
        size = getattr(spec, name)
        if size is not None and size > len(ds):
            raise DatasetError(f"`{spec._prefix}.{name}` is {size} but {loader.name} has only {len(ds)} images in that split")
        sizes.append(size)
    train_idx = subset_indices(len(train), sizes[0], g)
    test_idx = subset_indices(len(test), sizes[1], g)
    train, test = _take(train, train_idx), _take(test, test_idx)
    info = _info(train, given, spec)
    _INFO_CACHE[_spec_key(spec)] = info
    return DatasetSplits(train=train, test=test, num_classes=info.num_classes, in_channels=info.in_channels, image_size=info.image_size,
                         name=loader.name, source=str(given.get("source", f"{loader.path}({', '.join(map(str, spec.kwargs))})")),
                         train_indices=train_idx, test_indices=test_idx)


def dataset_info(spec: DatasetSpec) -> DatasetInfo:
    """Channels, classes and image size of the data ``spec`` yields.

    From the loader's ``info`` hook when it has one (no file is read); else the data
    are loaded once in this process to find out.
    """
    hook = getattr(spec.loader.obj, "kasrl_info", None)
    if hook is not None:
        return hook(**spec.kwargs)
    key = _spec_key(spec)
    if key not in _INFO_CACHE:
        load_dataset(spec)
    return _INFO_CACHE[key]
