"""Confirmation: a run's best kernels retrained over several seeds, paired with the baseline.

One training run's accuracy is noisy (the default task's baseline scores 72.0% +-
1.3 over five seeds, more than the reward's one-point tolerance), so a leaderboard
built from single runs ranks noise. :func:`confirm` retrains each of a run's
``top`` kernels with ``seeds`` training seeds on the task's whole test split, and
trains the baseline network with the same seeds; the kernel's confirmed accuracy
gap is the mean of the paired per-seed gaps (with their standard deviation), and
its confirmed reward is the reward at its measured speedup and that mean accuracy.
Every training is a row of the results store (``measured:confirm``, per seed), so
confirming again costs nothing.

``python -m kasrl confirm RUN_DIR [--top K] [--seeds S]`` runs it on a finished
run folder and writes ``confirmed.json`` and a leaderboard ranked by confirmed
reward (``leaderboard.md``).
"""

from __future__ import annotations

import json
import math
import pickle
import statistics
import time
from pathlib import Path
from typing import Any

from kasrl.errors import ConfigError
from kasrl.store.records import EvalRecord

__all__ = ["confirm", "confirm_records", "CONFIRM_FIDELITY"]

CONFIRM_FIDELITY = "measured:confirm"


def _confirm_task(task: Any) -> Any:
    """The task with its whole test split (the confirmation's fingerprint differs from the search's)."""
    from kasrl.tasks import task_from_dict

    return task_from_dict(task.to_dict(), overrides={"dataset.test_size": None})


def confirm_records(task: Any, records: list, seeds: int, store: Any = None, executor: str = "process", run_id: str = "confirm",
                    progress: bool = True) -> list:
    """Retrain each record's kernel with ``seeds`` seeds, paired with the baseline.

    Args:
        task: the search's task.
        records: :class:`~kasrl.experiment.budget.ResultRecord` of the kernels to confirm
            (their ``result.metrics["speedup"]`` is the measured speedup kept).
        seeds: training seeds per kernel (the task's seed + 1, + 2, ...).
        store: the results store (trainings are cached there per seed).
        executor: ``process`` (crash-isolated) or ``inline``.
        run_id: written into the stored rows.
        progress: show a progress bar.

    Returns:
        One dict per record, in order: ``hash``, ``reward`` (the run's), ``confirmed_reward``,
        ``speedup``, ``accuracy_mean``, ``accuracy_sd``, ``gap_mean``, ``gap_sd`` (paired:
        baseline minus kernel, per seed), ``seeds``, ``accuracies``, ``baseline_accuracies``.
    """
    from kasrl.eval.measured import MeasuredEvaluator, reward_from
    from kasrl.eval.stages import GraphKernel

    if seeds < 2:
        raise ConfigError(f"`--seeds` must be at least 2 (a spread needs two), got {seeds}")
    ctask = _confirm_task(task)
    seed_list = [task.seed + 1 + i for i in range(seeds)]
    ev = MeasuredEvaluator(ctask, store, isolation="inline" if executor == "inline" else "process", run_id=run_id, strategy="confirm")
    out = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=(len(records) + 1) * seeds, desc="confirming", unit="training")
    try:
        base = []
        for s in seed_list:
            base.append(ev.baseline(seed=s)["accuracy"])
            if bar is not None:
                bar.update(1)
        for rec in records:
            kernel = GraphKernel(rec.doc)
            accs = []
            for s in seed_list:
                accs.append(_trained(ev, kernel, s, ctask, store, run_id))
                if bar is not None:
                    bar.update(1)
            gaps = [b - a for a, b in zip(accs, base, strict=True)]
            speed = float(rec.result.metrics.get("speedup", 1.0))
            mean_acc, mean_base = statistics.fmean(accs), statistics.fmean(base)
            confirmed = reward_from({"speedup": speed, "accuracy": mean_acc}, mean_base, task.reward)
            out.append({"hash": rec.result.kernel_hash, "reward": rec.result.reward, "confirmed_reward": confirmed, "speedup": speed,
                        "accuracy_mean": mean_acc, "accuracy_sd": statistics.stdev(accs), "baseline_mean": mean_base,
                        "baseline_sd": statistics.stdev(base), "gap_mean": statistics.fmean(gaps), "gap_sd": statistics.stdev(gaps),
                        "seeds": seed_list, "accuracies": accs, "baseline_accuracies": base})
    finally:
        if bar is not None:
            bar.close()
        ev.close()
    return out


def _trained(ev: Any, kernel: Any, seed: int, ctask: Any, store: Any, run_id: str) -> float:
    """One training of ``kernel`` with ``seed`` on the whole test split (from the store when done before)."""
    fidelity = f"{CONFIRM_FIDELITY}:seed={seed}"
    if store is not None:
        hit = store.lookup(ctask.fingerprint, kernel.hash, fidelity=fidelity, hardware=ev.hardware_keys())
        if hit is not None and hit.status.is_ok():
            return float(hit.metrics["accuracy"])
    start = time.time()
    raw = ev.measure(kernel, ("build", "budget", "latency"), {"seed": seed})
    acc = float(raw.metrics.get("accuracy", 0.0)) if raw.status.is_ok() else 0.0
    if store is not None:
        store.append(EvalRecord(ctask.fingerprint, kernel.hash, kernel.doc, raw.status, 0.0, dict(raw.metrics),
                                dict(raw.stages) or {"accuracy": {"outcome": raw.status.label, "seconds": time.time() - start}},
                                dict(raw.device), run_id, "confirm", fidelity))
    return acc


def confirm(run_dir: str | Path, top: int | None = None, seeds: int | None = None, executor: str | None = None,
            progress: bool = True) -> list:
    """Confirm a finished run's best kernels (see the module docstring); writes ``confirmed.json`` and the leaderboard.

    Raises:
        ConfigError: when ``run_dir`` is not a finished measured run.
    """
    from kasrl.experiment.config import load_saved
    from kasrl.experiment.run import confirmed_leaderboard
    from kasrl.store.sqlite import SQLiteStore
    from kasrl.tasks import load_task

    run_dir = Path(run_dir)
    cfg = load_saved(run_dir)
    if cfg.fidelity != "measured":
        raise ConfigError(f"{run_dir}: a {cfg.fidelity} run has no accuracy to confirm")
    ckpt = run_dir / "checkpoint.pkl"
    if not ckpt.is_file():
        raise ConfigError(f"{run_dir}: no checkpoint.pkl (the run never evaluated a kernel)")
    with open(ckpt, "rb") as f:
        state = pickle.load(f)  # noqa: S301 - the run's own checkpoint
    from kasrl.experiment.budget import TopKernels

    board = TopKernels(max(state["top"]["k"], top or 1))
    board.load_state_dict(state["top"])
    task = load_task(cfg.task, overrides=cfg.task_overrides)
    top = top or task.ladder.confirm_top
    seeds = seeds or task.ladder.confirm_seeds
    records = [r for r in board.best() if math.isfinite(r.result.metrics.get("speedup", math.nan))][:top]
    mode = executor or cfg.executor
    with SQLiteStore(cfg.store) as store:
        rows = confirm_records(task, records, seeds, store, "process" if mode == "ray" else mode, progress=progress)
    (run_dir / "confirmed.json").write_text(json.dumps(rows, indent=1))
    confirmed_leaderboard(run_dir, rows)
    return rows
