"""The competition: learned and evolutionary search against their matched random baselines, on equal time budgets.

    python compete.py [--config kasrl/configs/compete.yaml] [--resume COMPETITION_DIR] [key=value ...]

Pseudocode::

    for strategy in strategies, for seed in seeds:        # skipping runs already finished
        study = Study(same task, same budget in seconds, this seed, wandb group = the competition)
        study.optimize()                                  # every strategy through the same loop
        confirm its best kernels: retrained over seeds, paired with the baseline network
    report: per-seed best confirmed rewards, one-sided Mann-Whitney against each
    contender's matched baseline (its registry file's `baseline`: the strategy that
    starts from the same distribution) with Holm's correction, hypervolume per seed
    against (speedup 1, baseline accuracy - tolerance), anytime curves, report.md

The matched baselines share the contenders' prior: ``random_prior`` draws from the
untrained PPO policy that PPO starts from (and the evolutions' random start draws from
it too), so a difference measures what was learned, not the prior. The PPO options
that shape that policy are passed to ``random_prior`` and to the evolutions' start.

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

    strategies: list[str] = field(default_factory=lambda: ["random_prior", "random_family", "ppo", "aging", "mu_plus_lambda", "nsga2",
                                                           "mcts"])
    """Strategies to run (names from kasrl/configs/strategies/); each one's matched baseline must be among them."""
    strategy_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Options per strategy name, over each one's registry file."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """Seeds per strategy (at least 5 for a rank test that can reach p < 0.05 after Holm's correction)."""
    name: str = ""
    """Competition folder name under `out` (default compete__<task>__<unix time>)."""
    confirm_top: int = 1
    """Best kernels of each run retrained over seeds before ranking (0: rank by single runs)."""
    confirm_seeds: int = 3
    """Training seeds of each confirmation."""

    def validate(self) -> None:
        """Check the competition's own fields (one line naming the field on a bad value)."""
        super().validate()
        if not self.strategies or not self.seeds:
            raise ConfigError("`strategies` and `seeds` must not be empty")
        for s in self.strategies:
            try:
                base = strategy_spec(s).baseline
            except ConfigError as e:
                raise ConfigError(f"`strategies`: {e}") from None
            if base and base not in self.strategies:
                raise ConfigError(f"`strategies`: {s!r} is compared with its matched baseline {base!r}, which is not among them; add it")
        if self.confirm_top < 0 or self.confirm_seeds < 2:
            raise ConfigError(f"`confirm_top` must be >= 0 and `confirm_seeds` >= 2, got {self.confirm_top} and {self.confirm_seeds}")
        for s in self.strategy_options:  # options of a strategy not run are kept (a config shared by several runs)
            try:
                strategy_spec(s)
            except ConfigError as e:
                raise ConfigError(f"`strategy_options.{s}`: {e}") from None


#: the PPO options that shape its untrained policy, and so the prior random_prior and the evolutions draw from
PRIOR_KEYS = ("policy", "hidden", "rounds")


def options_for(cfg: CompeteConfig, strategy: str) -> dict:
    """``strategy``'s options, with PPO's policy shape passed to the strategies that draw from its prior."""
    options = dict(cfg.strategy_options.get(strategy, {}))
    ppo_shape = {k: v for k, v in cfg.strategy_options.get("ppo", {}).items() if k in PRIOR_KEYS}
    if ppo_shape and strategy != "ppo":
        from kasrl.strategy import make_options

        opts = make_options(strategy, options)
        if hasattr(opts, "ppo") and (strategy == "random_prior" or getattr(opts, "start", None) == "prior"):
            options["ppo"] = {**ppo_shape, **dict(options.get("ppo", {}))}
    return options


def _common(cfg: CompeteConfig, seed: int, out: Path, group: str, strategy: str) -> dict:
    base = {f: getattr(cfg, f) for f in RunConfig.__dataclass_fields__}
    base.update(seed=seed, out=str(out), wandb=replace(cfg.wandb, group=group), strategy=strategy, options=options_for(cfg, strategy))
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
    confirm = cfg.fidelity == "measured" and cfg.confirm_top > 0
    rows = study.finish(confirm=confirm, confirm_top=cfg.confirm_top, confirm_seeds=cfg.confirm_seeds)
    best = None
    if rows:
        b = rows[0]
        best = {"hash": b["hash"], "reward": b["reward"], "speedup": b["speedup"], "accuracy": b["accuracy"]}
    base_acc = next((h["m_baseline_accuracy"] for h in study.history if "m_baseline_accuracy" in h), None)
    return {"strategy": strategy, "seed": seed, "dir": str(study.run.dir.resolve()), "history": study.run.evaluator.history,
            "best": best, "confirmed": study.confirmed, "baseline": strategy_spec(strategy).baseline, "baseline_accuracy": base_acc,
            "settings": settings(cfg)}


