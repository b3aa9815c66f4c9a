"""Confirmation over seeds: paired with the baseline, cached per seed, on the whole test split."""

from __future__ import annotations

import math

from kasrl.eval.base import EvalResult
from kasrl.eval.confirm import CONFIRM_FIDELITY, confirm_records
from kasrl.eval.stages import GraphKernel
from kasrl.eval.task_space import task_search_setup
from kasrl.experiment.budget import ResultRecord
from kasrl.ir.serialize import dumps
from kasrl.store.memory import MemoryStore
from kasrl.store.records import Status
from kasrl.tasks import load_task, task_from_dict
from tests.helpers import build


def test_confirmation_retrains_over_seeds_paired_with_the_baseline_and_is_cached(monkeypatch):
    overrides = {"dataset.train_size": 300, "dataset.test_size": 100, "recipe.epochs": 1.0}
    task = task_from_dict(load_task("digits_cnn").to_dict(), overrides=overrides)
    placements, _, _ = task_search_setup(task)
    kernel = build([("conv", (0,), {"kh": 3, "kw": 3, "dilation": 1, "out": "depthwise"}),
                    ("projection", (0,), {"out": "C", "grouped": False})],
                   solve_at=placements)
    h = GraphKernel(kernel).hash
    rec = ResultRecord(1, 1.0, EvalResult(Status.OK, 0.1, {"speedup": 1.5, "accuracy": 50.0}, kernel_hash=h), 0.1, dumps(kernel))
    store = MemoryStore()
    (row,) = confirm_records(task, [rec], 3, store, executor="inline", progress=False)
    assert row["seeds"] == [1, 2, 3] and len(row["accuracies"]) == len(row["baseline_accuracies"]) == 3
    gaps = [b - a for a, b in zip(row["accuracies"], row["baseline_accuracies"], strict=False)]
    assert math.isclose(row["gap_mean"], sum(gaps) / 3) and row["gap_sd"] >= 0 and row["speedup"] == 1.5
    assert len(set(row["baseline_accuracies"])) > 1  # the seeds really differ
    fidelities = sorted(r.fidelity for r in store.records() if r.kernel_hash == h)
    assert fidelities == [f"{CONFIRM_FIDELITY}:seed={s}" for s in (1, 2, 3)]
    test_sizes = {len(r.metrics) and r.task_fingerprint for r in store.records()}
    assert task.fingerprint not in test_sizes  # trained on the whole test split: another fingerprint than the search's
    from kasrl.eval import measured

    monkeypatch.setattr(measured.MeasuredEvaluator, "measure", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    (again,) = confirm_records(task, [rec], 3, store, executor="inline", progress=False)  # every training from the store
    assert again["accuracies"] == row["accuracies"] and again["confirmed_reward"] == row["confirmed_reward"]
