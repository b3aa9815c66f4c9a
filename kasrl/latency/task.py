"""A task's latency model: the profile it names (or this device's), calibrated on first use, refined from the store.

A task needs a model when it budgets latency (``budget.latency``) or its ladder
has the ``predict`` rung. :func:`task_latency_model` then

1. loads ``latency.profile``, or this device's default profile for the task's
   timed placements (:func:`~kasrl.latency.profile.default_profile_path` of the
   task's fingerprint: device, CPU or GPU model, torch version, threads, dtype,
   batch; and of the placements, since a model predicts best where it was
   calibrated); a missing
   default profile is calibrated on the spot (``python -m kasrl calibrate`` in a
   child process with the allocator pinned, ``latency.calibrate_s`` seconds, once
   per device); a named profile that is missing is an error;
2. with ``latency.refine``, refits it (:func:`~kasrl.latency.calibrate.refine`) to
   every kernel latency the results store holds for this task on this hardware:
   each measured kernel at each timed placement is one sample (its time relative
   to the 3x3 convolution timed beside it, times the model's time for that
   convolution).

A run keeps one model from start to end (the masks are exact for that model) and
writes it into its folder, so a resumed run reuses it; the next run of the task
starts from a model refined with everything measured so far.
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from kasrl.errors import ConfigError, KasrlError
from kasrl.latency.model import LatencyModel
from kasrl.latency.profile import default_profile_path, fingerprint, load_profile, save_profile

__all__ = ["MIN_REFINE", "needs_model", "check_supported", "task_placements", "task_profile_fingerprint", "task_profile_path",
           "store_samples", "task_latency_model", "save_run_model"]

#: Fewer measured samples than this leave the profile's model as it is.
MIN_REFINE = 10


def needs_model(task: Any) -> bool:
    """Whether the task budgets latency or its ladder predicts it."""
    return task.budget.latency is not None or "predict" in task.ladder.rungs


def check_supported(task: Any) -> None:
    """Refuse (ConfigError) a task whose latency is not taken as the models are calibrated: eager fp32, contiguous."""
    spec = task.latency
    for name, on in (("latency.dtype", spec.dtype != "fp32"), ("latency.compile", spec.compile), ("latency.cuda_graphs", spec.cuda_graphs),
                     ("latency.channels_last", spec.channels_last)):
        if on:
            raise ConfigError(f"`task.{name}` is set, but latency models are calibrated in eager fp32 with contiguous tensors: "
                              f"turn `task.budget.latency` off (null) and leave `predict` out of `task.ladder.rungs` for this task")


def task_profile_fingerprint(task: Any) -> dict:
    """The device fingerprint the task's latency model must have been calibrated with."""
    from kasrl.tasks.task import resolve_device

    return fingerprint(str(resolve_device(task)), task.latency.threads, task.latency.batch, "float32")


def task_placements(task: Any) -> tuple:
    """``(timed, every)``: where the task times kernels, and every placement they must be legal at (searched or timed).

    The dataset's files are not needed.
    """
    from kasrl.tasks import build_task_network, latency_placements
    from kasrl.tasks import task_placements as searched_at

    model, _ = build_task_network(task)
    search = searched_at(task, model)
    timed = tuple(latency_placements(task, search, model))
    return timed, tuple(dict.fromkeys(tuple(search) + timed))


def task_profile_path(task: Any, timed: Sequence[Any] | None = None) -> Path:
    """``latency.profile`` (user folder expanded), or this device's default profile for the task's timed placements."""
    if task.latency.profile:
        return Path(task.latency.profile).expanduser()
    timed = task_placements(task)[0] if timed is None else timed
    return default_profile_path(task_profile_fingerprint(task), timed)


def _calibrate(task: Any, out: Path, quiet: bool) -> None:
    """``python -m kasrl calibrate`` for ``task`` in a child process with the allocator pinned (it writes ``out``)."""
    from kasrl.eval.latency import pinned_env

    seconds = task.latency.calibrate_s
    print(f"kasrl: no latency profile for this device at {out}: calibrating for about {seconds:.0f} s (once per device; "
          f"`python -m kasrl calibrate` does it ahead of time)", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="kasrl-calibrate-") as tmp:
        task_file = Path(tmp) / f"{task.name}.yaml"
        task_file.write_text(yaml.safe_dump(task.to_dict(), sort_keys=False))
        cmd = [sys.executable, "-m", "kasrl", "calibrate", "--task", str(task_file), "--out", str(out), "--seconds", f"{seconds:g}"]
        done = subprocess.run(cmd + (["--quiet"] if quiet else []), env=pinned_env(), stdout=subprocess.DEVNULL if quiet else None,
                              stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr or "").strip().splitlines()
        raise KasrlError(f"latency calibration for task {task.name} failed: {last[-1] if last else f'exit status {done.returncode}'}")


