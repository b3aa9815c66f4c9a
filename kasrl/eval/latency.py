"""Latency measurement: a kernel against the layer it replaces, interleaved.

Rules (DESIGN section 6), all applied here:

* both sides are timed **in the same process, interleaved** (kernel block,
  baseline block, kernel block, ...) so a noisy neighbour hits both alike;
* warm-up first, then the **median of repeats**, with the spread (IQR / median)
  recorded; ratios are what we report, never single absolute times;
* single-threaded (``torch.set_num_threads(1)``) unless told otherwise;
* glibc's allocator pinned: ``MALLOC_MMAP_THRESHOLD_`` and
  ``MALLOC_TRIM_THRESHOLD_`` must be set before the process starts (else large
  blocks are returned to the OS and page-faulted back on every call, which
  swung a 3x3 convolution between 4 and 10 ms here). :func:`pinned_env` gives
  that environment for a child process, :func:`ensure_pinned` re-executes the
  current script with it;
* on CUDA, CUDA events around each block.

Blocks are timed with :class:`torch.utils.benchmark.Timer`.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.utils import benchmark

__all__ = [
    "MALLOC_ENV",
    "pinned_env",
    "allocator_pinned",
    "ensure_pinned",
    "device_fingerprint",
    "Timing",
    "time_pair",
    "conv3x3",
]

#: Environment that stops glibc from returning large blocks to the OS.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 31), "OMP_WAIT_POLICY": "PASSIVE"}


def pinned_env(base: dict | None = None) -> dict:
    """A copy of the environment with the allocator pinned (for child processes)."""
    env = dict(os.environ if base is None else base)
    env.update(MALLOC_ENV)
    return env


def allocator_pinned() -> bool:
    """True when this process started with the allocator thresholds set."""
    return all(os.environ.get(k) == v for k, v in MALLOC_ENV.items() if k.startswith("MALLOC"))


def ensure_pinned() -> None:
    """Re-execute the running script with the allocator pinned, unless it already is."""
    if not allocator_pinned():
        os.execve(sys.executable, [sys.executable] + sys.argv, pinned_env())


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_fingerprint(device: str = "cpu") -> dict:
    """CPU model or GPU name, torch version, threads and allocator pinning."""
    out = {
        "device": device,
        "cpu": _cpu_model(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "allocator_pinned": allocator_pinned(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out


@dataclass(frozen=True)
class Timing:
    """Interleaved timing of a kernel against a baseline.

    Attributes:
        kernel_ms, baseline_ms: medians over repeats (milliseconds per call).
        speedup: ``baseline_ms / kernel_ms``.
        kernel_spread, baseline_spread: IQR / median of the repeats.
        speedup_spread: IQR / median of the per-repeat speedups.
        repeats: number of interleaved blocks.
    """

    kernel_ms: float
    baseline_ms: float
    speedup: float
    kernel_spread: float
    baseline_spread: float
    speedup_spread: float
    repeats: int

    def to_dict(self) -> dict:
        """Plain dict (for metrics)."""
        return asdict(self)


def _iqr_over_median(xs: list) -> float:
    if len(xs) < 4:
        return 0.0
    q = statistics.quantiles(xs, n=4)
    med = statistics.median(xs)
    return (q[2] - q[0]) / med if med > 0 else 0.0


def _cuda_block(fn, number: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(number):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / number / 1000.0


@torch.no_grad()
def time_pair(kernel: nn.Module, baseline: nn.Module, x: torch.Tensor, repeats: int = 15, warmup: int = 3,
              min_block_s: float = 0.02, threads: int | None = 1) -> Timing:
    """Time ``kernel(x)`` against ``baseline(x)``, interleaved block by block.

    Args:
        kernel, baseline: modules mapping ``x`` to a tensor (eval mode is set).
        x: the input (on the device to time on).
        repeats: interleaved blocks per side (the median is reported).
        warmup: untimed calls of each side first.
        min_block_s: each block runs enough calls to last about this long.
        threads: torch intra-op threads while timing (None: leave as is).
    """
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        kernel.eval()
        baseline.eval()
        cuda = x.is_cuda
        for _ in range(warmup):
            kernel(x)
            baseline(x)
        if cuda:
            torch.cuda.synchronize()
        tk = benchmark.Timer(stmt="m(x)", globals={"m": kernel, "x": x}, num_threads=torch.get_num_threads())
        tb = benchmark.Timer(stmt="m(x)", globals={"m": baseline, "x": x}, num_threads=torch.get_num_threads())
        # calls per block so that the slower side's block lasts about min_block_s
        one = max(tk.timeit(1).mean, tb.timeit(1).mean, 1e-6)
        number = max(1, int(min_block_s / one))
        ks, bs = [], []
        for _ in range(repeats):
            if cuda:
                ks.append(_cuda_block(lambda: kernel(x), number))
                bs.append(_cuda_block(lambda: baseline(x), number))
            else:
                ks.append(tk.timeit(number).mean)
                bs.append(tb.timeit(number).mean)
    finally:
        torch.set_num_threads(old_threads)
    k_ms = statistics.median(ks) * 1000
    b_ms = statistics.median(bs) * 1000
    ratios = [b / k for k, b in zip(ks, bs)]
    return Timing(k_ms, b_ms, b_ms / k_ms, _iqr_over_median(ks), _iqr_over_median(bs), _iqr_over_median(ratios), repeats)


def conv3x3(c: int) -> nn.Module:
    """The layer a kernel replaces: a 3x3, stride-1, same-padding convolution C -> C without bias."""
    return nn.Conv2d(c, c, 3, padding=1, bias=False)
