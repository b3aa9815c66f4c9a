"""The examples run end to end: a network and data of one's own (examples/own_network/), and the notebook-style API script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _only_run(out: Path) -> Path:
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


def test_own_network_example_runs_with_the_analytic_fidelity(tmp_path):
    """README's quick check (examples/own_network/README.md), into a temporary folder."""
    r = _run(["train_agent.py", "task=examples/own_network/task.yaml", "strategy=random", "fidelity=analytic", "budget.evaluations=20",
              "wandb.mode=disabled", f"out={tmp_path}", f"store={tmp_path / 'results.db'}"], timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    run = _only_run(tmp_path)
    assert run.name.startswith("own_network__random__0__")
    assert len(json.loads((run / "history.json").read_text())) == 20 and list((run / "kernels").glob("*.json"))


def test_the_notebook_script_searches_then_applies_the_best_kernel(tmp_path):
    """examples/notebook_api.py: optimize, ask/evaluate/tell by hand, best_kernels, kasrl.apply on the user's model."""
    r = _run(["examples/notebook_api.py", str(tmp_path)], timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "after optimize: 8 evaluations" in r.stdout and "Kernel in block1; Kernel in block2" in r.stdout
    assert len(json.loads((_only_run(tmp_path) / "history.json").read_text())) == 12


@pytest.mark.slow
def test_own_network_example_runs_measured(tmp_path):
    """README's measured command with a smaller budget: real latency and training in worker processes."""
    r = _run(["train_agent.py", "task=examples/own_network/task.yaml", "strategy=random", "budget.evaluations=3", "wandb.mode=disabled",
              f"out={tmp_path}", f"store={tmp_path / 'results.db'}"], timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    history = json.loads((_only_run(tmp_path) / "history.json").read_text())
    assert len(history) == 3 and any("m_accuracy" in h for h in history)
