"""The interleaved timing protocol (structure, not speed: speed is benchmarked in bench/evaluate.py)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn

import kasrl.eval.latency as latency
from kasrl.eval.latency import _quantile, _slice_speedups, conv3x3, time_pair


class _Counting(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


@pytest.fixture
def fake_clock(monkeypatch):
    """``time.perf_counter`` advancing 1 ms per reading: every call 'takes' 1 ms, runs are deterministic."""
    ticks = itertools.count()
    monkeypatch.setattr(latency.time, "perf_counter", lambda: next(ticks) * 1e-3)


def test_time_pair_interleaves_at_least_repeats_blocks_and_times_every_call():
    x = torch.randn(2, 8, 8, 8)
    k, b = _Counting(conv3x3(8)), _Counting(nn.Identity())
    t = time_pair(k, b, x, repeats=7, warmup=2, time_s=0.0, block_s=0.0)
    assert t.repeats == 7
    # block_s=0: one timed call per block after an untimed one; 2 warmup calls and a probe block of 1 + 3 first
    assert t.calls == (7, 7) and k.calls == 2 + 4 + 7 * 2 and b.calls == 2 + 4 + 7 * 2
    assert t.speedup == pytest.approx(t.baseline_ms / t.kernel_ms)


def test_time_pair_times_at_least_five_pairs_so_that_its_spread_means_something():
    t = time_pair(nn.Identity(), nn.Identity(), torch.zeros(1), repeats=1, warmup=0, time_s=0.0, block_s=0.0)
    assert t.repeats == 5


def test_time_pair_restores_threads_and_the_garbage_collector():
    import gc

    torch.set_num_threads(2)
    try:
        time_pair(conv3x3(4), conv3x3(4), torch.randn(1, 4, 8, 8), repeats=1, warmup=0, time_s=0.0, threads=1)
        assert torch.get_num_threads() == 2 and gc.isenabled()
    finally:
        torch.set_num_threads(1)


def test_a_settled_run_stops_at_time_s_and_an_unsettled_one_runs_to_max_time_s(fake_clock):
    x = torch.zeros(1)
    settled = time_pair(nn.Identity(), nn.Identity(), x, repeats=5, warmup=0, time_s=0.1, block_s=0.0, target_spread=10.0)
    unsettled = time_pair(nn.Identity(), nn.Identity(), x, repeats=5, warmup=0, time_s=0.1, block_s=0.0,
                          target_spread=-1.0, max_time_s=0.3)
    assert 0.1 <= settled.seconds < 0.11  # checked on the first pair after time_s, and settled
    assert 0.3 <= unsettled.seconds < 0.31
    assert unsettled.repeats > 2 * settled.repeats
    assert settled.speedup == pytest.approx(1.0) and settled.speedup_spread == pytest.approx(0.0, abs=1e-9)  # every call read 1 ms


def test_max_time_s_below_time_s_is_raised_to_it(fake_clock):
    t = time_pair(nn.Identity(), nn.Identity(), torch.zeros(1), repeats=5, warmup=0, time_s=0.2, block_s=0.0,
                  target_spread=-1.0, max_time_s=0.05)
    assert 0.2 <= t.seconds < 0.21


def test_time_pair_rejects_a_quantile_outside_the_lower_half():
    with pytest.raises(ValueError, match="quantile"):
        time_pair(nn.Identity(), nn.Identity(), torch.zeros(1), quantile=0.9)


def test_quantile_interpolates_and_never_returns_zero():
    assert _quantile([4.0, 1.0, 3.0, 2.0], 0.0) == 1.0
    assert _quantile([1.0, 2.0, 3.0], 0.5) == 2.0
    assert _quantile([0.0, 10.0], 0.05) == pytest.approx(0.5)
    assert _quantile([0.0, 0.0], 0.0) > 0 and _quantile([0.0], 0.0, floor=1e-6) == 1e-6


def test_slices_cut_both_sides_at_the_same_block_pairs():
    # 10 pairs; the kernel side has 1 call per block, the baseline 2; pair i's calls all take i + 1
    ks = [float(i + 1) for i in range(10)]
    bs = [float(i + 1) for i in range(10) for _ in range(2)]
    ends = [(i + 1, 2 * (i + 1)) for i in range(10)]
    # quantile 0 = the fastest call of each fifth: pairs (0,1), (2,3), ... -> the same pair on both sides
    assert _slice_speedups(ks, bs, ends, 0.0) == [1.0] * 5
    bs_doubled = [2 * v for v in bs]
    assert _slice_speedups(ks, bs_doubled, ends, 0.0) == [2.0] * 5
    assert _slice_speedups(ks[:3], bs[:6], ends[:3], 0.0) == []  # too few pairs to slice
