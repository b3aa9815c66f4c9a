"""``python -m kasrl show``, ``evaluate`` (sizes fitted to the task) and ``export``."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

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
    for args in (["show", str(tmp_path / "missing.json")], ["show", str(tmp_path / "bad.json")],
                 ["show", str(tmp_path / "bad.json"), "--shape", "64x56"]):
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


# -- kernels whose stored sizes do not fit, and export ---------------------------------------------------------
def _grouped_in_32(tmp_path):
    """Groups of the constant size 32: legal where 32 divides C, so not at digits_cnn's 16x14x14."""
    from kasrl.ir.dims import free_symbol
    from kasrl.ir.sizes import SizeChoice
    from tests.helpers import build

    g = build([("group", (0,), {}), ("projection", (0,), dict(out="C", grouped=True)),
               ("conv", (0,), dict(kh=3, kw=3, dilation=1, out="depthwise"))])
    g.sizes = {free_symbol(0): SizeChoice(ratio=False, exp=5)}
    return save_kernel(g, tmp_path / "grouped.json")


def test_show_re_solves_sizes_that_do_not_fit_and_refuses_where_none_exist(tmp_path):
    path = _grouped_in_32(tmp_path)
    fits = _run("show", str(path), "--shape", "64x8x8")
    assert fits.returncode == 0 and "re-solved" not in fits.stdout
    r = _run("show", str(path), "--task", "digits_cnn")
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stdout.splitlines() if "re-solved" in line]
    assert len(notes) == 1 and "re-solved the kernel's free sizes for 16x14x14, 32x7x7" in notes[0] and "x0=32 ->" in notes[0]
    assert "# at 16x14x14: FLOPs" in r.stdout
    bad = _run("show", str(path), "--shape", "3x8x8")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "the kernel has no legal sizes at --shape 3x8x8 (3x8x8): no choice of free sizes makes every dimension" in bad.stderr


def test_evaluate_refuses_a_kernel_without_legal_sizes_at_the_task_in_one_line(tmp_path):
    path = _grouped_in_32(tmp_path)
    task = tmp_path / "odd.yaml"
    task.write_text("network: {target: tests.tasks.userland:tiny_net, kwargs: {width: 3}}\n"
                    "dataset: {target: tests.tasks.userland:digits_tensors}\n")
    r = _run("evaluate", str(path), "--task", str(task), "--inline", cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "the kernel has no legal sizes at task odd's placements (3x8x8, 6x4x4)" in r.stderr


@pytest.mark.slow
def test_evaluate_re_solves_for_the_task_and_evaluates(tmp_path):
    r = _run("evaluate", str(_grouped_in_32(tmp_path)), "--task", "digits_cnn", "--inline")
    assert "re-solved the kernel's free sizes for 16x14x14, 32x7x7" in r.stdout.splitlines()[0], r.stdout + r.stderr
    assert "status ok" in r.stdout, r.stdout + r.stderr


def test_export_writes_each_kernel_and_a_usage_note(tmp_path):
    import importlib.util

    import torch

    import kasrl

    study = kasrl.Study(task="digits_cnn", strategy="random", fidelity="analytic", executor="inline", out=str(tmp_path / "runs"),
                        store=str(tmp_path / "r.db"), wandb={"mode": "disabled"}, budget={"evaluations": 4}, tracker=False, progress=False)
    study.optimize()
    best = study.best_kernels
    study.finish()
    out = tmp_path / "exported"
    r = _run("export", str(study.run.dir), "--top", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    n = min(2, len(best))
    assert f"exported {n} kernel" in r.stdout
    stems = [f"kernel{i + 1}_{rec.result.kernel_hash[:16]}" for i, rec in enumerate(best[:n])]
    assert sorted(p.name for p in out.iterdir()) == sorted(["README.md", *(s + ext for s in stems for ext in (".json", ".py", ".png"))])
    note = (out / "README.md").read_text()
    assert "kasrl.apply(copy.deepcopy(model)" in note and f"from {stems[0]} import Kernel" in note and "16x14x14, 32x7x7" in note
    spec = importlib.util.spec_from_file_location(stems[0], out / f"{stems[0]}.py")  # standalone: it needs only torch
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.Kernel(16, 14, 14)(torch.zeros(2, 16, 14, 14)).shape == (2, 16, 14, 14)
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1))
    assert kasrl.apply(model, out / f"{stems[0]}.json", input_shape=(16, 14, 14))(torch.zeros(1, 16, 14, 14)).shape == (1, 16, 14, 14)


def test_export_of_a_folder_that_is_not_a_run_is_one_line(tmp_path):
    r = _run("export", str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip() == f"error: {tmp_path}: not a run folder (no config.yaml)"
