"""The three algorithms: survivor rules, the Pareto front, checkpoint/resume, configs and the CLI."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time

import pytest

from evolution.algorithms import AgingEvolution, EvolutionOptions
from evolution.report import non_dominated
from kasrl.errors import ConfigError
from kasrl.eval.base import EvalResult, Evaluator
from kasrl.experiment.budget import BudgetedEvaluator, evaluate_rounds
from kasrl.experiment.config import RunConfig, from_mapping, load_config
from kasrl.ir.graph import KernelGraph
from kasrl.solver.budget import Budget, Placement
from kasrl.space import SearchSpace, SpaceConfig
from kasrl.store.records import Status
from kasrl.strategy import StrategyContext, make_options, make_strategy
from kasrl.study import Study

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "kasrl" / "configs"


@pytest.fixture(scope="module")
def space():
    return SearchSpace((Placement(32, 14, 14), Placement(64, 7, 7)), Budget(flops=1.0, params=1.0, max_tensor=16.0),
                       SpaceConfig(min_steps=3, max_steps=10, max_width=4))


def _result(reward: float, objectives=(1.0, 1.0), ok: bool = True) -> EvalResult:
    return EvalResult(Status.OK if ok else Status.BUILD_ERROR, reward, {}, objectives if ok else (0.0, 0.0), kernel_hash="h")


def _make(name: str, space, seed: int = 0, **options):
    """An evolution from the registry, its random start drawn family first (no policy to build)."""
    return make_strategy(name, StrategyContext(space, seed), {"start": "family", **options})


def _cfg(tmp_path, *overrides) -> RunConfig:
    base = ["fidelity=analytic", "executor=inline", "wandb.mode=disabled", f"out={tmp_path}/runs", f"store={tmp_path}/results.db",
            "budget.evaluations=1000", "budget.seconds=3600", "space.min_steps=3", "space.max_steps=10", "space.max_width=4",
            "strategy=aging", "options.population=6", "options.offspring=4", "options.sample=3", "checkpoint_every=0"]
    return load_config(RunConfig, None, base + list(overrides))


def _evolve(cfg: RunConfig, resume_dir=None):
    study = Study(cfg, resume=resume_dir, tracker=False, progress=False)
    try:
        study.optimize()
        history = [(h["hash"], round(h["reward"], 9)) for h in study.history]
    finally:
        study.close()
    return study.run, study.strategy, history


def test_aging_evolution_removes_the_oldest_not_the_worst(space):
    s = _make("aging", space, population=4, offspring=1, sample=2)
    assert isinstance(s, AgingEvolution)
    rewards = [9.0, -5.0, 1.0, 2.0, 0.5, 0.7, -9.0]  # the oldest is the best; the worst is second
    for r in rewards:
        p = s.ask()
        s.tell(p, _result(r))
    assert s.removed == [0, 1, 2]  # birth order, not fitness order
    assert [ind.uid for ind in s.population] == [3, 4, 5, 6]
    assert -9.0 in [ind.reward for ind in s.population] and 9.0 not in [ind.reward for ind in s.population]
    assert s.hall_of_fame[0].reward == 9.0  # still remembered by the hall of fame


def test_aging_children_are_mutants_of_the_best_of_the_sample(space):
    s = _make("aging", space, 1, population=3, offspring=1, sample=3)  # the sample is the whole population
    for r in (0.1, 5.0, 0.2):
        s.tell(s.ask(), _result(r))
    best = max(s.population, key=lambda ind: ind.reward)
    child = s.ask().meta["individual"]
    assert child.origin == "mutation" and child.hash not in {ind.hash for ind in s.population}
    # a single-step mutation of the best parent: at most a few steps differ (repairs aside)
    assert abs(len(child) - len(best)) <= 1 + child.repairs


@pytest.mark.parametrize("algorithm", ["aging", "nsga2"])
def test_state_dict_survives_json_and_continues_the_same_stream(space, algorithm):
    opts = {"population": 4, "offspring": 2, "start": "prior"}
    s = make_strategy(algorithm, StrategyContext(space, 5), opts)
    for i in range(7):
        s.tell(s.ask(), _result(0.1 * i, (1.0 + i % 3, 2.0 - i % 2)))
    t = make_strategy(algorithm, StrategyContext(space, 123), opts)
    t.load_state_dict(json.loads(json.dumps(s.state_dict())))
    for i in range(3):
        a, b = s.ask(), t.ask()
        assert a.actions == b.actions
        s.tell(a, _result(float(i), (1.0, 1.0)))
        t.tell(b, _result(float(i), (1.0, 1.0)))
    assert [ind.uid for ind in s.population] == [ind.uid for ind in t.population]


def test_mu_plus_lambda_keeps_the_best_of_parents_and_children(space):
    s = _make("mu_plus_lambda", space, 2, population=4, offspring=3, tournament=2)
    rng = random.Random(0)
    told = []
    for _ in range(4 + 3 * 3):
        r = rng.uniform(-1, 1)
        s.tell(s.ask(), _result(r))
        told.append(r)
    assert sorted(ind.reward for ind in s.population) == sorted(told)[-4:]


def test_nsga2_front_is_non_dominated_and_complete(tmp_path):
    cfg = _cfg(tmp_path, "strategy=nsga2", "options.generations=4")
    run, strategy, _ = _evolve(cfg)
    front = [ind.objectives for ind in strategy.pareto_front]
    assert front
    for i, p in enumerate(front):
        for j, q in enumerate(front):
            assert i == j or not (q[0] >= p[0] and q[1] >= p[1] and q != p), f"{q} dominates {p}"
    points = [tuple(h["objectives"]) for h in run.evaluator.history if h["status"] == "ok"]
    assert {points[i] for i in non_dominated(points)} == set(front)  # every non-dominated evaluation is on it
    assert len(strategy.population) == 6 and strategy.generation == 5
    assert all(isinstance(v, float) for ind in strategy.population for v in ind.fitness.values)


@pytest.mark.parametrize("algorithm", ["aging", "mu_plus_lambda", "nsga2"])
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, algorithm):
    """N generations in one go, or K generations, stop, resume to N: the same evaluations, best and front."""
    full_cfg = _cfg(tmp_path / "a", f"strategy={algorithm}", "options.generations=5", "seed=3")
    _, full, full_history = _evolve(full_cfg)

    part_cfg = _cfg(tmp_path / "b", f"strategy={algorithm}", "options.generations=2", "seed=3")
    run, _, part_history = _evolve(part_cfg)
    assert len(part_history) == 6 + 2 * 4 and (run.dir / "checkpoint.pkl").is_file()
    resumed_cfg = from_mapping(part_cfg, {"options": {**part_cfg.options, "generations": 5}})
    _, resumed, resumed_history = _evolve(resumed_cfg, resume_dir=str(run.dir))

    assert len(full_history) == 6 + 5 * 4
    assert resumed_history == full_history
    assert resumed.best.best_reward == full.best.best_reward
    assert [ind.hash for ind in resumed.population] == [ind.hash for ind in full.population]
    assert sorted(ind.hash for ind in resumed.pareto_front) == sorted(ind.hash for ind in full.pareto_front)
    assert [r["evals"] for r in resumed.logbook] == [r["evals"] for r in full.logbook]
    assert resumed.rng.getstate() == full.rng.getstate()


def test_the_strategy_can_be_driven_by_ask_and_tell(tmp_path):
    """A user's own loop: ask, evaluate, tell, ten times."""
    study = Study(_cfg(tmp_path, "budget.evaluations=10"), tracker=False, progress=False)
    for _ in range(10):
        proposal = study.ask()
        study.tell(proposal, study.evaluate(proposal.kernel))
    study.close()
    s = study.strategy
    assert study.run.evaluator.spent == 10 and s.n_told == 10 and len(s.population) == 6


