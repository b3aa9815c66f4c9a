"""The wandb tracker: disabled writes nothing, offline writes a run folder, nothing uses the network."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kasrl.tracking import NullTracker, Tracker, resolve_mode

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """Keep wandb's own folders in tmp_path and fail any non-loopback connection from this process."""
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    real_connect = socket.socket.connect

    def guarded_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"network connection attempted to {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    return tmp_path


@pytest.fixture
def image(tmp_path) -> Path:
    """A small PNG file."""
    from PIL import Image

    path = tmp_path / "pareto.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(path)
    return path


def _exercise(tracker, image: Path) -> None:
    tracker.log({"eval/reward": 0.25, "eval/speedup": 1.1, "search/best_reward": 0.25}, step=1)
    tracker.log({"eval/reward": 0.5, "search/best_reward": 0.5}, step=2)
    tracker.log_table("search/top_kernels", ["rank", "reward", "code"], [[1, 0.5, "def f(x):\n    return x"], [2, 0.25, "..."]])
    tracker.log_image("search/pareto", image, caption="speedup vs accuracy")
    tracker.log({"eval/reward": 0.1}, step=3)
    tracker.summary({"search/best_reward": 0.5, "budget/evaluations": 3})


def test_disabled_mode_from_the_environment_writes_nothing(wandb_env, monkeypatch, image):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    runs = wandb_env / "runs"
    with Tracker.start("kasrl-test", "digits__random__0__0", group="g", config={"seed": 0}, dir=runs) as tracker:
        assert tracker.mode == "disabled" and tracker.run_dir is None
        _exercise(tracker, image)
    assert not runs.exists()


OFFLINE_CHILD = textwrap.dedent(
    """
    import atexit, socket, sys

    attempts = []
    atexit.register(lambda: print("NETWORK", attempts, flush=True))  # registered first, so it runs last
    LOCAL = ("127.0.0.1", "::1", "localhost", None)
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOCAL:
            attempts.append(("getaddrinfo", host))
            raise OSError("network disabled in this test")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL:
            attempts.append(("connect", address))
            raise OSError("network disabled in this test")
        return real_connect(self, address)

    socket.getaddrinfo, socket.socket.connect = getaddrinfo, connect

    from pathlib import Path
    from kasrl.tracking import Tracker
    from tests.tracking.test_tracker import _exercise

    runs, image = sys.argv[1], Path(sys.argv[2])
    tracker = Tracker.start("kasrl-test", "digits__random__0__0", group=None, config={"seed": 0, "lr": 3e-4}, dir=runs)
    assert tracker.mode == "offline", tracker.mode
    _exercise(tracker, image)
    tracker.finish()
    tracker.finish()  # twice is fine
    print("RUN_DIR", tracker.run_dir, flush=True)
    """
)


@pytest.mark.slow
def test_offline_mode_writes_an_offline_run_folder_without_the_network(wandb_env, image):
    runs = wandb_env / "runs"
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_ERROR_REPORTING")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-c", OFFLINE_CHILD, str(runs), str(image)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.startswith(("NETWORK", "RUN_DIR")))
    assert lines["NETWORK"] == "[]", f"wandb tried the network: {lines['NETWORK']}"
    folders = list((runs / "wandb").glob("offline-run-*"))
    assert len(folders) == 1 and Path(lines["RUN_DIR"]) == folders[0]
    assert list(folders[0].glob("run-*.wandb"))
    assert list(folders[0].glob("files/media/images/**/*.png"))
    assert list(folders[0].glob("files/media/table/**/*.table.json"))


def test_exit_from_an_exception_still_finishes(wandb_env):
    with pytest.raises(KeyError):
        with Tracker.start("kasrl-test", "n", dir=wandb_env / "runs", mode="disabled") as tracker:
            raise KeyError("boom")
    with pytest.raises(RuntimeError, match="finished"):
        tracker.log({"eval/reward": 1.0}, step=1)


def test_resolve_mode(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode() == "disabled"
    assert resolve_mode("offline") == "offline"
    assert resolve_mode("dryrun") == "offline"
    with pytest.raises(ValueError, match=re.escape("`mode` 'sync' is not a wandb mode")):
        resolve_mode("sync")
    monkeypatch.setenv("WANDB_MODE", "bogus")
    with pytest.raises(ValueError, match=re.escape("$WANDB_MODE 'bogus' is not a wandb mode")):
        resolve_mode()


@pytest.mark.parametrize("cls", [NullTracker, Tracker])
def test_both_trackers_check_their_arguments(cls, wandb_env, image):
    tracker = cls.start("kasrl-test", "n", dir=wandb_env / "runs", mode="disabled")
    tracker.log({"eval/reward": 1, "eval/ok": True}, step=5)
    with pytest.raises(ValueError, match=re.escape("`step` 4 is below the last logged step 5")):
        tracker.log({"eval/reward": 1.0}, step=4)
    with pytest.raises(ValueError, match="`step` must be the number of evaluations done"):
        tracker.log({"eval/reward": 1.0}, step=-1)
    with pytest.raises(ValueError, match=re.escape("`metrics['eval/reward']` must be a number")):
        tracker.log({"eval/reward": "high"}, step=6)
    with pytest.raises(ValueError, match="metric key"):
        tracker.log({"": 1.0}, step=6)
    with pytest.raises(ValueError, match=re.escape("`rows[1]` has 1 values for 2 columns")):
        tracker.log_table("search/top", ["a", "b"], [[1, 2], [3]])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tracker.log_image("search/pareto", image.with_name("missing.png"))
    tracker.finish()
    with pytest.raises(RuntimeError, match="finished"):
        tracker.summary({"x": 1})


def test_null_tracker_is_a_drop_in(tmp_path, image):
    """It takes every call the tracker takes, checks the same arguments, and writes nothing anywhere."""
    with NullTracker.start("p", "n", group="g", config={"a": 1}, dir=tmp_path / "runs", mode="offline") as tracker:
        tracker.log({"search/best_reward": 1.0}, step=0)
        tracker.log_table("search/top", ["a"], [[1]])
        tracker.log_image("search/pareto", image)
        tracker.summary({"search/best_reward": 1.0})
        assert tracker.run_dir is None
        with pytest.raises(ValueError, match="`step` must be the number of evaluations done"):
            tracker.log({"x": 1.0}, step=-1)
    assert not (tmp_path / "runs").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["pareto.png"]
    with pytest.raises(RuntimeError, match="finished"):
        tracker.log({"search/best_reward": 1.0}, step=1)


def test_importing_tracking_does_not_import_wandb():
    code = "import sys, kasrl.tracking, kasrl.store; assert 'wandb' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
