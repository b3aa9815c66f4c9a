"""The supervision rules both isolated backends share, checked without a child process.

A fake clock moves time; a fake child (one end of a pipe, and a process that is
only pretended) answers :class:`~kasrl.eval.worker.IsolatedWorker`.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading

import pytest

from kasrl.eval.base import DEFAULT_PENALTIES
from kasrl.eval.isolation import _FIRST_STAGE_S, _SLACK_S, Death, Supervisor, stage_limits
from kasrl.eval.measured import MeasuredEvaluator
from kasrl.eval.outcome import StageOutcome
from kasrl.eval.stages import run_job
from kasrl.eval.worker import IsolatedWorker
from kasrl.store.records import Status
from kasrl.tasks import load_task
from tests.eval import planted

LIMITS = {"build": 5.0, "latency": 20.0}


class FakeClock:
    """Monotonic seconds that move only when told (``step``: on every reading too)."""

    def __init__(self, step: float = 0.0) -> None:
        self.t = 0.0
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


# -- deadlines -----------------------------------------------------------------------------------
def test_a_stage_past_its_limit_and_grace_is_a_timeout_naming_the_stage_and_the_limit():
    now = FakeClock()
    sup = Supervisor(LIMITS, "worker", clock=now)
    clock = sup.start()
    now.t = 1.0
    clock.enter("build")
    now.t = 1.0 + 5.0 + _SLACK_S
    assert not clock.expired() and clock.left() == 0.0
    now.t += 0.01
    assert clock.expired()
    out = clock.timed_out()
    assert out.status == Status.TIMEOUT
    assert out.cause == "build: ran past its limit of 5 s; the worker was killed"
    assert out.stages == {"build": {"outcome": "timeout", "seconds": 5.0}}
    assert sup.restarts == 1


def test_before_its_first_stage_a_job_has_the_first_stage_allowance():
    now = FakeClock()
    sup = Supervisor(LIMITS, "Ray actor", clock=now)
    clock = sup.start("baseline")  # named by its kind until the worker names a stage
    now.t = _FIRST_STAGE_S + _SLACK_S - 0.01
    assert not clock.expired() and clock.limit == _FIRST_STAGE_S
    now.t += 0.02
    assert clock.expired()
    assert clock.timed_out().cause == "baseline: ran past its limit of 60 s; the Ray actor was killed"
    assert Supervisor(LIMITS, clock=now).start().stage == "start"


def test_each_reported_stage_restarts_the_clock_and_unknown_stages_get_600_s():
    now = FakeClock()
    sup = Supervisor(LIMITS, clock=now)
    clock = sup.start()
    clock.enter("latency")
    now.t = 10.0
    clock.enter("latency")  # reported again (after the timing queue): its limit starts again
    assert clock.deadline == 10.0 + 20.0 + _SLACK_S
    clock.enter("mystery")
    assert clock.limit == 600.0 and clock.deadline == 10.0 + 600.0 + _SLACK_S


def test_progress_samples_move_the_clock_only_when_the_stage_changes():
    now = FakeClock()
    clock = Supervisor(LIMITS, clock=now).start("eval")
    now.t = 3.0
    clock.sampled("", 0.0)  # the actor has not started the job yet
    assert clock.stage == "eval" and clock.deadline == _FIRST_STAGE_S + _SLACK_S
    clock.sampled("build", 2.0)  # entered 2 s before this sample
    assert clock.stage == "build" and clock.deadline == 1.0 + 5.0 + _SLACK_S
    now.t = 8.0
    clock.sampled("build", 0.5)  # the same stage: the deadline stays
    assert clock.deadline == 1.0 + 5.0 + _SLACK_S
    clock.sampled("latency", 0.0)
    assert clock.deadline == 8.0 + 20.0 + _SLACK_S


def test_stage_limits_come_from_the_task_timeouts():
    t = load_task("digits_cnn").timeouts
    limits = stage_limits(t)
    assert limits == {"build": t.build_s, "budget": t.build_s, "compile": t.compile_s, "timing_queue": 10 * t.latency_s,
                      "latency": t.latency_s, "accuracy": t.train_s, "baseline": t.train_s}


# -- deaths ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code,status,how",
    [
        (-signal.SIGKILL, Status.OOM, "the worker was killed by SIGKILL (out of memory)"),
        (-signal.SIGSEGV, Status.CRASH, "the worker died with SIGSEGV"),
        (-signal.SIGABRT, Status.CRASH, "the worker died with SIGABRT"),
        (1, Status.CRASH, "the worker exited with code 1"),
        (None, Status.CRASH, "the worker exited with code None"),
    ],
)
def test_a_death_by_sigkill_is_oom_and_any_other_a_crash(code, status, how):
    death = Death.from_exit_code(code, "worker")
    assert (death.status, death.how) == (status, how)
    sup = Supervisor(LIMITS, clock=FakeClock())
    clock = sup.start()
    clock.enter("build")
    out = clock.died(death)
    assert (out.status, out.cause, out.stages) == (status, f"build: {how}", {})
    assert sup.send_failed(death).cause == f"send: {how}"
    assert sup.restarts == 2  # each death replaces the worker


def test_a_call_that_raised_is_a_crash_in_one_line_and_the_worker_lives_on():
    sup = Supervisor(LIMITS, clock=FakeClock())
    clock = sup.start()
    clock.enter("latency")
    out = clock.raised(RuntimeError("the call failed\nwith a traceback"))
    assert (out.status, out.cause) == (Status.CRASH, "latency: RuntimeError: the call failed")
    assert sup.restarts == 0


def test_a_malformed_result_is_a_crash_with_a_one_line_cause():
    clock = Supervisor(LIMITS, "Ray actor", clock=FakeClock()).start()
    clock.enter("accuracy")
    good = StageOutcome(Status.OK, "", {"accuracy": 90.0})
    assert clock.received(good.to_dict()) == good
    for garbage in (None, {"status": "splendid"}, {"status": "ok", "stages": {"build": {"outcome": "ok"}}}, "ok"):
        out = clock.received(garbage)
        assert out.status == Status.CRASH and "\n" not in out.cause
        assert out.cause.startswith("accuracy: the Ray actor sent a malformed result (")


# -- the pipe backend driven through the shared rules, with a pretend child ------------------------------
class _FakeProc:
    """Stands in for the child process: alive until killed, with a given exit code."""

    def __init__(self, exitcode: int | None = None) -> None:
        self.exitcode = exitcode
        self.alive = True

    def is_alive(self) -> bool:
        return self.alive

    def kill(self) -> None:
        self.alive = False

    def join(self, timeout: float | None = None) -> None:
        pass


def _fake_worker(exitcode: int | None = None, clock=None):
    """An IsolatedWorker whose child is the returned end of a pipe."""
    worker = IsolatedWorker({"name": "fake"}, LIMITS)
    if clock is not None:
        worker.supervisor.clock = clock
    parent, child = mp.Pipe()
    worker.proc, worker.conn = _FakeProc(exitcode), parent
    return worker, child


def test_a_worker_sending_a_malformed_result_is_a_crash_not_an_exception_in_the_search():
    worker, child = _fake_worker()
    child.send(("stage", "build"))
    child.send(("result", {"status": "ok", "metrics": "fast"}))
    ev = MeasuredEvaluator(load_task("digits_cnn"), isolation="process", skip=("accuracy",))
    ev._worker = worker
    result = ev.evaluate(planted.NaNKernel())
    assert result.status == Status.CRASH and result.reward == DEFAULT_PENALTIES["crash"]
    assert result.cause == "build: the worker sent a malformed result (`metrics` must be a dict, got str 'fast')"
    assert child.recv()[0] == "eval"  # the job went out as plain data
    assert worker.restarts == 0
    worker.kill()


def test_a_worker_sending_a_good_result_gives_it_back_typed():
    worker, child = _fake_worker()
    sent = StageOutcome.failure(Status.NUMERICS_ERROR, "build: NumericsError: not finite", stage="build", seconds=0.1)
    child.send(("stage", "build"))
    child.send(("result", sent.to_dict()))
    assert worker.request("eval", {"doc": "{}"}) == sent
    worker.kill()


def test_a_worker_that_dies_mid_stage_is_classified_by_its_exit_code():
    worker, child = _fake_worker(exitcode=-signal.SIGKILL)

    def child_side():
        child.recv()
        child.send(("stage", "build"))
        child.close()  # the child is gone

    t = threading.Thread(target=child_side, daemon=True)
    t.start()
    out = worker.request("eval", {"doc": "{}"})
    t.join(10)
    assert (out.status, out.cause) == (Status.OOM, "build: the worker was killed by SIGKILL (out of memory)")
    assert worker.restarts == 1 and worker.proc is None


def test_a_worker_that_cannot_be_sent_its_job_is_a_send_failure():
    worker, child = _fake_worker(exitcode=-signal.SIGSEGV)
    child.close()
    out = worker.request("eval", {"doc": "{}"})
    assert (out.status, out.cause) == (Status.CRASH, "send: the worker died with SIGSEGV")
    assert worker.restarts == 1


def test_a_silent_worker_is_killed_at_its_deadline():
    worker, child = _fake_worker(clock=FakeClock(step=100.0))  # every reading is 100 s later: no real waiting
    child.send(("stage", "build"))
    out = worker.request("eval", {"doc": "{}"})
    assert (out.status, out.cause) == (Status.TIMEOUT, "build: ran past its limit of 5 s; the worker was killed")
    assert worker.restarts == 1 and worker.proc is None
    worker, child = _fake_worker(clock=FakeClock(step=100.0))
    assert worker.request("baseline", None).cause == "start: ran past its limit of 60 s; the worker was killed"


# -- the jobs both backends run ------------------------------------------------------------------
def test_a_kernel_that_cannot_be_loaded_is_a_build_error():
    out = run_job(None, "eval", {"planted": "tests.eval.no_such_module:Kernel"})
    assert out.status == Status.BUILD_ERROR and out.cause.startswith("load: ModuleNotFoundError: ")


def test_the_measured_evaluator_refuses_an_isolation_it_does_not_run():
    with pytest.raises(ValueError, match="`isolation` must be 'process' or 'inline', got 'ray'"):
        MeasuredEvaluator(load_task("digits_cnn"), isolation="ray")


def test_a_subclass_names_the_isolation_it_runs_and_is_initialised_once():
    from kasrl.eval.ray_executor import RayEvaluator  # imports no Ray

    class Elsewhere(MeasuredEvaluator):
        isolations = ("elsewhere",)

    assert Elsewhere(load_task("digits_cnn"), isolation="elsewhere").isolation == "elsewhere"
    with pytest.raises(ValueError, match="`isolation` must be 'elsewhere', got 'process'"):
        Elsewhere(load_task("digits_cnn"))
    assert RayEvaluator.isolations == ("ray",)
