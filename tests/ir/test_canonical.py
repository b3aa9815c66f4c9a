"""Canonical hashes: build order and commutative operand order do not matter."""

from __future__ import annotations

import subprocess
import sys

from kasrl.ir.canonical import kernel_hash, structure_hash
from kasrl.ir.serialize import dumps
from tests.helpers import P, build

A = ("projection", None, dict(out="new", grouped=False))
B = ("conv", None, dict(kh=3, kw=3, dilation=1, out="depthwise"))


def _two_branches(first: int, commute: bool):
    """fork; branch `first` gets a projection first, the other a depthwise conv; then add."""
    steps = [("fork", 0)]
    order = [(first, A), (1 - first, B)]
    for branch, (name, _, attrs) in order:
        steps.append((name, (branch,), attrs))
    steps.append(("binary", (1, 0) if commute else (0, 1), dict(op="add")))
    steps.append(("projection", (0,), dict(out="C", grouped=False)))
    return build(steps, solve_at=[P(64, 8, 8)])


def test_independent_branches_in_either_order_hash_equal():
    g1 = _two_branches(0, False)
    g2 = _two_branches(1, False)
    assert structure_hash(g1) == structure_hash(g2)
    assert kernel_hash(g1) == kernel_hash(g2)
    assert dumps(g1) == dumps(g2)  # and the documents are the same


def test_commutative_operand_order_does_not_matter():
    assert kernel_hash(_two_branches(0, False)) == kernel_hash(_two_branches(0, True))


def test_different_kernels_hash_differently():
    base = build([("activation", (0,), dict(fn="relu")), ("projection", (0,), dict(out="C", grouped=False))])
    other = build([("activation", (0,), dict(fn="gelu")), ("projection", (0,), dict(out="C", grouped=False))])
    sub_ab = build([("fork", 0), ("activation", (1,), dict(fn="relu")), ("binary", (0, 1), dict(op="sub"))])
    sub_ba = build([("fork", 0), ("activation", (1,), dict(fn="relu")), ("binary", (1, 0), dict(op="sub"))])
    assert structure_hash(base) != structure_hash(other)
    assert structure_hash(sub_ab) != structure_hash(sub_ba)  # a - b is not b - a


def test_a_shared_tensor_differs_from_two_equal_computations():
    shared = build([("projection", (0,), dict(out="C", grouped=False)), ("fork", 0), ("binary", (0, 1), dict(op="add"))])
    twice = build(
        [
            ("fork", 0),
            ("projection", (0,), dict(out="C", grouped=False)),
            ("projection", (1,), dict(out="C", grouped=False)),
            ("binary", (0, 1), dict(op="add")),
        ]
    )
    assert structure_hash(shared) != structure_hash(twice)


def test_solved_sizes_change_the_kernel_hash_not_the_structure_hash():
    from kasrl.ir.sizes import SizeChoice

    g = _two_branches(0, False)
    h1, s1 = kernel_hash(g), structure_hash(g)
    g.sizes = {k: SizeChoice(v.ratio, v.exp - 1) for k, v in g.sizes.items()}
    assert structure_hash(g) == s1 and kernel_hash(g) != h1


def test_hashes_follow_a_graph_that_grows_in_place():
    from kasrl.ir.primitives import Activation

    g = build([("projection", (0,), dict(out="new", grouped=False))])
    before = structure_hash(g)  # memoised on g
    g.apply(Activation(fn="relu"), (0,))
    assert structure_hash(g) == structure_hash(g.copy()) != before  # the copy hashes from scratch


def test_hash_is_the_same_in_a_fresh_process():
    g = _two_branches(0, False)
    code = (
        "from tests.ir.test_canonical import _two_branches\n"
        "from kasrl.ir.canonical import kernel_hash\n"
        "print(kernel_hash(_two_branches(1, True)))\n"
    )
    env = {"PYTHONHASHSEED": "123", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == kernel_hash(g)
