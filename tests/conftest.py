"""Settings every test process shares.

Under ``pytest -n 2`` (pytest-xdist) two test processes run at once. Each gets
its own timing lock file, so one process's evaluations never wait for the other
process's timings (the lock is machine-wide by design; see
:mod:`kasrl.eval.locks`), and wandb is off unless a test turns it on.

Latency models: the bundled tasks budget latency, which needs a calibrated
profile per device (``python -m kasrl calibrate``, minutes). Each test process
gets its own profile folder (``KASRL_LATENCY_DIR``) holding, for every bundled
CPU task, a profile with real fitted coefficients (tests/data) keyed to this
machine, and a first-use calibration inside the test process writes the same
instead of measuring. Real calibration is tested in tests/latency.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.helpers import write_fitted_profile


def _profiles(folder: str) -> None:
    from kasrl.errors import KasrlError
    from kasrl.latency import task as latency_task
    from kasrl.tasks import load_task
    from kasrl.tasks.task import TASKS_DIR

    for path in sorted(TASKS_DIR.glob("*.yaml")):
        try:
            task = load_task(path, check_paths=False)
            if latency_task.needs_model(task):
                timed, _ = latency_task.task_placements(task)
                write_fitted_profile(latency_task.task_profile_path(task, timed), latency_task.task_profile_fingerprint(task), timed)
        except KasrlError:
            continue  # e.g. a CUDA task on a machine without one

    def fitted_instead(task, out: Path, quiet: bool) -> None:
        write_fitted_profile(out, latency_task.task_profile_fingerprint(task), latency_task.task_placements(task)[0])

    fitted_instead.real = latency_task._calibrate  # for the test that calibrates for real
    latency_task._calibrate = fitted_instead


@pytest.fixture(scope="session", autouse=True)
def _per_process_settings():
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    saved = {k: os.environ.get(k) for k in ("KASRL_TIMING_LOCK", "WANDB_MODE", "KASRL_LATENCY_DIR")}
    os.environ["KASRL_TIMING_LOCK"] = os.path.join(tempfile.gettempdir(), f"kasrl-test-timing-{os.getpid()}-{worker}.lock")
    os.environ.setdefault("WANDB_MODE", "disabled")
    with tempfile.TemporaryDirectory(prefix=f"kasrl-test-latency-{worker}-") as folder:
        os.environ["KASRL_LATENCY_DIR"] = folder
        _profiles(folder)
        yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
