"""The rules for watching an evaluation that runs in another process, shared by every backend.

An isolated evaluation (a child process, :mod:`kasrl.eval.worker`, or a Ray
actor, :mod:`kasrl.eval.ray_executor`) names each stage as it starts; its parent
gives the stage the task's time limit for it plus a few seconds of grace, and
kills the worker when it runs past. This module says, once for both backends:

* the limits: :func:`stage_limits` (from the task's ``timeouts``), :data:`_SLACK_S`
  of grace, :data:`_FIRST_STAGE_S` before the first stage is named;
* the clock of one job, :class:`StageClock`, moved on by stage reports (a pipe)
  or by progress samples (Ray);
* what each ending becomes (:class:`~kasrl.eval.outcome.StageOutcome`): a result
  (checked: a malformed one is a ``crash``), a timeout, a death (:class:`Death`:
  ``oom`` when the memory killer did it, else ``crash``), a send that failed,
  or a call that raised.

The backends only move messages, and kill and restart their workers.
:class:`Supervisor` counts those restarts.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kasrl.eval.outcome import StageOutcome
from kasrl.store.records import Status

__all__ = ["Supervisor", "StageClock", "Death", "stage_limits", "first_line", "START", "SEND"]

_SLACK_S = 5.0  # grace beyond a stage's own limit before the worker is killed
_FIRST_STAGE_S = 60.0  # allowed before a job names its first stage
_DEFAULT_LIMIT_S = 600.0  # a stage the limits do not name

#: The stage a job of an isolated worker is in until it names one.
START = "start"
#: The stage a job is in when sending it to the worker fails.
SEND = "send"


def stage_limits(timeouts: Any) -> dict:
    """Stage name -> seconds, from a task's ``timeouts`` (build, compile, latency and training limits)."""
    t = timeouts
    # timing_queue: waiting for neighbours' timing, at most a few of their latency stages;
    # compile: torch.compile of both sides, before the timing (latency.compile)
    return {"build": t.build_s, "budget": t.build_s, "compile": t.compile_s, "timing_queue": 10 * t.latency_s, "latency": t.latency_s,
            "accuracy": t.train_s, "baseline": t.train_s}


