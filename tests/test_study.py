"""The Python API: a study's loop, ask / evaluate / tell by hand, errors, resume."""

from __future__ import annotations

import re

import pytest

import kasrl
from kasrl.errors import ConfigError
from kasrl.eval.base import EvalResult
from kasrl.store.records import Status
from kasrl.store.sqlite import SQLiteStore


def _fields(tmp_path, **more) -> dict:
    base = {"task": "digits_cnn", "fidelity": "analytic", "executor": "inline", "out": str(tmp_path / "runs"),
            "store": str(tmp_path / "r.db"), "wandb": {"mode": "disabled"}, "space": {"max_steps": 8}, "budget": {"evaluations": 6}}
    return {**base, **more}


def test_optimize_spends_the_budget_and_ranks_the_kernels(tmp_path):
    study = kasrl.Study(**_fields(tmp_path, strategy="random_family"), tracker=False, progress=False)
    best = study.optimize()
    assert study.run.evaluator.spent == 6 and len(study.history) == 6
    assert best and [r.result.reward for r in best] == sorted((r.result.reward for r in best), reverse=True)
    rows = study.finish()
    assert rows and (study.run.dir / "leaderboard.md").is_file()


def test_ppo_can_be_driven_by_hand_and_stops_cleanly(tmp_path):
    """PPO runs its own rollouts in a thread; ask / tell from a user's loop still works, and close() ends it."""
    options = {"n_envs": 2, "n_steps": 8, "batch_size": 8, "hidden": 16}
    study = kasrl.Study(**_fields(tmp_path, strategy="ppo", options=options), tracker=False, progress=False)
    for _ in range(5):
        proposal = study.ask()
        assert proposal.kernel.is_finished
        study.tell(proposal, study.evaluate(proposal.kernel))
    study.close()
    assert study.run.evaluator.spent == 5
    assert study.strategy._thread is None  # the PPO thread has ended


def test_a_result_from_elsewhere_is_counted_but_not_stored(tmp_path):
    study = kasrl.Study(**_fields(tmp_path), tracker=False, progress=False)
    proposal = study.ask()
    mine = EvalResult(Status.OK, 0.25, {"speedup": 1.3}, (1.3, 90.0), fidelity="mine")
    study.tell(proposal, mine)
    study.close()
    assert study.history[0]["reward"] == 0.25 and study.run.evaluator.spent == 1
    with SQLiteStore(tmp_path / "r.db") as store:
        assert store.count() == 0  # the shared cache holds the task's own evaluations only


@pytest.mark.parametrize("fields, key", [({"budget": {"evaluatons": 3}}, "budget.evaluatons"), ({"seed": "x"}, "seed"),
                                         ({"strategy": "anealing"}, "unknown strategy 'anealing'"),
                                         ({"options": {"populaton": 3}, "strategy": "aging"}, "options.populaton")])
def test_a_bad_field_is_one_line_naming_it_and_nothing_is_written(tmp_path, fields, key):
    with pytest.raises(ConfigError, match=re.escape(key)) as e:
        kasrl.Study(**_fields(tmp_path, **fields), tracker=False, progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "runs").exists()


def test_a_study_resumes_from_its_run_folder(tmp_path):
    study = kasrl.Study(**_fields(tmp_path, strategy="aging", options={"population": 4, "offspring": 2, "start": "family"}),
                        tracker=False, progress=False)
    study.optimize()
    study.finish()
    again = kasrl.Study(resume=str(study.run.dir), budget={"evaluations": 10}, tracker=False, progress=False)
    again.optimize()
    again.close()
    assert [h["evaluation"] for h in again.history] == list(range(1, 11))
    assert again.strategy.n_told == 10
