"""The competition: random vs PPO vs DEAP on equal budgets.

    python compete.py [--config configs/compete.yaml] [--resume COMPETITION_DIR] [key=value ...]

Pseudocode::

    for strategy in strategies, for seed in seeds:        # skipping runs already finished
        run = Run(same task, same budget, this seed, wandb group = the competition)
        spend the budget with the strategy                # one evaluation = one unit, cache hits too
        write the run's history and best kernels
    report: best-so-far curves, fronts with hypervolume, rank tests vs random, report.md

A killed competition restarts with ``--resume COMPETITION_DIR`` and skips the runs
it finished (an unfinished run, or one whose task, fidelity or budget has changed
since, is started again from scratch). A run that fails is reported and left for
``--resume``; the others go on.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from kasrl.errors import ConfigError, KasrlError
from kasrl.experiment.cli import fail, parse_cli
from kasrl.experiment.config import CONFIGS_DIR, RunConfig, to_dict
from kasrl.experiment.report import markdown_table, write_report
from kasrl.strategy import strategy_spec


@dataclass
class CompeteConfig(RunConfig):
    """A competition: every strategy x seed on the same task and budget.

    ``strategy`` and ``options`` of a single run are unused: ``strategies`` names
    the contenders and ``strategy_options`` holds each one's options by name.
    """

    strategies: list[str] = field(default_factory=lambda: ["random_prior", "ppo", "aging", "nsga2", "mu_plus_lambda", "mcts"])
    """Strategies to run (names from kasrl/configs/strategies/)."""
    strategy_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Options per strategy name, over each one's registry file."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds per strategy (at least 2 for the rank test)."""
    name: str = ""
    """Competition folder name under `out` (default compete__<task>__<unix time>)."""

    def validate(self) -> None:
        super().validate()
        if not self.strategies or not self.seeds:
            raise ConfigError("`strategies` and `seeds` must not be empty")
        for s in self.strategies:
            try:
                strategy_spec(s)
            except ConfigError as e:
                raise ConfigError(f"`strategies`: {e}") from None
        for s in self.strategy_options:  # options of a strategy not run are kept (a config shared by several runs)
            try:
                strategy_spec(s)
            except ConfigError as e:
                raise ConfigError(f"`strategy_options.{s}`: {e}") from None


def _common(cfg: CompeteConfig, seed: int, out: Path, group: str, strategy: str) -> dict:
    base = {f: getattr(cfg, f) for f in RunConfig.__dataclass_fields__}
    base.update(seed=seed, out=str(out), wandb=replace(cfg.wandb, group=group), strategy=strategy,
                options=dict(cfg.strategy_options.get(strategy, {})))
    return base


def run_one(cfg: CompeteConfig, strategy: str, seed: int, out: Path, group: str, tracker: bool) -> dict:
    """Run one strategy x seed to its budget; returns the run's summary."""
    from kasrl.study import Study

    study = Study(RunConfig(**_common(cfg, seed, out, group, strategy)), tracker=tracker)
    try:
        study.optimize()
    except BaseException:
        study.close()
        raise
    rows = study.finish()
    best = None
    if rows:
        b = rows[0]
        best = {"hash": b["hash"], "reward": b["reward"], "speedup": b["speedup"], "accuracy": b["accuracy"]}
    return {"strategy": strategy, "seed": seed, "dir": str(study.run.dir.resolve()), "history": study.run.evaluator.history,
            "best": best, "settings": settings(cfg)}


def settings(cfg: CompeteConfig) -> dict:
    """What makes two runs comparable: a finished run counts on resume only if these still match."""
    return {"task": cfg.task, "fidelity": cfg.fidelity, "evaluations": cfg.budget.evaluations, "seconds": cfg.budget.seconds}


def main(argv: list | None = None) -> int:
    try:
        cfg, resume = parse_cli(CompeteConfig, CONFIGS_DIR / "compete.yaml", argv, "compete.py", __doc__.split("\n")[0])
        folder = Path(resume) if resume else Path(cfg.out) / (cfg.name or f"compete__{Path(cfg.task).stem}__{int(time.time())}")
        folder.mkdir(parents=True, exist_ok=True)
        if not resume:  # what --resume reloads, and the command the report quotes
            (folder / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
            (folder / "command.txt").write_text("python compete.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    except (KasrlError, OSError) as e:
        return fail("compete.py", e)
    done_file = folder / "finished.json"
    finished = json.loads(done_file.read_text()) if done_file.is_file() else {}
    command = (folder / "command.txt").read_text() if (folder / "command.txt").is_file() else f"python compete.py --resume {folder}"
    tracker = cfg.wandb.mode != "disabled"
    import torch

    torch.set_num_threads(1)  # the policy's and the solver's threads must not spin beside a timing
    failed = []
    for strategy in cfg.strategies:
        for seed in cfg.seeds:
            key = f"{strategy}:{seed}"
            if key in finished and finished[key].get("settings") == settings(cfg):
                print(f"skipping {key}: finished in an earlier session")
                continue
            partial = folder / "runs"
            for stale in partial.glob(f"*__{strategy}__{seed}__*"):
                shutil.rmtree(stale)  # an interrupted (or differently budgeted) run starts again from scratch
            try:
                summary = run_one(cfg, strategy, seed, partial, folder.name, tracker)
            except KasrlError as e:  # one broken run does not end the competition; --resume retries it
                print(f"compete.py: {key} failed: {e}", file=sys.stderr)
                finished.pop(key, None)
                failed.append(key)
                continue
            finished[key] = summary
            tmp = done_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(finished))
            tmp.replace(done_file)
    if failed:
        print(f"compete.py: error: runs {', '.join(failed)} failed; fix the cause and continue with --resume {folder}", file=sys.stderr)
        return 1
    runs = [finished[f"{s}:{seed}"] for s in cfg.strategies for seed in cfg.seeds]
    summary = write_report(runs, folder, f"Competition on {cfg.task} ({cfg.fidelity})", cfg.budget.evaluations, command, cfg.fidelity)
    _log_competition(cfg, folder, summary)
    print(markdown_table(summary))
    print(f"report: {folder / 'report.md'}")
    return 0


def _log_competition(cfg: CompeteConfig, folder: Path, summary: dict) -> None:
    """The competition's own wandb run: the summary table and both plots."""
    if cfg.wandb.mode == "disabled":
        return
    from kasrl.tracking import Tracker

    with Tracker.start(cfg.wandb.project, f"{folder.name}__report", folder.name, {"strategies": cfg.strategies, "seeds": cfg.seeds},
                       str(folder), cfg.wandb.mode or None) as tracker:
        cols = ["strategy", "seeds", "best_reward_median", "speedup_of_best", "accuracy_of_best", "evals_to_reach_random_best", "hypervolume", "p_vs_random"]
        tracker.log_table("competition/summary", cols, [[r[c] if r[c] is not None else float("nan") for c in cols] for r in summary["rows"]])
        tracker.log_image("competition/best_so_far", str(folder / "best_so_far.png"))
        tracker.log_image("competition/pareto", str(folder / "pareto.png"))


if __name__ == "__main__":
    raise SystemExit(main())