class _SlowEvaluator(Evaluator):
    """Answers every kernel after ``seconds``."""

    fidelity = "analytic"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def evaluate(self, kernel) -> EvalResult:
        time.sleep(self.seconds)
        return _result(1.0)


def test_a_round_checks_the_clock_between_rounds_of_workers():
    """A generation never overshoots ``budget.seconds`` by more than one round of evaluations."""
    ev = BudgetedEvaluator(_SlowEvaluator(0.2), evaluations=100, seconds=0.3)
    results = evaluate_rounds(ev, [KernelGraph() for _ in range(6)], chunk=1)
    assert len(results) == 2 and ev.spent == 2  # 0.2 s, 0.4 s: the third never starts
    ev = BudgetedEvaluator(_SlowEvaluator(0.0), evaluations=5)
    assert len(evaluate_rounds(ev, [KernelGraph() for _ in range(6)], chunk=2)) == 5  # the count budget cuts the last round


@pytest.mark.parametrize(
    "override,key",
    [
        ({"population": 1}, "`options.population`"),
        ({"offspring": 0}, "`options.offspring`"),
        ({"sample": 50}, "`options.sample`"),
        ({"tournament": 0}, "`options.tournament`"),
        ({"cxpb": 1.5}, "`options.cxpb`"),
        ({"mutpb": -0.1}, "`options.mutpb`"),
        ({"crossover": "uniform"}, "`options.crossover`"),
        ({"generations": -1}, "`options.generations`"),
        ({"novelty_tries": 0}, "`options.novelty_tries`"),
        ({"start": "anywhere"}, "`options.start`"),
        ({"popsize": 8}, "`options.popsize`"),
        ({"population": "many"}, "`options.population`"),
    ],
)
def test_bad_option_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        make_options("aging", override)


def test_the_shipped_configs_load_with_the_documented_defaults():
    cfg = load_config(RunConfig, CONFIGS / "evolve.yaml", [])
    assert cfg.strategy == "aging" and cfg.options == {}
    assert make_options("aging", cfg.options) == EvolutionOptions(population=12, offspring=6, sample=4)
    assert make_options("nsga2", {"population": 8}).population == 8
    with pytest.raises(ConfigError, match=re.escape("`budget.evaluations` must be at least 1")):
        load_config(RunConfig, CONFIGS / "evolve.yaml", ["budget.evaluations=0"])


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "evolve.py", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_bad_value_is_one_line_naming_the_key(tmp_path):
    r = _cli("strategy=nsga3", f"out={tmp_path}")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "unknown strategy 'nsga3'" in r.stderr and "'nsga2'" in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_cli_runs_writes_the_front_and_resumes(tmp_path):
    """A tiny analytic run writes the front (JSON, source, picture), the scatter and the
    leaderboard; ``--resume`` with more budget continues from the checkpoint."""
    args = ["fidelity=analytic", "executor=inline", "wandb.mode=disabled", f"out={tmp_path}", f"store={tmp_path}/r.db", "strategy=nsga2",
            "budget.evaluations=14", "options.population=6", "options.offspring=4", "space.max_steps=10", "space.max_width=4"]
    r = _cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    for name in ("pareto.png", "front.json", "leaderboard.md", "logbook.txt", "checkpoint.pkl", "history.json"):
        assert (run_dir / name).is_file(), name
    front = json.loads((run_dir / "front.json").read_text())
    assert front and {p.suffix for p in (run_dir / "front").iterdir()} == {".json", ".py", ".png"}
    assert "Pareto front" in r.stdout and "best kernels" in r.stdout
    r = _cli("--resume", str(run_dir), "budget.evaluations=22")
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(json.loads((run_dir / "history.json").read_text())) == 22
