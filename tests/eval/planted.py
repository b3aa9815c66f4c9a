"""Planted broken kernels for the evaluator's failure-path tests.

Each is an :class:`~kasrl.eval.stages.Evaluable`; ``planted`` names the class so
an isolated worker can build it (kernels normally travel as JSON documents).
"""

from __future__ import annotations

import ctypes
import time

import torch
import torch.nn as nn

from kasrl.eval.stages import Evaluable


class _Planted(Evaluable):
    module: type = nn.Identity

    def __init__(self) -> None:
        self.hash = "planted-" + type(self).__name__
        self.doc = "{}"
        self.planted = f"{__name__}:{type(self).__name__}"

    def build(self, p):
        return self.module(p.c)


class _NaN(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(c, 1, 1))

    def forward(self, x):
        return x * self.w * float("nan")


class _Raise(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()

    def forward(self, x):
        raise RuntimeError("this kernel is broken on purpose")


class _Sleep(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()

    def forward(self, x):
        time.sleep(3600)
        return x


class _Hog(nn.Module):
    """Allocates about 1 GB per call and keeps it: a runaway allocation."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.kept = []

    def forward(self, x):
        while True:
            self.kept.append(torch.ones(256 * 1024 * 1024))


class _Segfault(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()

    def forward(self, x):
        ctypes.string_at(0)  # dereference NULL
        return x


class _Conv(nn.Conv2d):
    """The 3x3 convolution itself: a kernel that builds and runs everywhere (a speedup of about 1)."""

    def __init__(self, c: int) -> None:
        super().__init__(c, c, 3, padding=1, bias=False)


class ConvKernel(_Planted):
    """A kernel that works: the convolution it replaces."""

    module = _Conv


class NaNKernel(_Planted):
    module = _NaN


class RaisingKernel(_Planted):
    module = _Raise


class SleepingKernel(_Planted):
    module = _Sleep


class HogKernel(_Planted):
    module = _Hog


class SegfaultKernel(_Planted):
    module = _Segfault
