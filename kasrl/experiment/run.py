"""One search run: its folder, store, tracker, search space, evaluator and leaderboard.

The evaluator stack, outermost first::

    BudgetedEvaluator   counts every kernel asked about; stops at the budget; callbacks
    CachedEvaluator     the SQLite store: a kernel this task has seen costs no time
    PoolEvaluator / RayEvaluator / the evaluator itself   (executor = process | ray | inline)
    MeasuredEvaluator (isolated worker) or AnalyticEvaluator

A run folder ``<out>/<task>__<strategy>__<seed>__<unix time>/`` holds
``config.yaml``, ``checkpoint.pkl`` (resumable state), ``history.json`` (one row
per evaluation), ``leaderboard.md`` and ``kernels/`` (JSON, source, picture of the
best kernels), plus the offline wandb run.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from kasrl.errors import ConfigError
from kasrl.experiment.budget import BudgetedEvaluator, Callback, ResultRecord, TopKernels
from kasrl.experiment.config import RunConfig, to_dict
from kasrl.solver.cpsat import SolverConfig
from kasrl.space import SearchSpace
from kasrl.tracking import NullTracker, Tracker, run_name

__all__ = ["Run", "TrackerCallback", "ProgressCallback", "BestMetrics", "make_space", "make_evaluator", "LATENCY_PROFILE"]

#: The latency model a run searches with, in its folder (a profile; see :mod:`kasrl.latency.task`).
LATENCY_PROFILE = "latency_profile.json"


class RungCounts:
    """How many kernels reached each rung of a ladder (from each result's ``rung`` metric)."""

    def __init__(self, names: Sequence[str] = ()) -> None:
        self.names = list(names)
        self.counts = [0] * len(self.names)

    def add(self, record: ResultRecord) -> None:
        if self.names and "rung" in record.result.metrics:
            for i in range(int(record.result.metrics["rung"]) + 1):
                self.counts[i] += 1

    def text(self) -> str:
        return " ".join(f"{n} {c}" for n, c in zip(self.names, self.counts, strict=True))


class TrackerCallback(Callback):
    """Logs every evaluation to wandb against the evaluation count (with a ladder, the kernels per rung)."""

    def __init__(self, tracker, rungs: Sequence[str] = ()) -> None:
        self.tracker = tracker
        self.rungs = RungCounts(rungs)

    def on_result(self, record: ResultRecord) -> bool:
        """Log the evaluation's reward, status, numeric metrics and rung counts."""
        r = record.result
        metrics = {"eval/reward": r.reward, "eval/ok": float(r.status.is_ok()), "eval/cached": float(r.cached),
                   "eval/screened": float(r.status.is_screened()), "search/best_reward": record.best_reward,
                   "search/seconds": record.seconds}
        for k, v in r.metrics.items():
            if isinstance(v, (int, float)) and "/" not in k:
                metrics[f"eval/{k}"] = float(v)
        self.rungs.add(record)
        metrics.update({f"ladder/{n}": float(c) for n, c in zip(self.rungs.names, self.rungs.counts, strict=True)})
        self.tracker.log(metrics, step=record.index)
        return True


class ProgressCallback(Callback):
    """A progress bar over the evaluation budget (with a ladder, the kernels that reached each rung)."""

    def __init__(self, total: int, desc: str, initial: int = 0, rungs: Sequence[str] = ()) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="eval", dynamic_ncols=True)
        self.rungs = RungCounts(rungs)

    def on_result(self, record: ResultRecord) -> bool:
        """Advance the bar; show the best and last rewards (and the rung counts)."""
        self.bar.update(1)
        self.rungs.add(record)
        extra = {"rungs": self.rungs.text()} if self.rungs.names else {}
        self.bar.set_postfix(best=f"{record.best_reward:.3f}", last=f"{record.result.reward:.3f}", **extra)
        return True

    def on_end(self) -> None:
        """Close the progress bar."""
        self.bar.close()


