"""Placements, budgets and the domains of free sizes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from kasrl.errors import ConfigError

__all__ = [
    "Placement",
    "parse_placements",
    "Budget",
    "Limits",
    "SizeDomain",
    "conv3x3_flops",
    "conv3x3_params",
    "RESNET18_PLACEMENTS",
]


class Placement(NamedTuple):
    """Where a kernel is used: channels, height and width of its input."""

    c: int
    h: int
    w: int

    def __str__(self) -> str:
        return f"{self.c}x{self.h}x{self.w}"


RESNET18_PLACEMENTS = (Placement(64, 56, 56), Placement(128, 28, 28), Placement(256, 14, 14), Placement(512, 7, 7))

_PLACEMENT = re.compile(r"^\s*(\d+)x(\d+)x(\d+)\s*$")


def parse_placements(text: str, field: str = "placements") -> tuple:
    """Parse ``"64x56x56,128x28x28"`` into placements.

    Raises:
        ConfigError: naming ``field`` and the malformed item.
    """
    items = [t for t in str(text).split(",") if t.strip()]
    if not items:
        raise ConfigError(f"`{field}` is empty; expected CxHxW items such as 64x56x56,128x28x28")
    out = []
    for item in items:
        m = _PLACEMENT.match(item)
        if not m:
            raise ConfigError(f"`{field}`: {item.strip()!r} is not CxHxW (for example 64x56x56)")
        p = Placement(*(int(g) for g in m.groups()))
        if min(p) < 1 or max(p) > 1_000_000:
            raise ConfigError(f"`{field}`: {item.strip()!r} must have sizes between 1 and 1000000")
        out.append(p)
    return tuple(out)


def conv3x3_flops(p: Placement) -> int:
    """FLOPs per sample of a 3x3 convolution C -> C (a multiply-add is 2 FLOPs)."""
    return 2 * 9 * p.c * p.c * p.h * p.w


def conv3x3_params(p: Placement) -> int:
    """Weights of a 3x3 convolution C -> C without bias."""
    return 9 * p.c * p.c


class Limits(NamedTuple):
    """Absolute limits at one placement (FLOPs, parameters and volume per sample;
    latency in the latency model's unit, None when latency is not budgeted)."""

    flops: int
    params: int
    volume: int
    latency: int | None = None


@dataclass(frozen=True)
class Budget:
    """What a kernel may spend at each placement.

    Attributes:
        flops: FLOPs allowed, as a multiple of the replaced 3x3 convolution's.
        params: parameters allowed, as a multiple of the 3x3 convolution's.
        flops_abs: absolute FLOPs per sample (overrides ``flops`` when set).
        params_abs: absolute parameter count (overrides ``params`` when set).
        max_tensor: largest intermediate tensor, as a multiple of ``C*H*W``.
        max_tensor_abs: largest intermediate tensor in elements per sample
            (overrides ``max_tensor`` when set).
        latency: predicted latency allowed, as a multiple of the replaced 3x3
            convolution's predicted latency at each placement (None: latency is
            not budgeted). Needs a latency model (see :mod:`kasrl.latency`).
    """

    flops: float = 1.0
    params: float = 1.0
    flops_abs: int | None = None
    params_abs: int | None = None
    max_tensor: float = 16.0
    max_tensor_abs: int | None = None
    latency: float | None = None

    def __post_init__(self) -> None:
        for name in ("flops", "params", "max_tensor"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise ConfigError(f"`budget.{name}` must be a positive number, got {v!r}")
        for name in ("flops_abs", "params_abs", "max_tensor_abs"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ConfigError(f"`budget.{name}` must be a positive integer, got {v!r}")
        bad_latency = not isinstance(self.latency, (int, float)) or isinstance(self.latency, bool) or not self.latency > 0
        if self.latency is not None and bad_latency:
            raise ConfigError(f"`budget.latency` must be a positive number (a multiple of the 3x3 conv's predicted latency) or null, "
                              f"got {self.latency!r}")
        if self.max_tensor_abs is None and self.max_tensor < 1:
            raise ConfigError(f"`budget.max_tensor` must be at least 1 (the input itself is C*H*W), got {self.max_tensor}")

    def limits(self, p: Placement, conv_latency: int | None = None) -> Limits:
        """Absolute limits at placement ``p`` (``conv_latency``: the 3x3 conv's predicted
        latency there, in the latency model's unit; needed when ``latency`` is set).

        Raises:
            ConfigError: when ``latency`` is set and no ``conv_latency`` is given.
        """
        flops = self.flops_abs if self.flops_abs is not None else int(self.flops * conv3x3_flops(p))
        params = self.params_abs if self.params_abs is not None else int(self.params * conv3x3_params(p))
        vol = self.max_tensor_abs if self.max_tensor_abs is not None else int(self.max_tensor * p.c * p.h * p.w)
        latency = None
        if self.latency is not None:
            if conv_latency is None:
                raise ConfigError("`budget.latency` is set but no latency model was given (calibrate one: python -m kasrl calibrate)")
            latency = int(self.latency * conv_latency)
        return Limits(flops, params, vol, latency)

    def describe_flops(self) -> str:
        """``"1x conv FLOPs"`` or an absolute count."""
        return f"{self.flops_abs} FLOPs" if self.flops_abs is not None else f"{self.flops:g}x conv FLOPs"

    def describe_params(self) -> str:
        """``"1x conv params"`` or an absolute count."""
        return f"{self.params_abs} params" if self.params_abs is not None else f"{self.params:g}x conv params"


@dataclass(frozen=True)
class SizeDomain:
    """Which values a free size may take (the same choice at every placement).

    A free size is either ``C * 2**e`` with ``e`` in ``ratio_exps`` or the
    constant ``2**e`` with ``e`` in ``const_exps`` (both ranges inclusive).
    """

    ratio_exps: tuple = (-6, 2)
    const_exps: tuple = (0, 8)

    def __post_init__(self) -> None:
        for name in ("ratio_exps", "const_exps"):
            v = tuple(getattr(self, name))
            if len(v) != 2 or not all(isinstance(x, int) for x in v) or v[0] > v[1]:
                raise ConfigError(f"`{name}` must be a pair [low, high] of integers with low <= high, got {v!r}")
            object.__setattr__(self, name, v)

    def choices(self) -> list:
        """Every (ratio, exp) pair, constants first, smallest first."""
        out = [(False, e) for e in range(self.const_exps[0], self.const_exps[1] + 1)]
        out += [(True, e) for e in range(self.ratio_exps[0], self.ratio_exps[1] + 1)]
        return out


def check_placements(placements: Sequence[Placement]) -> tuple:
    """Validate and return placements as a tuple.

    Raises:
        ConfigError: when the list is empty.
    """
    placements = tuple(Placement(*p) for p in placements)
    if not placements:
        raise ConfigError("`placements` is empty: a kernel needs at least one place it is used at")
    return placements
