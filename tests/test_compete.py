"""The competition: equal budgets, every report file, resume skips finished runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import compete

TINY = ["fidelity=analytic", "wandb.mode=disabled", "budget.evaluations=5", "seeds=[0,1]", "strategies=[random_prior,aging]",
        "space.max_steps=10", "name=tiny", "strategy_options={aging: {population: 4, offspring: 2}}"]


def _argv(tmp: Path) -> list:
    return [*TINY, f"out={tmp}", f"store={tmp}/results.db"]


def test_tiny_competition_writes_every_report_file_and_spends_exactly_the_budget(tmp_path):
    assert compete.main(_argv(tmp_path)) == 0
    folder = tmp_path / "tiny"
    for name in ("report.md", "summary.json", "anytime.png", "pareto.png", "finished.json", "config.yaml"):
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    summary = json.loads((folder / "summary.json").read_text())
    assert [r["strategy"] for r in summary["rows"]] == ["random_prior", "aging"]
    assert all(r["judged"] == [5, 5] for r in summary["rows"])
    prior, aging = summary["rows"]
    assert prior["p"] is None and aging["baseline"] == "random_prior"
    assert 0.0 < aging["p"] <= 1.0 and aging["p_holm"] == pytest.approx(aging["p"])
    finished = json.loads((folder / "finished.json").read_text())
    assert sorted(finished) == ["aging:0", "aging:1", "random_prior:0", "random_prior:1"]
    assert all(len(run["history"]) == 5 for run in finished.values())
    report = (folder / "report.md").read_text()
    assert "| random_prior | - | 2 |" in report and "| aging | random_prior | 2 |" in report and "anytime.png" in report
    assert "Kernels judged per seed: random_prior 5/5; aging 5/5." in report
    assert "Within seed noise at this budget: aging" in report  # 2 seeds cannot show anything


def test_a_killed_competition_resumes_without_rerunning_finished_runs(tmp_path, monkeypatch):
    real = compete.run_one
    calls: list = []

    def killed_on_third(cfg, strategy, seed, *args, **kw):
        calls.append((strategy, seed))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the machine went away during aging seed 0
        return real(cfg, strategy, seed, *args, **kw)

    monkeypatch.setattr(compete, "run_one", killed_on_third)
    with pytest.raises(KeyboardInterrupt):
        compete.main(_argv(tmp_path))
    folder = tmp_path / "tiny"
    assert sorted(json.loads((folder / "finished.json").read_text())) == ["random_prior:0", "random_prior:1"]

    calls.clear()
    monkeypatch.setattr(compete, "run_one", lambda *a, **kw: calls.append(a[1:3]) or real(*a, **kw))
    assert compete.main(["--resume", str(folder)]) == 0
    assert calls == [("aging", 0), ("aging", 1)]
    assert sorted(json.loads((folder / "finished.json").read_text())) == ["aging:0", "aging:1", "random_prior:0", "random_prior:1"]
    runs = sorted(p.name.split("__")[1:3] for p in (folder / "runs").iterdir())
    assert runs == [["aging", "0"], ["aging", "1"], ["random_prior", "0"], ["random_prior", "1"]]  # the killed run's folder was replaced


def test_unknown_strategy_is_one_line_naming_the_key(tmp_path, capsys):
    assert compete.main([*_argv(tmp_path), "strategies=[random_prior,annealing]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "`strategies`" in err[0] and "annealing" in err[0]
    assert not (tmp_path / "tiny").exists()


def test_a_contender_without_its_matched_baseline_is_refused(tmp_path, capsys):
    assert compete.main([*_argv(tmp_path), "strategies=[ppo,aging]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "`strategies`: 'ppo' is compared with its matched baseline 'random_prior', which is not among them" in err