def store_samples(store: Any, task: Any, hardware: str, placements: Sequence[Any] | None = None) -> list:
    """``(kernel, placement, seconds relative to the 3x3 conv there)`` for every kernel latency the store holds for
    this task on this hardware (one per measured kernel and timed placement; the newest record of a kernel wins)."""
    from kasrl.ir.serialize import loads
    from kasrl.solver.budget import parse_placements

    wanted = {str(p) for p in placements} if placements is not None else None
    latest: dict = {}
    for rec in store.records(task_fingerprint=task.fingerprint):
        if rec.hardware != hardware or not any(k.startswith("kernel_speedup/") for k in rec.metrics):
            continue
        latest[rec.kernel_hash] = rec
    out = []
    for rec in latest.values():
        try:
            graph = loads(rec.kernel_doc, source=f"store record {rec.id}")
        except (KasrlError, ValueError):
            continue  # a document this version cannot read teaches nothing
        for key, speedup in rec.metrics.items():
            name = key.partition("/")[2]
            if not key.startswith("kernel_speedup/") or (wanted is not None and name not in wanted):
                continue
            if isinstance(speedup, (int, float)) and math.isfinite(speedup) and speedup > 0 and graph.sizes is not None:
                out.append((graph, parse_placements(name)[0], 1.0 / speedup))
    return out


def task_latency_model(task: Any, placements: Sequence[Any], store: Any = None, *, calibrate: bool = True, quiet: bool = False,
                       report: dict | None = None) -> LatencyModel | None:
    """The task's latency model (None when it needs none); see the module docstring.

    Args:
        task: the task.
        placements: every placement its kernels are searched and timed at (for the time unit).
        store: the results store to refine from (None: no refinement).
        calibrate: calibrate a missing default profile (else it is an error).
        quiet: no progress bar while calibrating.
        report: filled with ``profile`` (its path), ``calibrated`` (True when calibrated
            now) and ``refined`` (the refinement's report, or None).

    Raises:
        ConfigError: a named profile that does not exist, or a task whose latency
            is not taken in eager fp32.
        ProfileError: a profile that does not load or was made on another device.
    """
    report = {} if report is None else report
    if not needs_model(task):
        return None
    check_supported(task)
    timed, _ = task_placements(task)
    path = task_profile_path(task, timed)
    expect = task_profile_fingerprint(task)
    report.update(profile=str(path), calibrated=False, refined=None)
    if not path.is_file():
        if task.latency.profile:
            raise ConfigError(f"`task.latency.profile` {task.latency.profile}: no such file (write one with "
                              f"`python -m kasrl calibrate --task {task.name} --out {task.latency.profile}`)")
        if not calibrate:
            raise ConfigError(f"no latency profile for this device at {path}: run `python -m kasrl calibrate --task {task.name}`")
        _calibrate(task, path, quiet)
        report["calibrated"] = True
    model = load_profile(path, expect=expect)
    if store is None or not task.latency.refine:
        return model
    from kasrl.eval.latency import device_fingerprint
    from kasrl.latency.calibrate import refine
    from kasrl.tasks.task import resolve_device

    hardware = device_fingerprint(resolve_device(task), task.latency.dtype, task.latency.threads)["hardware"]
    samples = store_samples(store, task, hardware, timed)
    if len(samples) < MIN_REFINE:
        return model
    samples = [(g, p, rel * model.predict_conv3x3(p)) for g, p, rel in samples]
    model, report["refined"] = refine(model, samples, placements=placements)
    return model


def save_run_model(model: LatencyModel, path: str | Path, source: str | Path, refined: dict | None) -> Path:
    """Write the model a run uses as a profile (the source profile's calibration record, plus the refinement's report)."""
    import json

    calibration = json.loads(Path(source).read_text())["calibration"]
    if refined is not None:
        calibration["residuals"] = {**calibration["residuals"], "refined": refined}
    return save_profile(model, calibration, path)
