"""Competition statistics on planted results."""

from __future__ import annotations

import pytest

from kasrl.experiment.stats import anytime, band, holm, hypervolume, mann_whitney_greater, pareto_front, share_better


def test_holm_adjusts_step_down_and_keeps_order():
    assert holm([0.01, 0.04, 0.03]) == [0.03, 0.06, 0.06]
    assert holm([0.5]) == [0.5]
    assert holm([0.001, 0.9, 0.02, 0.04]) == [0.004, 0.9, 0.06, 0.08]
    assert holm([0.4, 0.4, 0.4]) == [1.0, 1.0, 1.0]  # capped at 1


def test_hypervolume_counts_only_what_beats_the_reference_point():
    ref = (1.0, 72.0)  # speedup 1, baseline accuracy - tolerance
    assert hypervolume([(2.0, 74.0)], ref) == pytest.approx(2.0)
    assert hypervolume([(2.0, 74.0), (1.5, 76.0)], ref) == pytest.approx(1.0 * 2.0 + 0.5 * 2.0)
    assert hypervolume([(0.9, 80.0), (3.0, 71.0)], ref) == 0.0  # slower, or less accurate: nothing
    assert hypervolume([(2.0, 74.0), (1.5, 73.0)], ref) == pytest.approx(2.0)  # a dominated point adds nothing
    assert pareto_front([(1, 1), (2, 2), (2, 1)]) == [(2.0, 2.0)]


def test_mann_whitney_is_one_sided_and_tells_planted_differences_apart():
    better, base = [0.5, 0.6, 0.7, 0.8, 0.9], [0.0, 0.1, 0.2, 0.3, 0.4]
    assert mann_whitney_greater(better, base) < 0.01  # exact: 1/252
    assert mann_whitney_greater(base, better) > 0.99
    assert mann_whitney_greater([1.0] * 5, [1.0] * 5) == 1.0
    assert mann_whitney_greater([], base) == 1.0


def test_anytime_curves_and_their_band_over_seeds():
    rows = [{"seconds": 1, "reward": -1.0}, {"seconds": 2, "reward": -2.0}, {"seconds": 5, "reward": 0.5}]
    assert anytime(rows) == [(1.0, -1.0), (5.0, 0.5)]
    curves = [[(1.0, -1.0), (5.0, 0.5)], [(2.0, 0.0)], [(4.0, 1.0)]]
    med, lo, hi = band(curves, [0.5, 1.0, 3.0, 6.0])
    assert med == [None, -1.0, -0.5, 0.5] and lo == [None, -1.0, -1.0, 0.0] and hi == [None, -1.0, 0.0, 1.0]


def test_share_better_counts_kernels_better_on_both_counts():
    assert share_better([(1.2, 74.0), (0.8, 80.0), (1.5, 70.0), (1.1, 73.7)], (1.0, 73.6)) == 0.5
    assert share_better([], (1.0, 73.6)) == 0.0
