"""Calibration: a tiny real run, the fit on planted coefficients, and resuming without re-measuring."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import kasrl.latency.calibrate as cal
from kasrl.ir.primitives import Activation, Conv, Projection, Shift, Unfold
from kasrl.latency.calibrate import calibrate, fit_model, random_kernel, read_samples, samples_path
from kasrl.latency.model import conv3x3_features, kernel_features, op_kind
from kasrl.latency.profile import load_profile
from kasrl.solver.budget import Placement
from kasrl.space import SearchSpace

TINY = Placement(8, 4, 4)
FAST = {"session_s": 0.02, "whole_s": 0.01, "rounds": 2}


def test_tiny_calibration_gives_a_usable_model_and_a_profile_that_round_trips(tmp_path):
    """A 2-second calibration on one small placement predicts positive latencies and its profile loads back equal."""
    out = tmp_path / "p.json"
    model = calibrate([TINY], batch=1, time_budget_s=2.0, out=out, progress=False, settings=FAST)
    k = random_kernel(SearchSpace([TINY]), 5, 0)
    assert 0 < model.predict(k, TINY) < 1.0 and 0 < model.predict_conv3x3(TINY) < 1.0
    assert load_profile(out, expect=model.fingerprint) == model
    doc = json.loads(out.read_text())
    assert doc["calibration"]["samples"]["kernels"] >= 1 and doc["calibration"]["placements"] == ["8x4x4"]
    _, samples = read_samples(samples_path(out))
    assert len(samples) == doc["calibration"]["samples"]["kernels"] + doc["calibration"]["samples"]["failed"]


# -- the fit on synthetic samples with planted coefficients ---------------------------------------
PLANTED = {
    Conv(kh=3, kw=3, dilation=1, out="C"): (8e-6, 2e-11, 5e-11),
    Conv(kh=1, kw=5, dilation=2, out="new"): (1.2e-5, 6e-11, 2e-10),
    Projection(out="C", grouped=False): (6e-6, 1.5e-11, 4e-11),
    Unfold(axes="HW", k=3, dilation=1): (1.5e-5, 0.0, 3e-10),
    Shift(axes="H", offset=1): (9e-6, 0.0, 6e-11),
    Activation(fn="relu"): (3e-6, 0.0, 3.5e-11),
}
KERNEL_PLANTED = (2e-5, 0.0, 1e-11)


def _synthetic(n: int, rng: np.random.Generator) -> list:
    placements = [Placement(32, 14, 14), Placement(64, 7, 7)]
    prims = list(PLANTED)
    samples = []
    for i in range(n):
        p = placements[i % 2]
        nodes = []
        for _ in range(rng.integers(2, 8)):
            prim = prims[rng.integers(len(prims))]
            coef = PLANTED[prim]
            f = [1, int(10 ** rng.uniform(3, 8)) if coef[1] else 0, int(10 ** rng.uniform(2.5, 7))]
            nodes.append([prim.name, prim.attrs, f, float(np.dot(coef, f))])
        conv = float(np.dot(PLANTED[prims[0]], conv3x3_features(p, 8)))
        whole = sum(t for *_, t in nodes) + float(np.dot(KERNEL_PLANTED, kernel_features(p, 8)))
        samples.append({"index": i, "placement": str(p), "conv3x3": conv, "nodes": nodes, "whole": {"kernel": whole, "conv3x3": conv}})
    return samples


def test_the_fit_reproduces_planted_coefficients():
    """Noise-free samples made from known coefficients are fitted back to them (scales 1, kernel overhead too)."""
    model, residuals = fit_model(_synthetic(120, np.random.default_rng(0)), batch=8)
    for prim, coef in PLANTED.items():
        kind = op_kind(prim)
        assert model.coefficients[kind] == pytest.approx(coef, rel=1e-6, abs=1e-18), kind
        assert model.scales[kind] == pytest.approx(1.0, rel=1e-6), kind
    assert model.coefficients["kernel"] == pytest.approx(KERNEL_PLANTED, rel=1e-6, abs=1e-18)
    assert residuals["whole"]["median_rel_error"] < 1e-6
    assert all(abs(r["rel_error"]) < 1e-6 for r in residuals["conv3x3"].values())
    # the integer form rounds each coefficient by less than 0.1%
    for prim, coef in PLANTED.items():
        units = model.integer_coefficients(op_kind(prim))
        for c, u in zip(coef, units, strict=True):
            assert (c == 0 and u == 0) or math.isclose(u * model.unit_s, c, rel_tol=1e-3)


# -- resuming ------------------------------------------------------------------------------------
def test_a_resumed_calibration_does_not_remeasure(tmp_path, monkeypatch):
    """A second run measures only the samples the JSONL file lacks, past a cut-short last line."""
    measured = []

    def fake(graph, placement, batch, threads=1, device="cpu", settings=None, whole=True, seed=0):
        measured.append(seed)
        f = [1, 1000, 4000]
        return {"conv3x3": 1e-4, "nodes": [[n.prim.name, n.prim.attrs, f, 1e-5] for n in graph.live_nodes()[1:]],
                "whole": {"kernel": 2e-5 * len(graph.live_nodes()), "conv3x3": 1e-4}}

    monkeypatch.setattr(cal, "measure_sample", fake)
    out = tmp_path / "p.json"
    calibrate([TINY], batch=1, time_budget_s=60, out=out, progress=False, max_samples=3)
    assert len(measured) == 3
    with open(samples_path(out), "a") as f:
        f.write('{"index": 3, "placem')  # a write cut short by an interruption
    calibrate([TINY], batch=1, time_budget_s=60, out=out, progress=False, max_samples=5)
    assert len(measured) == 5  # only samples 3 and 4 were measured the second time
    _, samples = read_samples(samples_path(out))
    assert [s["index"] for s in samples] == [0, 1, 2, 3, 4]
    # another seed is another sample list: the file starts again
    calibrate([TINY], batch=1, seed=1, time_budget_s=60, out=out, progress=False, max_samples=2)
    assert len(measured) == 7
    _, samples = read_samples(samples_path(out))
    assert [s["index"] for s in samples] == [0, 1]


def test_the_same_seed_draws_the_same_kernels():
    """Kernel i of a seed does not depend on the space object or on other draws."""
    space = SearchSpace([TINY])
    a = [random_kernel(space, 3, i).describe() for i in range(4)]
    b = [random_kernel(SearchSpace([TINY]), 3, i).describe() for i in range(4)]
    assert a == b and len(set(a)) > 1


def test_a_calibration_without_a_usable_sample_is_a_kasrl_error(tmp_path, monkeypatch):
    """Kernels that all fail to run leave no model to fit: one KasrlError naming a failure, no profile."""
    from kasrl.errors import KasrlError

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(cal, "measure_sample", broken)
    with pytest.raises(KasrlError, match="no usable sample.*out of memory"):
        calibrate([TINY], batch=1, time_budget_s=60, out=tmp_path / "p.json", progress=False, max_samples=2)
    assert not (tmp_path / "p.json").exists()
