"""Standalone source and the in-process module compute the same function."""

from __future__ import annotations

import random
import subprocess
import sys

import torch

from kasrl.codegen.draw import draw_kernel
from kasrl.codegen.module import build_module
from kasrl.codegen.source import kernel_source
from kasrl.space import SearchSpace
from tests.helpers import rollout


def test_exported_source_run_on_its_own_matches_the_module(tmp_path):
    space = SearchSpace()
    rng = random.Random(11)
    for k in range(4):
        g = rollout(space, rng, 8, 16)
        src = kernel_source(g)
        assert "import kasrl" not in src and "from kasrl" not in src
        file = tmp_path / f"kernel{k}.py"
        file.write_text(src)
        module = build_module(g, 64, 12, 10)
        torch.manual_seed(0)
        x = torch.randn(2, 64, 12, 10)
        torch.save({"state": module.state_dict(), "x": x}, tmp_path / "io.pt")
        expected = module(x).detach()
        script = (
            "import importlib.util, torch, sys\n"
            f"spec = importlib.util.spec_from_file_location('k', r'{file}')\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            f"d = torch.load(r'{tmp_path / 'io.pt'}')\n"
            "k = m.Kernel(64, 12, 10); k.load_state_dict(d['state'])\n"
            f"torch.save(k(d['x']).detach(), r'{tmp_path / 'out.pt'}')\n"
        )
        subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
        got = torch.load(tmp_path / "out.pt")
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5, equal_nan=True)


def test_module_rejects_a_placement_where_sizes_are_not_integers():
    from kasrl.ir.sizes import SizeChoice
    from tests.helpers import build

    g = build([("group", (0,), {}), ("projection", (0,), dict(out="C", grouped=True))])
    g.sizes = {3: SizeChoice(True, -3)}  # C/8 groups
    build_module(g, 64, 4, 4)
    try:
        build_module(g, 4, 4, 4)  # C/8 is not an integer at C = 4
    except ValueError as e:
        assert "not a positive integer" in str(e) or "not an integer" in str(e)
    else:
        raise AssertionError("expected a ValueError")


def test_picture_png_and_svg(tmp_path):
    g = rollout(SearchSpace(), random.Random(2), 6, 10)
    png = draw_kernel(g, tmp_path / "k.png", "a kernel")
    svg = draw_kernel(g, tmp_path / "k.svg")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in svg.read_text()[:400]


def test_exported_source_is_lint_clean(tmp_path):
    """A user pastes the source into a project with a linter: no unused names, no undefined ones."""
    space = SearchSpace()
    rng = random.Random(5)
    for k in range(40):
        (tmp_path / f"kernel{k}.py").write_text(kernel_source(rollout(space, rng, 5, 25)))
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated", "--select", "F,E9", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:]
