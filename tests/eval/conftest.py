"""Shared fixtures of the evaluation tests, and the harness that keeps Ray in a network namespace.

Ray tests (``@pytest.mark.ray``) never start Ray in the test process: Ray probes
a cloud metadata address and a public DNS server at start-up, which these
machines must not do. When the first Ray test of a module is reached, every Ray
test of that module runs in one subprocess under ``unshare --net`` with only
loopback up (``KASRL_IN_NETNS=1`` marks it), and each test then reports the
outcome it had there. Where ``unshare --net`` is not permitted, or Ray is not
installed, Ray tests are skipped with the reason.

Keep Ray out of fixtures (they are set up in the outer process too): start it in
the test body, after checking :data:`IN_NETNS` and
:func:`kasrl.eval.ray_executor.loopback_only`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kasrl.tasks import load_task, task_from_dict

IN_NETNS = os.environ.get("KASRL_IN_NETNS") == "1"
_REPORT = os.environ.get("KASRL_NETNS_REPORT", "")
_INNER_TIMEOUT_S = 560  # below pytest-timeout's 600 s for the test that runs the batch

_outcomes: dict = {}  # nodeid -> (outcome, text), filled by the batch run inside the namespace
_problem: list = []


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def digits():
    """``(task, placements, space)`` of the tiny ``digits_cnn`` task."""
    from kasrl.eval.task_space import task_search_setup
    from kasrl.solver.cpsat import SolverConfig
    from kasrl.space import SearchSpace, SpaceConfig

    task = load_task("digits_cnn")
    placements, budget, latency = task_search_setup(task)
    return task, placements, SearchSpace(placements, budget, SpaceConfig(), SolverConfig(seed=0), latency=latency)


@pytest.fixture(scope="session")
def digits_kernels(digits):
    """Six random finished kernels for ``digits_cnn`` (the same every run)."""
    from agents.random_sampler import RandomSampler

    sampler = RandomSampler(digits[2], seed=0)
    return [sampler.ask().kernel for _ in range(6)]


@pytest.fixture(scope="session")
def quick_task():
    """``digits_cnn`` trained on 300 images for one epoch (plumbing tests that need an accuracy)."""
    return task_from_dict(load_task("digits_cnn").to_dict(), overrides={"dataset.train_size": 300, "recipe.epochs": 1.0})


@pytest.fixture(scope="session")
def short_task():
    """``digits_cnn`` with a 5-second build limit (hang tests: the planted kernels hang while building)."""
    return task_from_dict(load_task("digits_cnn").to_dict(), overrides={"timeouts.build_s": 5})


# -- the namespace harness -------------------------------------------------------------------------
def _why_not() -> str:
    if not _problem:
        if importlib.util.find_spec("ray") is None:
            _problem.append("ray is not installed (pip install -e '.[ray]')")
        else:
            from kasrl.eval.ray_executor import netns_problem

            _problem.append(netns_problem())
    return _problem[0]


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Outside the namespace, answer a Ray test with its outcome inside it."""
    if IN_NETNS or pyfuncitem.get_closest_marker("ray") is None:
        return None
    why = _why_not()
    if why:
        pytest.skip(f"{why}: Ray tests run only inside a loopback-only network namespace")
    if pyfuncitem.nodeid not in _outcomes:
        _run_inside(pyfuncitem)
    outcome, text = _outcomes[pyfuncitem.nodeid]
    if outcome == "skipped":
        pytest.skip(text)
    if outcome != "passed":
        pytest.fail(f"inside the network namespace:\n{text}", pytrace=False)
    return True


def _run_inside(item) -> None:
    """Run the Ray tests of ``item``'s module in one subprocess under ``unshare --net``."""
    from kasrl.eval.ray_executor import RAY_ENV, netns_command

    ids = [i.nodeid for i in item.session.items if i.get_closest_marker("ray") and i.path == item.path and i.nodeid not in _outcomes]
    with tempfile.TemporaryDirectory(prefix="kasrl-netns-") as tmp:
        report = Path(tmp) / "report.jsonl"
        env = {**os.environ, **RAY_ENV, "KASRL_IN_NETNS": "1", "KASRL_NETNS_REPORT": str(report)}
        cmd = netns_command([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *ids])
        proc = subprocess.Popen(cmd, cwd=item.config.rootpath, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=_INNER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output = proc.communicate()[0] + f"\n(killed after {_INNER_TIMEOUT_S} s)"
        except BaseException:  # pytest-timeout or ^C interrupting us: leave nothing running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    tail = "\n".join(output.splitlines()[-60:])
    for nodeid in ids:
        reports = [r for r in rows if r["nodeid"] == nodeid]
        failed = [r["text"] for r in reports if r["outcome"] == "failed"]
        skipped = [r["text"] for r in reports if r["outcome"] == "skipped"]
        if failed:
            _outcomes[nodeid] = ("failed", "\n".join(failed))
        elif skipped:
            _outcomes[nodeid] = ("skipped", skipped[0])
        elif any(r["when"] == "call" and r["outcome"] == "passed" for r in reports):
            _outcomes[nodeid] = ("passed", "")
        else:
            _outcomes[nodeid] = ("failed", f"no result (pytest exited with {proc.returncode}); its output ends:\n{tail}")


def pytest_runtest_logreport(report):
    """Inside the namespace, write each phase's outcome where the outer run reads it."""
    if not (IN_NETNS and _REPORT):
        return
    if report.skipped and isinstance(report.longrepr, tuple):
        text = str(report.longrepr[2]).removeprefix("Skipped: ")
    else:
        text = report.longreprtext
    with open(_REPORT, "a") as f:
        f.write(json.dumps({"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome, "text": text}) + "\n")
