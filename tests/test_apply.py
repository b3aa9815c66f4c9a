"""kasrl.apply: a kernel in the user's own model; its sizes re-solved for other placements, or refused."""

from __future__ import annotations

import copy
import logging
import random
import re

import pytest
import torch
import torch.nn as nn

import kasrl
from kasrl.codegen.module import build_module
from kasrl.errors import ConfigError, KasrlError, SolverInfeasible
from kasrl.ir.canonical import kernel_hash, structure_hash
from kasrl.ir.dims import free_symbol
from kasrl.ir.serialize import dumps, save_kernel
from kasrl.ir.sizes import SizeChoice
from kasrl.placeholders import fit_kernel, sizes_problem
from kasrl.solver.budget import Placement
from kasrl.space import SearchSpace
from tests.helpers import build, rollout
from tests.tasks.userland import TinyNet

PLACES = (Placement(8, 8, 8), Placement(16, 4, 4))  # TinyNet(width=8) on 1x8x8 images: block1, block2
GROUPED = [("group", (0,), {}), ("projection", (0,), dict(out="C", grouped=True)),
           ("conv", (0,), dict(kh=3, kw=3, dilation=1, out="depthwise"))]


def _model(width: int = 8) -> nn.Module:
    torch.manual_seed(1)
    return TinyNet(10, 1, width).eval()


def _kernel(seed: int = 3):
    return rollout(SearchSpace(PLACES), random.Random(seed), 4, 10)


def _grouped_in_eight():
    """Groups of the constant size 8: legal where 8 divides C (C = 8, 16), not at C = 4."""
    g = build(GROUPED)
    g.sizes = {free_symbol(0): SizeChoice(ratio=False, exp=3)}
    assert sizes_problem(g, PLACES) == ""
    return g


def test_apply_gives_the_outputs_of_the_kernel_built_by_hand():
    g, model = _kernel(), _model()
    torch.manual_seed(0)
    mine = kasrl.apply(copy.deepcopy(model), g, input_shape=(1, 8, 8))
    torch.manual_seed(0)
    by_hand = copy.deepcopy(model)
    by_hand.block1.conv = build_module(g, 8, 8, 8)
    by_hand.block2.conv = build_module(g, 16, 4, 4)
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(mine(x), by_hand(x))
    assert not isinstance(mine.block1.conv, nn.Conv2d) and isinstance(model.block1.conv, nn.Conv2d)  # the original is untouched


def test_apply_reads_the_kernel_from_its_json_file_or_text(tmp_path):
    g, model = _kernel(), _model()
    path = save_kernel(g, tmp_path / "k.json")
    outs = []
    for kernel in (g, path, str(path), dumps(g)):
        torch.manual_seed(0)
        outs.append(kasrl.apply(copy.deepcopy(model), kernel, example=torch.zeros(2, 1, 8, 8))(torch.ones(1, 1, 8, 8)))
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_apply_only_where_select_says():
    m = kasrl.apply(_model(), _kernel(), select=["block2.*"], input_shape=(1, 8, 8))
    assert isinstance(m.block1.conv, nn.Conv2d) and not isinstance(m.block2.conv, nn.Conv2d)
    m = kasrl.apply(_model(), _kernel(), select=[{"channels": [8]}], input_shape=(1, 8, 8))
    assert not isinstance(m.block1.conv, nn.Conv2d) and isinstance(m.block2.conv, nn.Conv2d)
    message = "`select`: 'stem' is not a shape-preserving 3x3 conv of 'TinyNet' (C in 1 != C out 8)"
    with pytest.raises(ConfigError, match=re.escape(message)):
        kasrl.apply(_model(), _kernel(), select=["stem"], input_shape=(1, 8, 8))
    with pytest.raises(KasrlError, match=re.escape("kasrl.apply needs the input's shape")):
        kasrl.apply(_model(), _kernel())


def test_sizes_that_do_not_fit_are_re_solved_keeping_the_symbolic_kernel(caplog):
    g = _grouped_in_eight()
    assert fit_kernel(g, PLACES) == (g, "")  # they fit: nothing changes
    small = (Placement(4, 8, 8), Placement(8, 4, 4))
    assert "is 1/2 at 4x8x8, not a positive integer" in sizes_problem(g, small)
    fitted, note = fit_kernel(g, small)
    assert structure_hash(fitted) == structure_hash(g) and kernel_hash(fitted) != kernel_hash(g)  # same graph, other sizes
    assert fitted.nodes == g.nodes and g.sizes == {free_symbol(0): SizeChoice(False, 3)}  # the original keeps its sizes
    assert sizes_problem(fitted, small) == "" and note.startswith("re-solved the kernel's free sizes for 4x8x8, 8x4x4 (")
    with caplog.at_level(logging.INFO, logger="kasrl.placeholders"):
        m = kasrl.apply(_model(width=4), g, input_shape=(1, 8, 8))
    assert m(torch.zeros(2, 1, 8, 8)).shape == (2, 10) and "re-solved" in caplog.text


def test_no_legal_sizes_is_refused_with_the_reason_and_the_model_is_left_alone():
    g = _grouped_in_eight()
    with pytest.raises(SolverInfeasible, match=re.escape("no choice of free sizes makes every dimension a positive integer at 3x8x8")):
        fit_kernel(g, (Placement(3, 8, 8),))
    model = _model(width=3)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(SolverInfeasible):
        kasrl.apply(model, g, input_shape=(1, 8, 8))
    assert isinstance(model.block1.conv, nn.Conv2d) and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
