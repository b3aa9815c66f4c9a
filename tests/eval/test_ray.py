"""The Ray executor, run inside a loopback-only network namespace (see ``conftest.py``).

Every test that starts Ray is marked ``ray``: the test process never starts it;
those bodies run in a subprocess under ``unshare --net`` and report back.
"""

from __future__ import annotations

import math
import sys

import pytest

from kasrl.eval.base import DEFAULT_PENALTIES
from kasrl.store.records import Status
from tests.eval.conftest import IN_NETNS
from tests.eval.planted import HogKernel, NaNKernel, RaisingKernel, SegfaultKernel, SleepingKernel
from tests.eval.test_executors import assert_same_outcomes, inline_reference


def require_namespace() -> None:
    """Raise unless this process is the re-run inside a loopback-only network namespace."""
    pytest.importorskip("ray")
    from kasrl.eval.ray_executor import loopback_only

    if not (IN_NETNS and loopback_only()):
        raise RuntimeError("refusing to start Ray outside a loopback-only network namespace")


def ray_evaluator(task, **kw):
    """A local Ray with one CPU per worker (two workers unless told)."""
    from kasrl.eval.ray_executor import RayEvaluator

    require_namespace()
    return RayEvaluator(task, kw.pop("workers", 2), "", 1.0, 0.0, **kw)


def test_the_namespace_has_only_loopback_and_it_is_up():
    import subprocess

    from kasrl.eval.ray_executor import netns_command, netns_problem

    problem = netns_problem()
    if problem:
        pytest.skip(problem)
    out = subprocess.run(netns_command(["cat", "/proc/self/net/dev"]), capture_output=True, text=True, check=True).stdout
    assert [line.split(":")[0].strip() for line in out.splitlines()[2:]] == ["lo"]
    check = "from kasrl.eval.ray_executor import loopback_only as f; raise SystemExit(0 if f() else 1)"
    assert subprocess.run(netns_command([sys.executable, "-c", check])).returncode == 0
    up = subprocess.run(netns_command(["ip", "-o", "link", "show", "lo"]), capture_output=True, text=True, check=True).stdout
    assert "UP" in up


@pytest.mark.ray
@pytest.mark.slow
def test_ray_gives_the_outcomes_of_in_process_evaluation(digits, digits_kernels, tmp_path):
    import ray

    from kasrl.store.sqlite import SQLiteStore

    task = digits[0]
    kernels = [digits_kernels[0], NaNKernel(), digits_kernels[1], RaisingKernel()]
    store = tmp_path / "results.db"
    ev = ray_evaluator(task, store_path=str(store))
    try:
        assert len(ev.devices) == 2 and all(d["allocator_pinned"] for d in ev.devices)  # the actors start pinned
        got = ev.evaluate_many(kernels)
        one = ev.evaluate(RaisingKernel())  # the single-kernel path
    finally:
        ev.close()
    assert not ray.is_initialized()  # it started Ray, so it shut it down
    assert [r.status.label for r in got] == ["ok", "numerics_error", "ok", "build_error"]
    assert_same_outcomes(got, inline_reference(task, kernels))
    assert_same_outcomes([one], [got[3]])
    with SQLiteStore(store) as s:  # the baseline was trained once, on an actor, and cached
        assert s.lookup(task.fingerprint, "baseline", fidelity="measured").metrics["accuracy"] > 50


@pytest.mark.ray
@pytest.mark.slow
def test_a_crashed_or_hung_ray_actor_is_replaced_and_the_search_goes_on(short_task, digits_kernels):
    ev = ray_evaluator(short_task, skip=("accuracy",), memory_limit=2 << 30)
    try:
        first = ev.evaluate_many([SegfaultKernel(), SleepingKernel(), digits_kernels[0], NaNKernel(), HogKernel()])
        restarts = ev.restarts
        then = ev.evaluate_many([digits_kernels[1], RaisingKernel(), digits_kernels[2]])
    finally:
        ev.close()
    assert [r.status.label for r in first] == ["crash", "timeout", "ok", "numerics_error", "oom"]  # oom: the actor's memory cap
    assert "the Ray actor died" in first[0].cause and first[0].reward == DEFAULT_PENALTIES["crash"]
    assert first[1].cause == "build: ran past its limit of 5 s; the Ray actor was killed"
    assert first[1].reward == DEFAULT_PENALTIES["timeout"]
    assert restarts == 2  # the segfault and the hang; the memory hog raised and the actor lived on
    assert [r.status.label for r in then] == ["ok", "build_error", "ok"]


@pytest.mark.ray
@pytest.mark.slow
def test_ray_runs_a_deap_generation_and_ppo_episodes(digits, quick_task, tmp_path):
    from agents.callbacks import StopOnBudget
    from agents.ppo import PPOOptions, make_agent, make_vec_env
    from kasrl.experiment.budget import BudgetedEvaluator
    from kasrl.experiment.config import RunConfig
    from kasrl.experiment.run import make_evaluator
    from kasrl.store.sqlite import SQLiteStore
    from kasrl.strategy import StrategyContext, make_strategy

    _, placements, space = digits
    cfg = RunConfig(task="digits_cnn", executor="ray", workers=2, store=str(tmp_path / "results.db"))
    store = SQLiteStore(cfg.store)
    require_namespace()  # make_evaluator starts Ray
    ev = make_evaluator(cfg, quick_task, placements, store, "test-run", "random")  # CachedEvaluator(RayEvaluator)
    try:
        # DEAP: the random start of a (mu + lambda) population, one generation evaluated on Ray at once
        deap_budget = BudgetedEvaluator(ev, evaluations=4)
        deap = make_strategy("mu_plus_lambda", StrategyContext(space, 7, budget=deap_budget), {"population": 4, "offspring": 2})
        asked = deap.ask_many(deap.batch_size())
        results = deap_budget.evaluate_many([p.kernel for p in asked])
        for proposal, result in zip(asked, results, strict=True):
            deap.tell(proposal, result)
        assert len(results) == 4 and all(isinstance(r.status, Status) and math.isfinite(r.reward) for r in results)
        assert store.count(run_id="test-run", strategy="random") == len({r.kernel_hash for r in results})
        assert all(r.cached for r in ev.evaluate_many([p.kernel for p in asked[:2]]))  # the store answers repeats

        # PPO: MaskablePPO's vectorised envs ask the Ray evaluator for each finished episode's reward
        ppo_budget = BudgetedEvaluator(ev, evaluations=2)
        opts = PPOOptions(n_envs=2, n_steps=4, batch_size=4, n_epochs=1, hidden=8)
        agent = make_agent(make_vec_env(space, ppo_budget, opts.n_envs, seed=0), opts, seed=0, space=space)
        agent.learn(10**6, callback=StopOnBudget(ppo_budget))
    finally:
        ev.close()
        store.close()
    assert ppo_budget.spent == 2
    assert all(math.isfinite(h["reward"]) and isinstance(Status.from_name(h["status"]), Status) for h in ppo_budget.history)
