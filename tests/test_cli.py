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
    for args in (["show", str(tmp_path / "missing.json")], ["show", str(tmp_path / "bad.json")], ["show", str(tmp_path / "bad.json"),
                                                                                                  "--shape", "64x56"]):
        r = _run(*args)
        assert r.returncode == 2
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "bad.png").exists()


# -- latency profiles: calibrate and predict (in this process: the commands' own start-up is the slow part) --
def test_calibrate_then_predict(tmp_path, monkeypatch, capsys):
    """`calibrate` writes a profile that `predict` uses at the task's two placements."""
    from kasrl.cli import main

    monkeypatch.setenv("KASRL_LATENCY_DIR", str(tmp_path / "profiles"))
    prof = tmp_path / "dev.json"
    assert main(["calibrate", "--seconds", "1", "--out", str(prof), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"wrote latency profile {prof}" in out and "3x3 conv at 32x14x14" in out
    kernel = save_kernel(rollout(SearchSpace(), random.Random(2), 4, 8), tmp_path / "k.json")
    assert main(["predict", str(kernel), "--profile", str(prof)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "predicted" in line]
    assert len(lines) == 2 and "32x14x14" in lines[0] and "64x7x7" in lines[1] and "speedup" in lines[0]


def test_latency_commands_bad_input_is_one_line_status_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """Bad input to `calibrate`/`predict`: one line, status 2, no file written."""
    from kasrl.cli import main

    monkeypatch.setenv("KASRL_LATENCY_DIR", str(tmp_path / "profiles"))
    kernel = save_kernel(rollout(SearchSpace(), random.Random(2), 4, 8), tmp_path / "k.json")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"schema": "kasrl.latency-profile", "version": 1,')
    cases = [
        ["calibrate", "--seconds", "-1", "--out", str(tmp_path / "never.json")],
        ["calibrate", "--task", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "never.json")],
        ["calibrate", "--out", str(tmp_path)],  # a directory
        ["predict", str(kernel), "--profile", str(corrupt)],
        ["predict", str(kernel), "--profile", str(tmp_path / "missing.json")],
        ["predict", str(kernel)],  # no profile for this device yet
        ["predict", str(tmp_path / "missing-kernel.json"), "--profile", str(corrupt)],
    ]
    for args in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (args, err)
    assert not (tmp_path / "never.json").exists() and not (tmp_path / "profiles").exists()
    r = _run("predict", str(kernel), "--profile", str(corrupt))  # and as a command
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "corrupt.json" in r.stderr
