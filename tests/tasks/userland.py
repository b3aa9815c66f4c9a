"""A user's own networks and data, as tasks name them: by import path (``tests.tasks.userland:tiny_net``).

Evaluation workers (pool processes, Ray actors) import this module by name themselves;
nothing here is pickled and sent.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset, TensorDataset


class Block(nn.Module):
    """A shape-preserving 3x3 conv (``conv``) with BatchNorm and ReLU."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn(conv(x)))``."""
        return torch.relu(self.bn(self.conv(x)))


class TinyNet(nn.Module):
    """stem (C in -> w), block1 (w, replaceable), down (w -> 2w, stride 2), block2 (2w, replaceable), head."""

    def __init__(self, num_classes: int, in_channels: int, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.block1 = Block(width)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.block2 = Block(2 * width)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        x = self.block2(torch.relu(self.down(self.block1(torch.relu(self.stem(x))))))
        return self.head(x.mean((2, 3)))


def tiny_net(num_classes: int, in_channels: int, width: int = 8) -> nn.Module:
    """The factory a task names: ``num_classes`` and ``in_channels`` come from the dataset."""
    return TinyNet(num_classes, in_channels, width)


def _digits() -> tuple:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor((d.images / 16.0 - 0.3) / 0.38, dtype=torch.float32)[:, None]
    y = torch.tensor(d.target, dtype=torch.int64)
    test = np.arange(len(x)) % 5 == 4
    return x[~test], y[~test], x[test], y[test]


def digits_tensors() -> tuple:
    """scikit-learn's 8x8 digits as in-memory tensors, with the shape dict."""
    xa, ya, xb, yb = _digits()
    return TensorDataset(xa, ya), TensorDataset(xb, yb), {"num_classes": 10, "input_shape": (1, 8, 8)}


class DigitItems(Dataset):
    """Digits one item at a time (not in memory as tensors: the DataLoader path), labels in ``targets``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.targets = x, y.tolist()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple:
        return self.x[i], self.targets[i]


def digits_items() -> tuple:
    """Digits as item-by-item Datasets without a shape dict (the shape and classes are read from the data)."""
    xa, ya, xb, yb = _digits()
    return DigitItems(xa, ya), DigitItems(xb, yb)


NOT_CALLABLE = 3


def returns_an_int(num_classes: int = 10, in_channels: int = 1) -> int:
    """A factory that does not return an ``nn.Module``."""
    return 3


def no_conv(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A network with nothing to replace."""
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))


def one_split() -> Dataset:
    """A loader that returns one dataset instead of a (train, test) pair."""
    return digits_tensors()[0]


def not_datasets() -> tuple:
    """A loader that returns lists, not Datasets."""
    return [1, 2, 3], [4, 5]
