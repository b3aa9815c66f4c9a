"""Task networks, written in plain PyTorch (torchvision does not import here).

Every network keeps its shape-preserving 3x3 convolutions as
``nn.Conv2d(c, c, 3, padding=1, bias=False)`` so that
:func:`kasrl.placeholders.replace_convs_with_placeholders` finds them.

======================  =========  ======================================  ============
name                    input      replaceable 3x3 convs                   placeholders
======================  =========  ======================================  ============
``small_cnn``           28x28      one per stage (``blocks`` per stage)    2
``resnet18_cifar``      32x32      every BasicBlock's 3x3 conv but the     13
                                   three strided ones
``resnet34_cifar``      32x32      as above                                29
``resnet18_imagenet``   224x224    as above                                13
``resnet34_imagenet``   224x224    as above                                29
======================  =========  ======================================  ============

>>> net = build_network("small_cnn", num_classes=10, in_channels=1)
>>> net(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from kasrl.errors import ConfigError

__all__ = ["SmallCNN", "ConvBNReLU", "BasicBlock", "ResNet", "NETWORKS", "build_network", "network_options"]


class ConvBNReLU(nn.Module):
    """A 3x3 convolution (no bias, ``conv``), BatchNorm (``bn``) and ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn(conv(x)))``."""
        return self.relu(self.bn(self.conv(x)))


class SmallCNN(nn.Module):
    """The embedded default network: a small, fast CNN for 28x28 grayscale images.

    Layout (``C = width``, sizes for a 28x28 input and ``stem_stride=2``)::

        stem      3x3 conv 1 -> C, stride 2         28x28 -> 14x14
        stage1    blocks x [3x3 conv C -> C]        14x14   (replaceable)
        down      3x3 conv C -> 2C, stride 2        14x14 -> 7x7
        stage2    blocks x [3x3 conv 2C -> 2C]      7x7     (replaceable)
        head      global average pool, linear 2C -> classes

    Every conv is followed by BatchNorm and ReLU. ``stem_stride=1`` keeps the
    first stage at 28x28 (about 4x the compute). Any input of at least 4x4
    works (the head pools globally), so 8x8 digits run too.

    Args:
        num_classes: number of output classes.
        in_channels: channels of the input image.
        width: channels ``C`` of the first stage; the second has ``2C``.
        blocks: shape-preserving 3x3 convs per stage.
        stem_stride: stride of the stem conv (1 or 2).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32, blocks: int = 1, stem_stride: int = 2) -> None:
        super().__init__()
        _check_positive("width", width)
        _check_positive("blocks", blocks)
        if stem_stride not in (1, 2):
            raise ConfigError(f"`task.network.stem_stride` must be 1 or 2, got {stem_stride!r}")
        c = width
        self.stem = ConvBNReLU(in_channels, c, stride=stem_stride)
        self.stage1 = nn.Sequential(*(ConvBNReLU(c, c) for _ in range(blocks)))
        self.down = ConvBNReLU(c, 2 * c, stride=2)
        self.stage2 = nn.Sequential(*(ConvBNReLU(2 * c, 2 * c) for _ in range(blocks)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for images ``[N, in_channels, H, W]``."""
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convs and a shortcut.

    ``conv2`` is always shape-preserving; ``conv1`` is too unless the block
    changes stride or channels (then a 1x1 projection makes the shortcut).
    """

    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with basic blocks, in CIFAR form or ImageNet form.

    CIFAR form: 3x3 stride-1 stem, no max-pool (32x32 input: stages at 32,
    16, 8, 4). ImageNet form: 7x7 stride-2 stem and a 3x3 stride-2 max-pool
    (224x224 input: stages at 56, 28, 14, 7). Layer names follow torchvision
    (``layer1.0.conv2``), so dotted names carry over.

    Args:
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        num_classes: number of output classes.
        in_channels: channels of the input image.
        width: channels of the first stage (64 in the paper); stages double it.
        imagenet_stem: use the ImageNet stem instead of the CIFAR one.
    """

    def __init__(
        self,
        layers: tuple[int, ...],
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        imagenet_stem: bool = False,
    ) -> None:
        super().__init__()
        _check_positive("width", width)
        if imagenet_stem:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        c_in = width
        for i, n_blocks in enumerate(layers):
            c_out = width * 2**i
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(c_in, c_out, stride)] + [BasicBlock(c_out, c_out) for _ in range(n_blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            c_in = c_out
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for images ``[N, in_channels, H, W]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _check_positive(field: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"`task.network.{field}` must be a positive integer, got {value!r}")


def _resnet(layers: tuple[int, ...], imagenet_stem: bool) -> Callable[..., ResNet]:
    def make(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> ResNet:
        return ResNet(layers, num_classes, in_channels, width, imagenet_stem)

    return make


NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "resnet18_cifar": _resnet((2, 2, 2, 2), imagenet_stem=False),
    "resnet34_cifar": _resnet((3, 4, 6, 3), imagenet_stem=False),
    "resnet18_imagenet": _resnet((2, 2, 2, 2), imagenet_stem=True),
    "resnet34_imagenet": _resnet((3, 4, 6, 3), imagenet_stem=True),
}
"""Network name -> constructor ``(num_classes, in_channels, **options) -> nn.Module``."""


def _constructor(name: str) -> Callable[..., nn.Module]:
    if name not in NETWORKS:
        close = difflib.get_close_matches(str(name), NETWORKS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"`task.network.name`: unknown network {name!r}{hint}; known: {', '.join(sorted(NETWORKS))}")
    return NETWORKS[name]


def network_options(name: str) -> dict[str, Any]:
    """The extra options network ``name`` takes, with their defaults.

    Raises:
        ConfigError: when ``name`` is not in :data:`NETWORKS`.
    """
    params = inspect.signature(_constructor(name)).parameters
    return {k: p.default for k, p in params.items() if k not in ("num_classes", "in_channels")}


def build_network(name: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """Build a registered network.

    Args:
        name: a key of :data:`NETWORKS`.
        num_classes: number of output classes.
        in_channels: channels of the input image.
        **kwargs: network options (see :func:`network_options`), e.g. ``width``.

    Returns:
        The network, in training mode.

    Raises:
        ConfigError: for an unknown name or option, or a bad option value.
    """
    known = network_options(name)
    for key in kwargs:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise ConfigError(f"unknown key `task.network.{key}` for network {name!r}{hint}; known: {', '.join(known) or 'none'}")
    return _constructor(name)(num_classes=num_classes, in_channels=in_channels, **kwargs)
