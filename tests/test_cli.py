"""``python -m kasrl show``."""

from __future__ import annotations

import random
import subprocess
import sys

from kasrl.ir.serialize import save_kernel
from kasrl.space import SearchSpace
from tests.helpers import rollout


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "kasrl", *args], capture_output=True, text=True, cwd=cwd)


def test_show_prints_source_cost_and_writes_the_picture(tmp_path):
    g = rollout(SearchSpace(), random.Random(1), 6, 12)
    path = save_kernel(g, tmp_path / "k.json")
    r = _run("show", str(path), "--shape", "64x56x56")
    assert r.returncode == 0, r.stderr
    assert "class Kernel(nn.Module):" in r.stdout
    assert "x a 3x3 conv" in r.stdout
    assert (tmp_path / "k.png").exists()


def test_show_bad_input_is_one_line_and_status_2(tmp_path):
    (tmp_path / "bad.json").write_text('{"schema": "kasrl.kernel", "version": 1, "nodes": [')
    for args in (["show", str(tmp_path / "missing.json")], ["show", str(tmp_path / "bad.json")], ["show", str(tmp_path / "bad.json"), "--shape", "64x56"]):
        r = _run(*args)
        assert r.returncode == 2
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "bad.png").exists()
