"""Settings every test process shares.

Under ``pytest -n 2`` (pytest-xdist) two test processes run at once. Each gets
its own timing lock file, so one process's evaluations never wait for the other
process's timings (the lock is machine-wide by design; see
:mod:`kasrl.eval.locks`), and wandb is off unless a test turns it on.
"""

from __future__ import annotations

import os
import tempfile

import pytest


@pytest.fixture(scope="session", autouse=True)
def _per_process_settings():
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    saved = {k: os.environ.get(k) for k in ("KASRL_TIMING_LOCK", "WANDB_MODE")}
    os.environ["KASRL_TIMING_LOCK"] = os.path.join(tempfile.gettempdir(), f"kasrl-test-timing-{os.getpid()}-{worker}.lock")
    os.environ.setdefault("WANDB_MODE", "disabled")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