def pin_latency_model(cfg: CompeteConfig, folder: Path) -> CompeteConfig:
    """``cfg`` with every run searching with one latency model: the task's, refined once from the store, in the
    competition's folder (otherwise each run would refine it with what the runs before it measured)."""
    from kasrl.latency.task import needs_model, save_run_model, task_latency_model, task_placements
    from kasrl.store.sqlite import SQLiteStore
    from kasrl.tasks import load_task

    task = load_task(cfg.task, overrides=cfg.task_overrides, check_paths=False)
    if not needs_model(task):
        return cfg
    path = (folder / "latency_profile.json").resolve()
    if not path.is_file():
        info: dict = {}
        Path(cfg.store).parent.mkdir(parents=True, exist_ok=True)
        store = SQLiteStore(cfg.store)
        try:
            model = task_latency_model(task, task_placements(task)[1], store, report=info)
        finally:
            store.close()
        save_run_model(model, path, info["profile"], info["refined"])
    return replace(cfg, task_overrides={**cfg.task_overrides, "latency.profile": str(path), "latency.refine": False})


def settings(cfg: CompeteConfig) -> dict:
    """What makes two runs comparable: a finished run counts on resume only if these still match."""
    return {"task": cfg.task, "fidelity": cfg.fidelity, "evaluations": cfg.budget.evaluations, "seconds": cfg.budget.seconds,
            "task_overrides": cfg.task_overrides, "confirm": [cfg.confirm_top, cfg.confirm_seeds]}


def main(argv: list | None = None) -> int:
    """Run the competition (or resume it) and write its report; returns the exit status."""
    try:
        cfg, resume = parse_cli(CompeteConfig, CONFIGS_DIR / "compete.yaml", argv, "compete.py", __doc__.split("\n")[0])
        folder = Path(resume) if resume else Path(cfg.out) / (cfg.name or f"compete__{Path(cfg.task).stem}__{int(time.time())}")
        folder.mkdir(parents=True, exist_ok=True)
        if not resume:  # what --resume reloads, and the command the report quotes
            (folder / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
            (folder / "command.txt").write_text("python compete.py " + " ".join(argv if argv is not None else sys.argv[1:]))
        cfg = pin_latency_model(cfg, folder)
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
    summary = write_report(runs, folder, f"Competition on {cfg.task} ({cfg.fidelity})", command, cfg.fidelity, _reference(cfg, runs),
                           _budget_text(cfg, runs))
    _log_competition(cfg, folder, summary)
    print(markdown_table(summary))
    print(f"report: {folder / 'report.md'}")
    return 0


def _reference(cfg: CompeteConfig, runs: list) -> tuple | None:
    """The hypervolume's reference point: speedup 1, the baseline network's accuracy minus the reward's tolerance."""
    if cfg.fidelity != "measured":
        return None
    accs = [r["baseline_accuracy"] for r in runs if r.get("baseline_accuracy") is not None]
    if not accs:
        return None
    from kasrl.tasks import load_task

    return (1.0, accs[0] - load_task(cfg.task, overrides=cfg.task_overrides).reward.tolerance)


def _budget_text(cfg: CompeteConfig, runs: list) -> str:
    spent = "; ".join(f"{s} {'/'.join(str(len(r['history'])) for r in runs if r['strategy'] == s)}" for s in cfg.strategies)
    confirm = (f" Each run's best {cfg.confirm_top} kernel(s) were then retrained over {cfg.confirm_seeds} seeds "
               "(not counted in the budget)."
               if cfg.confirm_top and cfg.fidelity == "measured" else "")
    return (f"Every strategy x seed had the same budget: {cfg.budget.seconds:g} seconds of evaluation (or {cfg.budget.evaluations} "
            f"kernels, whichever ran out first); a kernel taken from the results store is charged the seconds it cost when it was "
            f"measured.{confirm} Kernels judged per seed: {spent}.")


def _log_competition(cfg: CompeteConfig, folder: Path, summary: dict) -> None:
    """The competition's own wandb run: the summary table and both plots."""
    if cfg.wandb.mode == "disabled":
        return
    from kasrl.tracking import Tracker

    with Tracker.start(cfg.wandb.project, f"{folder.name}__report", folder.name, {"strategies": cfg.strategies, "seeds": cfg.seeds},
                       str(folder), cfg.wandb.mode or None) as tracker:
        cols = ["strategy", "baseline", "seeds", "best_median", "speedup_of_best", "accuracy_of_best", "hypervolume_median", "share_better",
                "p", "p_holm"]
        tracker.log_table("competition/summary", cols,
                          [[r[c] if r[c] is not None else float("nan") for c in cols] for r in summary["rows"]])
        tracker.log_image("competition/anytime", str(folder / "anytime.png"))
        tracker.log_image("competition/pareto", str(folder / "pareto.png"))


if __name__ == "__main__":
    raise SystemExit(main())