def first_line(e: BaseException) -> str:
    """``"ExcType: first line of its message"`` (at most 300 characters of it)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


@dataclass(frozen=True)
class Death:
    """How a worker died under a job: its status (``oom`` or ``crash``) and the words after ``"<stage>: "``."""

    status: Status
    how: str

    @classmethod
    def from_exit_code(cls, code: int | None, who: str = "worker") -> Death:
        """A child process that ended with ``code`` (``-N``: killed by signal N; ``None``: unknown).

        The parent kills only on timeouts, which are answered before a death is
        read, so a SIGKILL here came from the kernel's OOM killer: ``oom``.
        Any other signal, or a plain exit, is a ``crash``.
        """
        if code is not None and code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = f"signal {-code}"
            if -code == signal.SIGKILL:
                return cls(Status.OOM, f"the {who} was killed by {sig} (out of memory)")
            return cls(Status.CRASH, f"the {who} died with {sig}")
        return cls(Status.CRASH, f"the {who} exited with code {code}")

    @classmethod
    def from_ray_error(cls, e: BaseException) -> Death:
        """A Ray actor whose process died (``e`` is the error its call raised).

        ``oom`` when Ray's memory monitor killed it, else ``crash``.
        """
        from ray.exceptions import OutOfMemoryError  # only Ray raises what is read here

        text = str(e)
        if isinstance(e, OutOfMemoryError) or "low on memory" in text or "memory monitor" in text:
            return cls(Status.OOM, "Ray killed the actor for lack of memory")
        return cls(Status.CRASH, f"the Ray actor died ({type(e).__name__})")


class Supervisor:
    """The parent's rules for the jobs of one backend's workers.

    Args:
        limits: stage name -> seconds (:func:`stage_limits`); a stage not named
            here gets 600 s.
        who: how causes name the worker (``"worker"``, ``"Ray actor"``).
        clock: the time source (monotonic seconds; tests pass a fake one).

    Attributes:
        restarts: workers killed or found dead (each is replaced).
    """

    def __init__(self, limits: Mapping[str, float], who: str = "worker", clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = dict(limits)
        self.who = who
        self.clock = clock
        self.restarts = 0

    def limit(self, stage: str) -> float:
        """The time limit of ``stage`` in seconds (without the grace)."""
        return float(self.limits.get(stage, _DEFAULT_LIMIT_S))

    def start(self, first: str = START) -> StageClock:
        """The clock of a job just sent to a worker; ``first`` names it until it names a stage."""
        return StageClock(self, first)

    def died(self, stage: str, death: Death) -> StageOutcome:
        """The outcome of a job whose worker died in ``stage`` (the worker is restarted)."""
        self.restarts += 1
        return StageOutcome.failure(death.status, f"{stage}: {death.how}")

    def send_failed(self, death: Death) -> StageOutcome:
        """The outcome of a job that could not be sent: the worker had died (it is restarted)."""
        return self.died(SEND, death)


class StageClock:
    """The stage one job is in, and when its worker is to be killed.

    Until the job names a stage it has :data:`_FIRST_STAGE_S`; then each stage
    has its limit, counted from when it started, plus :data:`_SLACK_S`.
    """

    def __init__(self, supervisor: Supervisor, first: str = START) -> None:
        self.supervisor = supervisor
        self.stage = first
        self.named = False
        self.stage_start = supervisor.clock()
        self.deadline = self.stage_start + _FIRST_STAGE_S + _SLACK_S

    @property
    def limit(self) -> float:
        """The current stage's limit in seconds (without the grace)."""
        return _FIRST_STAGE_S if not self.named else self.supervisor.limit(self.stage)

    def enter(self, stage: str, elapsed: float = 0.0) -> None:
        """The job reported that it started ``stage``, ``elapsed`` seconds ago; its limit starts then."""
        self.stage, self.named = str(stage), True
        self.stage_start = self.supervisor.clock() - max(float(elapsed), 0.0)
        self.deadline = self.stage_start + self.limit + _SLACK_S

    def sampled(self, stage: str, elapsed: float) -> None:
        """A progress sample: the job is in ``stage``, entered ``elapsed`` seconds ago.

        A sample cannot tell a new entry into the same stage from the one already
        seen, so only a change of stage moves the clock ("" says nothing).
        """
        if stage and (not self.named or stage != self.stage):
            self.enter(stage, elapsed)

    def left(self) -> float:
        """Seconds until the worker is to be killed (never negative)."""
        return max(self.deadline - self.supervisor.clock(), 0.0)

    def expired(self) -> bool:
        """Whether the job ran past its stage's limit and grace."""
        return self.supervisor.clock() > self.deadline

    def timed_out(self) -> StageOutcome:
        """The outcome of a job that ran past its limit (the caller kills the worker, which is restarted)."""
        self.supervisor.restarts += 1
        limit = self.limit
        cause = f"{self.stage}: ran past its limit of {limit:.0f} s; the {self.supervisor.who} was killed"
        return StageOutcome.failure(Status.TIMEOUT, cause, stage=self.stage, seconds=limit)

    def died(self, death: Death) -> StageOutcome:
        """The outcome of a job whose worker died under it (it is restarted)."""
        return self.supervisor.died(self.stage, death)

    def raised(self, e: BaseException) -> StageOutcome:
        """The outcome of a job whose call raised while its worker lived on (a ``crash``)."""
        return StageOutcome.failure(Status.CRASH, f"{self.stage}: {first_line(e)}")

    def received(self, data: Any) -> StageOutcome:
        """The outcome a worker sent, checked: a malformed one is a ``crash`` saying what is wrong."""
        try:
            return StageOutcome.from_dict(data)
        except ValueError as e:
            problem = str(e)
        except Exception as e:  # noqa: BLE001 - whatever was sent, the search goes on
            problem = first_line(e)
        return StageOutcome.failure(Status.CRASH, f"{self.stage}: the {self.supervisor.who} sent a malformed result ({problem})")

