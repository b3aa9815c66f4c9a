"""Every primitive's declared shape, FLOPs and parameters agree with its lowering."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: F401  (used by the emitted expressions)
from torch.utils.flop_counter import FlopCounterMode

from kasrl.codegen.source import _HELPERS
from kasrl.ir.dims import C_ID, H_ID, W_ID, Monomial, free_symbol
from kasrl.ir.primitives import PRIMITIVES, SpaceContext
from kasrl.ir.shape import G_SLOT
from kasrl.space.config import SpaceConfig

ONE = Monomial()
C = Monomial.symbol(C_ID)
H = Monomial.symbol(H_ID)
W = Monomial.symbol(W_ID)
X0 = Monomial.symbol(free_symbol(0))
X1 = Monomial.symbol(free_symbol(1))
NEXT = 2  # the next free symbol index

BASES = {
    "input": (ONE, C, ONE, ONE, H, W),
    "grouped": (X0, C / X0, ONE, ONE, H, W),
    "window": (ONE, X1, Monomial.const(3), Monomial.const(3), H, W),
    "kw_pooled_w": (ONE, C, ONE, Monomial.const(5), H, ONE),
    "no_channels": (ONE, ONE, ONE, ONE, H, W),
    "kh_pooled_h": (ONE, C, Monomial.const(3), ONE, ONE, W),
}
PAIRS = {
    "same": (BASES["input"], BASES["input"]),
    "broadcast": (BASES["input"], BASES["no_channels"]),
    "window": ((ONE, C, ONE, ONE, H, W), (ONE, C, Monomial.const(3), Monomial.const(3), H, W)),
    "outer": ((ONE, C, ONE, ONE, H, ONE), (ONE, C, ONE, ONE, ONE, W)),
    "equal_sizes": ((ONE, X0, ONE, ONE, H, W), (ONE, X1, ONE, ONE, H, W)),
}
PLACEMENTS = [(6, 5, 7), (12, 8, 3), (10, 7, 4)]  # odd sizes, C not a power of two
CTX = SpaceContext(allow_spatial_weights=True)
CONFIG = SpaceConfig(kernel_sizes=(3, 5), dilations=(1, 2), shifts=(1, 2))


def _values(c, h, w, equal_x=False):
    return {C_ID: c, H_ID: h, W_ID: w, free_symbol(0): 2, free_symbol(1): 2 if equal_x else 6, free_symbol(NEXT): 2}


def _run(prim, shapes, placement, equal_x=False):
    inf = prim.infer(shapes, NEXT, CTX)
    vals = _values(*placement, equal_x=equal_x)

    def num(m):
        v = m.evaluate(vals)
        assert v.denominator == 1, f"{m} is not an integer at {vals}"
        return int(v)

    batch = 2
    ins = [torch.randn(batch, *[num(m) for m in s]) for s in shapes]
    weights = {wt.name: torch.randn(*[num(d) for d in wt.dims]) for wt in prim.weights(shapes, inf.shape)}
    names = {C_ID: "c", H_ID: "h", W_ID: "w", free_symbol(0): "x0", free_symbol(1): "x1", free_symbol(NEXT): "x2"}
    expr = prim.emit([f"a{i}" for i in range(len(ins))], shapes, inf.shape, {k: f"wt_{k}" for k in weights}, lambda m: m.python_expr(names))
    env = {"torch": torch, "F": F, "n": batch, "c": placement[0], "h": placement[1], "w": placement[2], "x0": 2,
           "x1": vals[free_symbol(1)], "x2": 2}
    for src in _HELPERS.values():
        exec(src, env)  # noqa: S102 - the project's own helper source
    env.update({f"a{i}": t for i, t in enumerate(ins)})
    env.update({f"wt_{k}": t for k, t in weights.items()})
    with FlopCounterMode(display=False) as counter:
        out = eval(expr, env)  # noqa: S307 - the project's own lowering
    assert list(out.shape) == [batch] + [num(m) for m in inf.shape]
    assert counter.get_total_flops() == batch * sum(num(m) for m in inf.flops)
    assert sum(t.numel() for t in weights.values()) == sum(num(m) for m in inf.params)
    assert torch.isfinite(out).all() or prim.name == "elementwise"


def _cases():
    for prim in CONFIG.unary_templates():
        for base_name, shape in BASES.items():
            if prim.infer((shape,), NEXT, CTX) is not None:
                yield pytest.param(prim, (shape,), False, id=f"{prim.label()}-{base_name}")
    for prim in CONFIG.binary_templates():
        for pair_name, shapes in PAIRS.items():
            if prim.infer(shapes, NEXT, CTX) is not None:
                yield pytest.param(prim, shapes, pair_name == "equal_sizes", id=f"{prim.label()}-{pair_name}")


CASES = list(_cases())


@pytest.mark.parametrize("prim,shapes,equal_x", CASES)
def test_declared_shape_flops_params_match_lowering(prim, shapes, equal_x):
    for placement in PLACEMENTS:
        _run(prim, shapes, placement, equal_x)


def test_every_family_is_covered():
    covered = {case.values[0].family for case in CASES}
    assert covered == set(PRIMITIVES_FAMILIES())


def PRIMITIVES_FAMILIES():  # noqa: N802 - reads like a constant
    return {cls.family for cls in PRIMITIVES.values()}


def test_inapplicable_primitives_return_none():
    unfold = PRIMITIVES["unfold"](axes="HW", k=3, dilation=1)
    assert unfold.infer((BASES["window"],), NEXT) is None  # KH is taken already
    group = PRIMITIVES["group"]()
    assert group.infer((BASES["grouped"],), NEXT) is None  # G is taken already
    proj = PRIMITIVES["projection"](out="C", grouped=True)
    assert proj.infer((BASES["input"],), NEXT) is None  # nothing to group by
    add = PRIMITIVES["binary"](op="add")
    three = (ONE, C, Monomial.const(3), ONE, H, W)
    five = (ONE, C, Monomial.const(5), ONE, H, W)
    assert add.infer((three, five), NEXT) is None  # 3 != 5, both fixed


def test_weights_never_depend_on_resolution_by_default():
    for prim in CONFIG.unary_templates():
        for shape in BASES.values():
            inf = prim.infer((shape,), NEXT)
            if inf is None:
                continue
            for m in inf.params:
                assert m.power_of(H_ID) == 0 and m.power_of(W_ID) == 0, prim.label()


def test_binary_identifies_free_sizes():
    add = PRIMITIVES["binary"](op="add")
    inf = add.infer(PAIRS["equal_sizes"], NEXT)
    assert inf.equal == (X0 / X1,)


def test_bad_attributes_are_rejected_with_the_attribute_named():
    with pytest.raises(ValueError, match="attribute `k` must be an odd integer"):
        PRIMITIVES["unfold"](axes="HW", k=4, dilation=1)
    with pytest.raises(ValueError, match="unknown attribute `bogus`"):
        PRIMITIVES["fold"](slot="C", mode="mean", bogus=1)
    with pytest.raises(ValueError, match="attribute `offset`"):
        PRIMITIVES["shift"](axes="H", offset=0)
    assert G_SLOT == 0