class BestMetrics(Callback):
    """Logs the best kernel's figures so far: ``search/best_speedup``, ``search/best_accuracy``...

    The best kernel is the successful one with the highest reward; its metrics
    (those of ``speedup``, ``accuracy``, ``flops_ratio``, ``params_ratio`` it has)
    are logged after every evaluation, at ``step = evaluations done``.

    Args:
        tracker: the run's tracker.
        initial: records seen before (a resumed run's leaderboard), not logged again.
    """

    KEYS = ("speedup", "accuracy", "flops_ratio", "params_ratio")

    def __init__(self, tracker: Any, initial: Sequence[ResultRecord] = ()) -> None:
        self.tracker = tracker
        self.best_reward = -math.inf
        self.best: dict = {}
        for record in initial:
            self._update(record)

    def _update(self, record: ResultRecord) -> None:
        r = record.result
        if r.status.is_ok() and r.reward > self.best_reward:
            self.best_reward = r.reward
            self.best = {f"search/best_{k}": float(v) for k in self.KEYS if _finite(v := r.metrics.get(k))}

    def on_result(self, record: ResultRecord) -> bool:
        """Update the best kernel's figures and log them."""
        self._update(record)
        if self.best:
            self.tracker.log(self.best, step=record.index)
        return True


def _finite(value: Any) -> bool:
    try:
        return not isinstance(value, (bool, str)) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def make_space(cfg: RunConfig, placements, budget, latency=None) -> SearchSpace:
    """The search space of a run (``latency``: the model ``budget.latency`` is measured with)."""
    return SearchSpace(placements, budget, cfg.space, SolverConfig(seed=cfg.seed), latency=latency)


def make_evaluator(cfg: RunConfig, task, placements, store, run_id: str, strategy: str, latency=None):
    """The cached, possibly parallel evaluator of a run (before budgeting): with a measured fidelity and
    ``task.ladder.rungs``, the ladder (``latency``: the model its predict rung uses)."""
    from kasrl.eval.base import AnalyticEvaluator
    from kasrl.eval.cache import CachedEvaluator

    if cfg.fidelity == "analytic":
        inner = AnalyticEvaluator(placements)
    elif cfg.executor == "ray":
        from kasrl.eval.ray_executor import RayEvaluator

        inner = RayEvaluator(task, cfg.workers, cfg.ray.address, cfg.ray.num_cpus, cfg.ray.num_gpus, store_path=cfg.store,
                             run_id=run_id, strategy=strategy)
        inner.baseline()  # train the baseline once, before the run's clock starts
    else:
        from kasrl.eval.executors import PoolEvaluator
        from kasrl.eval.measured import MeasuredEvaluator

        isolation = "inline" if cfg.executor == "inline" else "process"
        workers = 1 if isolation == "inline" else cfg.workers
        first = MeasuredEvaluator(task, store, isolation=isolation, run_id=run_id, strategy=strategy, device=_gpu_for(0))
        first.baseline()  # train the baseline once, before any worker needs it

        def worker(i: int):
            if i == 0:
                return first
            return MeasuredEvaluator(task, store, isolation=isolation, run_id=run_id, strategy=strategy, device=_gpu_for(i))

        inner = PoolEvaluator(worker, workers) if workers > 1 else first
    if cfg.fidelity == "measured" and task.ladder.rungs:
        return make_ladder(task, inner, store, run_id, strategy, latency)
    return CachedEvaluator(inner, store, run_id, strategy)


def make_ladder(task, runner, store, run_id: str, strategy: str, latency=None):
    """The task's multi-fidelity ladder (``task.ladder``) over an evaluator's workers (see :mod:`kasrl.eval.ladder`).

    The baseline's accuracy, after the full recipe and after the short one, is trained
    before the run's clock starts.
    """
    from kasrl.eval.ladder import Ladder, LadderPolicy, MeasuredRung, PredictRung
    from kasrl.latency.task import task_placements

    spec = task.ladder
    baseline = runner.baseline()
    short = runner.baseline(fraction=spec.short_fraction) if "short" in spec.rungs else None
    rungs = []
    for name in spec.rungs:
        if name == "predict":
            if latency is None:
                raise ConfigError("`task.ladder.rungs` has predict, which needs the task's latency model (kasrl.latency.task)")
            timed, _ = task_placements(task)
            rungs.append(PredictRung(latency, timed, spec.predict_margin))
        else:
            rungs.append(MeasuredRung(name, runner, task, baseline, short))
    causes = ("build_error", "numerics_error", "budget_violation", "timeout", "oom", "crash")
    penalties = {k: getattr(task.reward.penalties, k) for k in causes}
    ladder = Ladder(rungs, LadderPolicy(spec.top_k, spec.floor), "measured", task.fingerprint, store, penalties, run_id, strategy)
    ladder.runner = runner
    return ladder


