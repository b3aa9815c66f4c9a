"""Shared bench helpers: pinned environment, device line, percentiles."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def setup(threads: int = 1) -> dict:
    """Pin the allocator (re-exec), run single-threaded, and return the device fingerprint."""
    from kasrl.eval.latency import device_fingerprint, ensure_pinned

    ensure_pinned()
    import torch

    torch.set_num_threads(threads)
    return device_fingerprint("cpu")


def pct(xs, q: float) -> float:
    """The q-th percentile (0..100) of a list."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def med(xs) -> float:
    """Median (nan for an empty list)."""
    return statistics.median(xs) if xs else float("nan")


def device_line(fp: dict) -> str:
    """One line describing where the figures come from."""
    return f"device: {fp['cpu']} | torch {fp['torch']} | threads {fp['threads']} | allocator pinned: {fp['allocator_pinned']}"
