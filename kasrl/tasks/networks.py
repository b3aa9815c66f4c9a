"""kasrl's own task networks, written in plain PyTorch (torchvision does not import here).

A task names its network by import path (``network.target``); the names below are
aliases for the import paths of these factories (:data:`NETWORKS`, the registry of
:mod:`kasrl.tasks.targets`), and a network of your own is named the same way
(``mypkg.nets:tiny_cnn``). A factory's ``num_classes`` and ``in_channels`` come from
the dataset when it takes them and the task does not set them.

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

from typing import Any

import torch
import torch.nn as nn

from kasrl.errors import ConfigError
from kasrl.tasks.targets import ALIASES, Target, check_kwargs, parameters, resolve

__all__ = ["SmallCNN", "ConvBNReLU", "BasicBlock", "ResNet", "NETWORKS", "build_network", "network_options", "resnet18_cifar",
           "resnet34_cifar", "resnet18_imagenet", "resnet34_imagenet"]


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
            raise ConfigError(f"`task.network.kwargs.stem_stride` must be 1 or 2, got {stem_stride!r}")
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
        raise ConfigError(f"`task.network.kwargs.{field}` must be a positive integer, got {value!r}")


def resnet18_cifar(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> ResNet:
    """ResNet-18, CIFAR form (3x3 stem, no max-pool; 32x32 input)."""
    return ResNet((2, 2, 2, 2), num_classes, in_channels, width, imagenet_stem=False)


def resnet34_cifar(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> ResNet:
    """ResNet-34, CIFAR form (3x3 stem, no max-pool; 32x32 input)."""
    return ResNet((3, 4, 6, 3), num_classes, in_channels, width, imagenet_stem=False)


def resnet18_imagenet(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> ResNet:
    """ResNet-18, ImageNet form (7x7 stride-2 stem and max-pool; 224x224 input)."""
    return ResNet((2, 2, 2, 2), num_classes, in_channels, width, imagenet_stem=True)


def resnet34_imagenet(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> ResNet:
    """ResNet-34, ImageNet form (7x7 stride-2 stem and max-pool; 224x224 input)."""
    return ResNet((3, 4, 6, 3), num_classes, in_channels, width, imagenet_stem=True)


NETWORKS: dict[str, str] = ALIASES["network"]
"""Built-in network name -> import path of its factory ``(num_classes, in_channels, **options) -> nn.Module``."""

#: Arguments kasrl passes to a factory that takes them (from the dataset), unless the task sets them.
SUPPLIED = ("num_classes", "in_channels")


def network_options(name: str) -> dict[str, Any]:
    """The options network ``name`` (a built-in name or an import path) takes, with their defaults.

    Raises:
        ConfigError: when ``name`` does not resolve.
    """
    params = parameters(resolve("network", name, "task.network.target").obj) or {}
    return {k: d for k, d in params.items() if k not in SUPPLIED}


def build_network(name: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """Build a network by built-in name or import path.

    Args:
        name: a key of :data:`NETWORKS` or ``package.module:factory``.
        num_classes: number of output classes (passed when the factory takes it and ``kwargs`` does not set it).
        in_channels: channels of the input image (likewise).
        **kwargs: the factory's options (see :func:`network_options`), e.g. ``width``.

    Returns:
        The network, in training mode.

    Raises:
        ConfigError: for an unknown name or option, a bad option value, or a factory that does not return an ``nn.Module``.
    """
    target = resolve("network", name, "task.network.target")
    check_kwargs(target, kwargs, "task.network.kwargs", "network", SUPPLIED)
    model = target.obj(**with_supplied(target, kwargs, num_classes, in_channels))
    if not isinstance(model, nn.Module):
        raise ConfigError(f"`task.network.target`: {target.name} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def with_supplied(target: Target, kwargs: dict, num_classes: int, in_channels: int) -> dict:
    """``kwargs`` plus ``num_classes`` / ``in_channels`` where the factory takes them and ``kwargs`` does not set them."""
    params = parameters(target.obj)
    out = dict(kwargs)
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if key not in out and params is not None and key in params:
            out[key] = value
    return out