def latency_summary(info: dict) -> dict:
    """The run's latency model as wandb summary values: its profile, whether it was calibrated now, the refinement."""
    out = {"latency_model/profile": info["profile"], "latency_model/calibrated": info["calibrated"]}
    refined = info.get("refined")
    if refined:
        out["latency_model/refined_on"] = refined["n"]
        for when in ("before", "after"):
            for key, value in refined[when].items():
                if value is not None:
                    out[f"latency_model/{key}_{when}"] = value
    return out


def _gpu_for(i: int) -> str | None:
    """Pin worker ``i`` to its own GPU when there are several (its child calls ``torch.cuda.set_device``)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return f"cuda:{i % torch.cuda.device_count()}"
    return None


class Run:
    """Everything a search run needs, created from its config.

    Args:
        cfg: the run config.
        strategy: name used in the run name, the store and reports.
        resume_dir: continue the run in this folder (its name is kept).
        tracker: False for no wandb at all (tests); default from ``cfg.wandb``.
    """

    def __init__(self, cfg: RunConfig, strategy: str, resume_dir: str | None = None, tracker: bool = True, progress: bool = True) -> None:
        from kasrl.eval.task_space import task_search_setup
        from kasrl.store.sqlite import SQLiteStore
        from kasrl.tasks import load_task

        self.cfg = cfg
        self.strategy = strategy
        self.task = load_task(cfg.task, overrides=cfg.task_overrides)
        if resume_dir is not None:
            self.dir = Path(resume_dir)
            if not (self.dir / "config.yaml").is_file():
                raise ConfigError(f"`--resume` {resume_dir}: not a run folder (no config.yaml)")
            self.name = self.dir.name
        else:
            self.name = run_name(self.task.name, strategy, cfg.seed)
            self.dir = Path(cfg.out) / self.name
            try:
                self.dir.mkdir(parents=True, exist_ok=False)
            except OSError as e:
                raise ConfigError(f"`out` {cfg.out}: cannot create the run folder ({e.strerror or e})") from None
        (self.dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        self.placements, budget, _ = task_search_setup(self.task, latency=False)  # the run's model: _latency_model
        Path(cfg.store).parent.mkdir(parents=True, exist_ok=True)
        self.store = SQLiteStore(cfg.store)
        self.latency_info: dict = {}
        self.latency = self._latency_model(resumed=resume_dir is not None, quiet=not progress)
        self.space = make_space(cfg, self.placements, budget, latency=self.latency)
        self.tracker = NullTracker()
        if tracker:
            self.tracker = Tracker.start(cfg.wandb.project, self.name, cfg.wandb.group or None, to_dict(cfg), str(self.dir),
                                         cfg.wandb.mode or None)
        if self.latency_info:
            self.tracker.summary(latency_summary(self.latency_info))
        self.top = TopKernels(cfg.top_k)
        self.best = BestMetrics(self.tracker)
        self.inner = make_evaluator(cfg, self.task, self.placements, self.store, self.name, strategy, self.latency)
        self.rung_names = [r.name for r in getattr(self.inner, "rungs", ())]
        callbacks = [TrackerCallback(self.tracker, self.rung_names), self.top, self.best]
        self._progress = progress
        self.evaluator = BudgetedEvaluator(self.inner, cfg.budget.evaluations, cfg.budget.seconds, callbacks)
        self.started = time.time()

    def _latency_model(self, resumed: bool, quiet: bool):
        """The task's latency model (None when it needs none), written into the run folder: a resumed run reuses
        the one it started with (its masks were exact for that model); a new run loads, calibrates on first use
        and refines from the store (see :mod:`kasrl.latency.task`)."""
        from kasrl.latency.profile import load_profile
        from kasrl.latency.task import needs_model, save_run_model, task_latency_model, task_profile_fingerprint

        if not needs_model(self.task):
            return None
        saved = self.dir / LATENCY_PROFILE
        if resumed and saved.is_file():
            self.latency_info = {"profile": str(saved), "calibrated": False, "refined": None}
            return load_profile(saved, expect=task_profile_fingerprint(self.task))
        model = task_latency_model(self.task, self.placements, self.store, quiet=quiet, report=self.latency_info)
        save_run_model(model, saved, self.latency_info["profile"], self.latency_info["refined"])
        return model

    # -- progress, checkpoints -------------------------------------------------------
    def start_progress(self) -> None:
        """Show a progress bar from the current evaluation count on."""
        if self._progress:
            bar = ProgressCallback(self.cfg.budget.evaluations, f"{self.strategy} {self.name}", self.evaluator.spent, self.rung_names)
            self.evaluator.callbacks.append(bar)

    def save_checkpoint(self, strategy_state: dict) -> Path:
        """Write the run state atomically (a kill leaves the previous checkpoint intact)."""
        state = {"strategy": strategy_state, "budget": self.evaluator.state_dict(), "top": self.top.state_dict()}
        path = self.dir / "checkpoint.pkl"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            pickle.dump(state, f)
        os.replace(tmp, path)
        return path

    def load_checkpoint(self) -> dict | None:
        """The strategy's saved state (and restore budget and leaderboard), or None."""
        path = self.dir / "checkpoint.pkl"
        if not path.is_file():
            return None
        with open(path, "rb") as f:
            state = pickle.load(f)  # noqa: S301 - our own checkpoint, written by save_checkpoint
        self.evaluator.load_state_dict(state["budget"])
        self.top.load_state_dict(state["top"])
        if hasattr(self.inner, "restore"):  # the ladder's threshold comes from the run's final rewards
            self.inner.restore(self.evaluator.history)
        self.best = BestMetrics(self.tracker, self.top.best())
        self.evaluator.callbacks = [cb for cb in self.evaluator.callbacks if not isinstance(cb, BestMetrics)] + [self.best]
        return state["strategy"]

    # -- the end ------------------------------------------------------------------------
    def leaderboard(self) -> list:
        """Rows of the best kernels (best first)."""
        rows = []
        for rank, rec in enumerate(self.top.best(), 1):
            m = rec.result.metrics
            rows.append({"rank": rank, "hash": rec.result.kernel_hash[:16], "reward": rec.result.reward, "speedup": m.get("speedup"),
                         "accuracy": m.get("accuracy"), "flops_ratio": m.get("flops_ratio"), "params_ratio": m.get("params_ratio"),
                         "evaluation": rec.index})
        return rows

    def finish(self, extra_summary: dict | None = None, close: bool = True) -> list:
        """Write the best kernels, the history and the leaderboard; log and (unless ``close`` is False) close."""
        from rich.console import Console
        from rich.table import Table

        from kasrl.codegen.draw import draw_kernel
        from kasrl.codegen.source import kernel_source
        from kasrl.ir.serialize import loads, save_kernel

        self.evaluator.end()
        kdir = self.dir / "kernels"
        kdir.mkdir(exist_ok=True)
        rows = self.leaderboard()
        table_rows = []
        for row, rec in zip(rows, self.top.best(), strict=False):
            g = loads(rec.doc, "leaderboard")
            sid = row["hash"]
            save_kernel(g, kdir / f"{sid}.json")
            src = kernel_source(g, doc=f"kasrl kernel {sid}: reward {rec.result.reward:.3f}")
            (kdir / f"{sid}.py").write_text(src)
            png = draw_kernel(g, kdir / f"{sid}.png", f"#{row['rank']} {sid} reward {rec.result.reward:.3f}")
            self.tracker.log_image(f"kernels/rank{row['rank']}", str(png), caption=sid)
            table_rows.append([row["rank"], sid, row["reward"], row["speedup"] or 0.0, row["accuracy"] or 0.0, row["flops_ratio"] or 0.0,
                               row["params_ratio"] or 0.0, src])
        columns = ["rank", "hash", "reward", "speedup", "accuracy", "flops_ratio", "params_ratio", "source"]
        self.tracker.log_table("search/top_kernels", columns, table_rows)
        (self.dir / "history.json").write_text(json.dumps(self.evaluator.history))
        best = rows[0]["reward"] if rows else float("nan")
        summary = {"search/best_reward": best, "budget/evaluations": self.evaluator.spent, "search/seconds": self.evaluator.elapsed}
        summary.update(extra_summary or {})
        self.tracker.summary(summary)
        table = Table(title=f"best kernels of {self.name} ({self.evaluator.spent} evaluations, {self.evaluator.elapsed:.0f} s)")
        for col in ("rank", "kernel", "reward", "speedup", "accuracy", "FLOPs vs conv", "params vs conv", "found at"):
            table.add_column(col, justify="right")
        md = ["| rank | kernel | reward | speedup | accuracy | FLOPs vs conv | params vs conv | found at |",
              "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            cells = [str(r["rank"]), r["hash"], f"{r['reward']:.3f}", _fmt(r["speedup"], "x"), _fmt(r["accuracy"], "%"),
                     _fmt(r["flops_ratio"], "x"), _fmt(r["params_ratio"], "x"), f"eval {r['evaluation']}"]
            table.add_row(*cells)
            md.append("| " + " | ".join(cells) + " |")
        Console(width=120).print(table)
        device = _device_line(self.top.best())
        print(device)
        (self.dir / "leaderboard.md").write_text(f"# {self.name}\n\n" + "\n".join(md) + f"\n\n{device}\n\nKernels: `{kdir}/`\n")
        print(f"run folder: {self.dir}")
        if close:
            self.close()
        return rows

    def close(self) -> None:
        """Stop workers and the tracker (idempotent)."""
        self.evaluator.close()
        self.tracker.finish()
        self.store.close()


