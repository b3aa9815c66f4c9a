"""A task's latency model: which profile, first-use calibration, refinement from the store, a run keeping its model."""

from __future__ import annotations

import json
import random
import re

import pytest

import kasrl
from kasrl.errors import ConfigError
from kasrl.eval.latency import device_fingerprint
from kasrl.ir.canonical import kernel_hash
from kasrl.ir.serialize import dumps
from kasrl.latency import ProfileMismatch, load_profile
from kasrl.latency import task as latency_task
from kasrl.latency.calibrate import refine
from kasrl.space import SearchSpace
from kasrl.store.records import EvalRecord, Status
from kasrl.store.sqlite import SQLiteStore
from kasrl.tasks import load_task
from tests.helpers import fitted_latency_model, rollout, write_fitted_profile


def _task(**overrides):
    return load_task("fashion_mnist_cnn", overrides=overrides, check_paths=False)


def _kernels(task, model, n: int, seed: int = 0) -> list:
    timed, every = latency_task.task_placements(task)
    space = SearchSpace(every, task.budget, latency=model)
    rng = random.Random(seed)
    return [rollout(space, rng, 2, 10) for _ in range(n)]


def test_which_tasks_need_a_model():
    assert latency_task.needs_model(_task())  # the default task budgets latency and predicts it on the ladder
    assert not latency_task.needs_model(load_task("digits_cnn", check_paths=False))
    assert latency_task.needs_model(load_task("digits_cnn", overrides={"ladder.rungs": ["predict", "precise", "full"]},
                                              check_paths=False))


def test_the_default_profile_is_keyed_by_device_and_placements():
    fashion, resnet = _task(), load_task("cifar10_resnet18", check_paths=False)
    assert latency_task.task_profile_fingerprint(fashion) == latency_task.task_profile_fingerprint(resnet)
    assert latency_task.task_profile_path(fashion) != latency_task.task_profile_path(resnet)  # calibrated where it is used
    assert latency_task.task_latency_model(fashion, latency_task.task_placements(fashion)[1]) is not None


def test_a_named_profile_that_is_missing_is_one_line_naming_the_field(tmp_path):
    task = _task(**{"latency.profile": str(tmp_path / "nope.json")})
    with pytest.raises(ConfigError, match=re.escape("`task.latency.profile`")) as e:
        latency_task.task_latency_model(task, ())
    assert "\n" not in str(e.value) and "python -m kasrl calibrate" in str(e.value)


def test_a_profile_from_another_device_is_refused(tmp_path):
    task = _task(**{"latency.profile": str(tmp_path / "p.json")})
    other = {**latency_task.task_profile_fingerprint(task), "cpu": "Some Other CPU"}
    write_fitted_profile(tmp_path / "p.json", other)
    with pytest.raises(ProfileMismatch, match="Some Other CPU"):
        latency_task.task_latency_model(task, ())


def test_a_task_not_timed_in_eager_fp32_cannot_budget_latency():
    with pytest.raises(ConfigError, match=re.escape("`task.latency.dtype`")):
        latency_task.task_latency_model(_task(**{"latency.dtype": "bf16"}), ())


def test_refine_recovers_what_a_search_measured():
    """Kernels measured 1.5x slower than the model says (its in-kernel scales off): the refit closes the gap."""
    task = _task()
    model = fitted_latency_model(latency_task.task_profile_fingerprint(task))
    timed, _ = latency_task.task_placements(task)
    kernels = _kernels(task, model, 40)
    samples = [(k, p, 1.5 * model.predict(k, p)) for k in kernels for p in timed]
    refined, report = refine(model, samples)
    assert report["n"] == len(samples)
    assert report["before"]["median_rel_error"] == pytest.approx(1 - 1 / 1.5)
    assert report["after"]["median_rel_error"] < 0.1
    errors = sorted(abs(refined.predict(k, p) / t - 1) for k, p, t in samples)
    assert errors[int(0.9 * len(errors))] < 0.2
    with pytest.raises(ValueError, match="no measured kernel"):
        refine(model, [])


def _store_with_measurements(path, task, model, kernels, factor: float, hardware: str) -> SQLiteStore:
    timed, _ = latency_task.task_placements(task)
    store = SQLiteStore(path)
    for k in kernels:
        metrics = {f"kernel_speedup/{p}": model.predict_conv3x3(p) / (factor * model.predict(k, p)) for p in timed}
        store.append(EvalRecord(task.fingerprint, kernel_hash(k), dumps(k), Status.OK, 0.1, metrics, {}, {"hardware": hardware},
                                "run", "random", "measured", 0.0))
    return store


def test_a_run_refines_the_model_from_the_store_and_keeps_it_on_resume(tmp_path):
    task = _task()
    fp = latency_task.task_profile_fingerprint(task)
    model = load_profile(latency_task.task_profile_path(task), expect=fp)
    hardware = device_fingerprint("cpu", task.latency.dtype, task.latency.threads)["hardware"]
    kernels = _kernels(task, model, 12, seed=1)
    store = _store_with_measurements(tmp_path / "r.db", task, model, kernels, 2.0, hardware)
    elsewhere = _store_with_measurements(tmp_path / "other.db", task, model, kernels, 2.0, "another-machine")
    assert len(latency_task.store_samples(store, task, hardware)) == 2 * len(kernels)
    assert latency_task.store_samples(elsewhere, task, hardware) == []  # measured on other hardware: not this device's
    store.close()
    elsewhere.close()

    fields = {"task": "fashion_mnist_cnn", "fidelity": "analytic", "executor": "inline", "out": str(tmp_path / "runs"),
              "store": str(tmp_path / "r.db"), "wandb": {"mode": "disabled"}, "space": {"max_steps": 8}, "budget": {"evaluations": 3},
              "strategy": "random_family"}
    study = kasrl.Study(**fields, tracker=False, progress=False)
    run = study.run
    saved = json.loads((run.dir / "latency_profile.json").read_text())
    assert run.latency_info["refined"]["n"] == 2 * len(kernels)
    assert saved["calibration"]["residuals"]["refined"]["after"]["median_rel_error"] < 0.1
    assert run.space.solver.latency is run.latency and run.latency != model  # the masks use the refined model
    study.optimize()
    study.close()
    # the device's profile changes (recalibrated): a resumed run keeps the model its masks were exact for
    write_fitted_profile(latency_task.task_profile_path(task), fp)
    resumed = kasrl.Study(resume=str(run.dir), tracker=False, progress=False)
    assert resumed.run.latency == load_profile(run.dir / "latency_profile.json", expect=fp)
    resumed.close()


@pytest.mark.slow
def test_first_use_calibrates_for_real(tmp_path, monkeypatch):
    """No profile for this device: the first run measures one (python -m kasrl calibrate in a child process)."""
    monkeypatch.setenv("KASRL_LATENCY_DIR", str(tmp_path / "profiles"))
    monkeypatch.setattr(latency_task, "_calibrate", latency_task._calibrate.real)
    task = load_task("digits_cnn", overrides={"budget.latency": 1.0, "latency.calibrate_s": 4}, check_paths=False)
    report: dict = {}
    model = latency_task.task_latency_model(task, latency_task.task_placements(task)[1], report=report, quiet=True)
    assert report["calibrated"] and latency_task.task_profile_path(task).is_file()
    assert model.predict_conv3x3(latency_task.task_placements(task)[0][0]) > 0
    assert latency_task.task_latency_model(task, ())  # the second time it is there
