"""The latency model's exact integer form: node terms summed equal the prediction."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from kasrl.ir.sizes import evaluate
from kasrl.latency.calibrate import random_kernel
from kasrl.latency.model import KERNEL, KINDS, LatencyModel, choose_unit, conv3x3_kind, node_inference, op_kind
from kasrl.solver.budget import RESNET18_PLACEMENTS, Placement
from kasrl.space import SearchSpace
from kasrl.space.config import ActionTable, SpaceConfig


def _model(seed: int = 0, batch: int = 8) -> LatencyModel:
    rng = random.Random(seed)
    coefs = {k: (rng.uniform(1e-6, 3e-5), rng.choice([0.0, rng.uniform(5e-12, 5e-11)]), rng.uniform(1e-11, 1e-9)) for k in KINDS}
    scales = {k: rng.uniform(0.8, 2.0) for k in KINDS if k != KERNEL}
    conv = max(sum(c * f for c, f in zip(coefs[conv3x3_kind()], (1, 2 * 9 * p.c**2 * p.h * p.w * batch, 0), strict=True))
               for p in RESNET18_PLACEMENTS)
    return LatencyModel(coefs, batch, "float32", {"cpu": "test"}, choose_unit(coefs, conv, scales), scales)


@pytest.fixture(scope="module")
def kernels() -> list:
    """Random solved kernels for ResNet-18's placements."""
    space = SearchSpace(RESNET18_PLACEMENTS)
    return [random_kernel(space, 7, i) for i in range(12)]


def test_every_primitive_of_the_space_has_a_kind():
    """Every template of the action table maps to a node kind."""
    table = ActionTable(SpaceConfig(allow_spatial_weights=True))
    for prim in table.unary + table.binary:
        assert op_kind(prim) in KINDS and op_kind(prim) != KERNEL


def test_node_terms_sum_to_the_prediction_exactly(kernels):
    """Summed node terms (and the kernel's) evaluated at the solved sizes are whole units and equal predict_units."""
    model = _model()
    for g in kernels:
        for p in RESNET18_PLACEMENTS:
            total = Fraction(0)
            for node in g.live_nodes()[1:]:
                in_shapes = [g.nodes[i].shape for i in node.inputs]
                for m in model.node_terms(node.prim, in_shapes, node_inference(g, node)):
                    v = evaluate(m, g.sizes, *p)
                    assert v.denominator == 1, f"{node.prim.label()} term {m} is {v} units at {p}"
                    total += v
            for m in model.kernel_terms():
                total += evaluate(m, g.sizes, *p)
            assert total == model.predict_units(g, p)
            assert model.predict(g, p) == model.to_seconds(total) > 0


def test_unit_keeps_coefficients_large_and_the_conv_below_1e15():
    """The chosen unit keeps every nonzero coefficient >= 1000 units and the largest conv below 1e15 units."""
    model = _model(3)
    for kind in KINDS:
        for c in model.integer_coefficients(kind):
            assert c == 0 or c >= 1000
    assert all(model.conv3x3_units(p) < 10**15 for p in RESNET18_PLACEMENTS)
    p = Placement(64, 56, 56)
    kind_coefs = model.coefficients[conv3x3_kind()]
    features = (1, 2 * 9 * 64 * 64 * 56 * 56 * 8, 4 * (2 * 8 * 64 * 56 * 56 + 9 * 64 * 64))
    exact = sum(c * f for c, f in zip(kind_coefs, features, strict=True))
    assert model.predict_conv3x3(p) == pytest.approx(exact, rel=1e-3)


def test_a_model_needs_every_kind_with_finite_non_negative_coefficients():
    """A model refuses missing, negative or unknown kinds."""
    good = {k: (1e-6, 0.0, 1e-10) for k in KINDS}
    with pytest.raises(ValueError, match="no coefficients for kind"):
        LatencyModel({k: v for k, v in good.items() if k != "unfold"}, 8)
    with pytest.raises(ValueError, match="finite non-negative"):
        LatencyModel({**good, "unfold": (1e-6, -1.0, 0.0)}, 8)
    with pytest.raises(ValueError, match="unknown latency kind"):
        LatencyModel({**good, "warp": (0.0, 0.0, 0.0)}, 8)


@pytest.mark.parametrize("objective", ["fill", "feasible"])
def test_kernels_finished_under_a_latency_budget_fit_it_by_the_models_own_prediction(objective):
    """The latency the masks and CP-SAT charge is the model's prediction: random kernels
    finished under ``budget.latency`` (the oracle's witness or CP-SAT's sizes) are
    predicted within that multiple of the 3x3 conv at every placement, and with
    ``fill`` CP-SAT uses nearly all of it somewhere."""
    from kasrl.solver.budget import Budget

    model = _model(3, batch=1)
    placements = (Placement(32, 14, 14), Placement(64, 7, 7))
    budget = Budget(flops=1.0, params=1.0, max_tensor=16.0, latency=0.8)
    space = SearchSpace(placements, budget, latency=model)
    rng = random.Random(11)
    used = []
    for _ in range(12):
        state = space.reset()
        target = rng.randint(3, 10)
        while not (state.steps >= target and space.can_finish(state)):
            legal = [int(a) for a in space.action_mask(state).nonzero()[0] if a != 0]
            if not legal:
                break
            state = space.apply(state, rng.choice(legal))
        kernel = space.finish(state, objective)
        for p in placements:
            limit = int(0.8 * model.conv3x3_units(p))
            assert model.predict_units(kernel, p) <= limit, f"{kernel_label(kernel)} at {p}"
            used.append(model.predict_units(kernel, p) / limit)
    if objective == "fill":
        assert max(used) > 0.9, used


def kernel_label(kernel) -> str:
    return " -> ".join(n.prim.label() for n in kernel.live_nodes()[1:])