def _device_line(best) -> str:
    """Where the leaderboard's figures were measured (each distinct device of its kernels, or why none)."""
    from kasrl.eval.latency import describe_device

    seen = list(dict.fromkeys(describe_device(rec.result.device) for rec in best if rec.result.device))
    if not seen:
        return "device: none recorded (analytic fidelity: hardware-independent)" if best else "device: no kernels"
    return "device: " + "; ".join(seen)


def _fmt(v, unit: str) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}%" if unit == "%" else f"{v:.3f}{unit}"


def confirmed_leaderboard(run_dir: Path, rows: list) -> Path:
    """Rewrite ``leaderboard.md`` ranked by confirmed reward (see :mod:`kasrl.eval.confirm`); returns its path."""
    from rich.console import Console
    from rich.table import Table

    ranked = sorted(rows, key=lambda r: -r["confirmed_reward"])
    n = len(ranked[0]["seeds"]) if ranked else 0
    head = ["rank", "kernel", "confirmed reward", "run's reward", "speedup", f"accuracy (mean +- sd, {n} seeds)",
            "accuracy below baseline (paired)"]
    table = Table(title=f"confirmed: the best kernels of {Path(run_dir).name} retrained over {n} seeds, whole test split")
    for col in head:
        table.add_column(col, justify="right")
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rank, r in enumerate(ranked, 1):
        cells = [str(rank), r["hash"][:16], f"{r['confirmed_reward']:.3f}", f"{r['reward']:.3f}", f"{r['speedup']:.3f}x",
                 f"{r['accuracy_mean']:.2f} +- {r['accuracy_sd']:.2f}%", f"{r['gap_mean']:+.2f} +- {r['gap_sd']:.2f} pt"]
        table.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    Console(width=140).print(table)
    path = Path(run_dir) / "leaderboard.md"
    old = path.read_text() if path.is_file() else ""
    if old.startswith("# ") and old.split("\n", 1)[0].endswith(": confirmed"):  # confirmed before: keep only the run's own table
        old = old[old.find("\n# ") + 1 :] if "\n# " in old else ""
    text = f"# {Path(run_dir).name}: confirmed\n\n" + "\n".join(md) + "\n\nBaseline network over the same seeds: "
    if ranked:
        text += f"{ranked[0]['baseline_mean']:.2f} +- {ranked[0]['baseline_sd']:.2f}%.\n"
    path.write_text(text + ("\n" + old if old else ""))
    return path
