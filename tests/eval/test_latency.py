"""The interleaved timing protocol (structure, not speed: speed is benchmarked in bench/evaluate.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from kasrl.eval.latency import _quantile, _slice_speedups, conv3x3, time_pair


class _Counting(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_time_pair_interleaves_at_least_repeats_blocks_and_times_every_call():
    x = torch.randn(2, 8, 8, 8)
    k, b = _Counting(conv3x3(8)), _Counting(nn.Identity())
    t = time_pair(k, b, x, repeats=7, warmup=2, time_s=0.0, block_s=0.0)
    assert t.repeats == 7
    # block_s=0: one timed call per block after an untimed one; 2 warmup calls and a probe block of 1 + 3 first
    assert t.calls == (7, 7) and k.calls == 2 + 4 + 7 * 2 and b.calls == 2 + 4 + 7 * 2
    assert t.kernel_ms <= t.kernel_median_ms and t.baseline_ms <= t.baseline_median_ms
    assert t.speedup == pytest.approx(t.baseline_ms / t.kernel_ms)
    assert all(v >= 0 for v in (t.kernel_spread, t.baseline_spread, t.speedup_spread))


def test_time_pair_runs_for_at_least_time_s_and_restores_threads():
    before = torch.get_num_threads()
    t = time_pair(conv3x3(4), conv3x3(4), torch.randn(1, 4, 8, 8), repeats=1, warmup=0, time_s=0.2, threads=1, block_s=0.0)
    assert torch.get_num_threads() == before
    assert t.repeats > 1  # kept interleaving until time_s passed
    assert sum(t.calls) >= 2 * t.repeats


def test_time_pair_rejects_a_quantile_outside_the_lower_half():
    with pytest.raises(ValueError, match="quantile"):
        time_pair(nn.Identity(), nn.Identity(), torch.zeros(1), quantile=0.9)


def test_quantile_and_slices():
    assert _quantile([4.0, 1.0, 3.0, 2.0], 0.0) == 1.0
    assert _quantile([1.0, 2.0, 3.0], 0.5) == 2.0
    assert _quantile([0.0, 10.0], 0.05) == pytest.approx(0.5)
    assert _quantile([0.0, 0.0], 0.0) > 0  # a ratio of quantiles never divides by zero
    ks = [1.0] * 10
    bs = [2.0] * 10
    ends = [(i + 1, i + 1) for i in range(10)]
    assert _slice_speedups(ks, bs, ends, 0.05) == [2.0] * 5
    assert _slice_speedups(ks[:3], bs[:3], ends[:3], 0.05) == []  # too few pairs to slice


def test_time_pair_extends_an_unstable_run_up_to_max_time_s_only():
    x = torch.randn(1, 4, 8, 8)
    settled = time_pair(conv3x3(4), conv3x3(4), x, repeats=5, warmup=0, time_s=0.1, block_s=0.0, target_spread=10.0)
    unsettled = time_pair(conv3x3(4), conv3x3(4), x, repeats=5, warmup=0, time_s=0.1, block_s=0.0, target_spread=-1.0,
                          max_time_s=0.3)
    assert 0.1 <= settled.seconds < 0.3  # stable enough at time_s: stops there
    assert unsettled.seconds >= 0.3  # never stable enough: runs to max_time_s
