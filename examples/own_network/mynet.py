"""A network and a dataset of your own, for kasrl to find faster 3x3 convolutions for.

``task.yaml`` next to this file names them by import path
(``examples.own_network.mynet:tiny_cnn``); every evaluation worker imports this
module itself, so run from the repository root (or put this folder's parent on
``PYTHONPATH``). Nothing here is kasrl-specific: any factory returning an
``nn.Module`` and any loader returning ``(train, test)`` Datasets will do.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset


class Block(nn.Module):
    """A 3x3 convolution that keeps the shape (what kasrl replaces), BatchNorm and ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn(conv(x)))``."""
        return F.relu(self.bn(self.conv(x)))


class TinyCNN(nn.Module):
    """stem (C in -> w), block1 (w), down (w -> 2w, stride 2), block2 (2w), global pooling and a linear head."""

    def __init__(self, num_classes: int, in_channels: int, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = Block(width)
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.block2 = Block(2 * width)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for images ``[N, in_channels, H, W]``."""
        x = self.block2(self.down(self.block1(self.stem(x))))
        return self.head(x.mean((2, 3)))


def tiny_cnn(num_classes: int, in_channels: int, width: int = 16) -> nn.Module:
    """The factory the task names; kasrl passes ``num_classes`` and ``in_channels`` from the dataset."""
    return TinyCNN(num_classes, in_channels, width)


class Digits(Dataset):
    """scikit-learn's 8x8 digits at ``size`` x ``size``, one item at a time, optionally shifted at random by a pixel.

    Not a ``TensorDataset`` (items are made on the fly), so kasrl trains on it through a
    seeded ``DataLoader``; the random shifts come from torch's generator, which kasrl seeds.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: bool) -> None:
        self.images, self.labels, self.augment = images, labels, augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple:
        x = self.images[i]
        if self.augment:
            dy, dx = torch.randint(-1, 2, (2,)).tolist()
            x = torch.roll(F.pad(x, (1, 1, 1, 1)), (dy, dx), dims=(1, 2))[:, 1:-1, 1:-1]
        return x, self.labels[i]


def digits(size: int = 16, augment: bool = True) -> tuple:
    """The loader the task names: ``(train, test, shape)``; every fifth image is held out for testing."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None]
    x = F.interpolate((x - 0.3) / 0.38, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.tensor(d.target, dtype=torch.int64)
    test = torch.arange(len(x)) % 5 == 4
    shape = {"num_classes": 10, "input_shape": (1, size, size)}
    return Digits(x[~test], y[~test], augment), Digits(x[test], y[test], augment=False), shape
