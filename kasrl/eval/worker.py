"""Crash isolation: evaluations run in a child process that keeps its task loaded.

A segfault, a hang or a runaway allocation in one kernel kills at most the
child; the parent records ``crash`` / ``timeout`` / ``oom`` and starts a fresh
child for the next kernel. Kernels travel as their JSON documents, never as
pickled modules. The child starts with the allocator pinned (see
:mod:`kasrl.eval.latency`) and, optionally, a cap on its address space. A child
given a GPU (``cuda:i``) makes it its current device first
(:func:`kasrl.eval.runtime.pin_device`), so CUDA events and synchronisation
time that GPU, and says which one it uses in every outcome's ``device``.

Protocol (over a ``multiprocessing`` pipe, spawn start method)::

    parent -> child   ("eval", payload)      payload: {"doc": json} or {"planted": "module:Class"}
                      ("baseline", None)
                      ("stop", None)
    child -> parent   ("ready", device)      once the task is loaded: the device fingerprint it records
                      ("stage", name)        when a stage starts (its time limit starts then)
                      ("result", dict)       a StageOutcome.to_dict() (kasrl.eval.outcome)
                      ("fatal", message)     the task itself cannot be loaded

The parent only moves these messages and kills or restarts the child; the time
limits, and what a timeout or a death becomes, are :mod:`kasrl.eval.isolation`'s.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import threading

from kasrl.errors import KasrlError
from kasrl.eval.isolation import Death, Supervisor
from kasrl.eval.latency import MALLOC_ENV
from kasrl.eval.outcome import StageOutcome

__all__ = ["IsolatedWorker", "WorkerError"]

_ENV_LOCK = threading.Lock()  # os.environ is process-wide: pool threads start children one at a time


class WorkerError(KasrlError):
    """Raised when the worker cannot load the task at all."""


def _child_main(conn, task_ref, memory_limit: int | None, threads: int | None, device: str | None) -> None:
    import torch

    wanted = device or (task_ref.get("device") if isinstance(task_ref, dict) else None) or "cpu"
    on_gpu = wanted.startswith("cuda") or (wanted == "auto" and torch.cuda.is_available())
    if memory_limit and not on_gpu:
        # an address-space cap; CUDA reserves far more address space than it uses, so not on GPUs
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    if threads:
        torch.set_num_threads(threads)
    from kasrl.eval.runtime import TaskRuntime
    from kasrl.eval.stages import run_job

    try:
        rt = TaskRuntime(task_ref, device=device)  # pins the device (torch.cuda.set_device) before loading anything
    except Exception as e:  # noqa: BLE001 - reported to the parent in one line
        conn.send(("fatal", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", dict(rt.hardware)))
    while True:
        try:
            kind, payload = conn.recv()
        except EOFError:
            return
        if kind == "stop":
            return
        skip = tuple(payload.get("skip", ())) if isinstance(payload, dict) else ()
        outcome = run_job(rt, kind, payload, report=lambda s: conn.send(("stage", s)), skip=skip)
        conn.send(("result", outcome.to_dict()))


class IsolatedWorker:
    """One child process evaluating kernels for one task; replaced after a crash or timeout.

    Args:
        task_ref: task name, YAML path or plain dict (``Task.to_dict()``).
        limits: stage name -> seconds (``build``, ``budget``, ``latency``,
            ``accuracy``, ``baseline``; see :func:`kasrl.eval.isolation.stage_limits`);
            the child is killed when a stage runs past its limit plus a few
            seconds of grace.
        memory_limit: cap on the child's address space in bytes (None: no cap).
        threads: torch threads in the child.
        device: override the task's device (e.g. ``"cuda:1"``: the child pins that GPU).
        start_timeout: seconds allowed for loading the task.
    """

    def __init__(self, task_ref, limits: dict, memory_limit: int | None = None, threads: int | None = None,
                 device: str | None = None, start_timeout: float = 300.0) -> None:
        self.task_ref = task_ref
        self.limits = dict(limits)
        self.memory_limit = memory_limit
        self.threads = threads
        self.device = device
        self.start_timeout = start_timeout
        self.proc = None
        self.conn = None
        self.supervisor = Supervisor(self.limits, "worker")
        self.device_info: dict = {}  # the child's device fingerprint, from its "ready" message

    @property
    def restarts(self) -> int:
        """How many times the child was killed or found dead (and so replaced)."""
        return self.supervisor.restarts

    def start(self) -> dict:
        """Start the child unless it runs; its device fingerprint (``device_info``)."""
        if self.proc is None or not self.proc.is_alive():
            self._start()
        return self.device_info

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        with _ENV_LOCK:
            saved = {k: os.environ.get(k) for k in MALLOC_ENV}
            os.environ.update(MALLOC_ENV)  # the child interpreter starts with these set
            try:
                self.proc = ctx.Process(target=_child_main, args=(child, self.task_ref, self.memory_limit, self.threads, self.device),
                                        daemon=True)
                self.proc.start()
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        child.close()
        self.conn = parent
        if not parent.poll(self.start_timeout):
            self.kill()
            raise WorkerError(f"the evaluation worker did not load the task within {self.start_timeout:.0f} s")
        try:
            kind, msg = parent.recv()
        except (EOFError, OSError):
            self.proc.join(5)  # reap it, so its exit code is known
            code = self.proc.exitcode
            self.kill()
            raise WorkerError(f"the evaluation worker exited with code {code} while loading the task") from None
        if kind == "fatal":
            self.kill()
            raise WorkerError(f"the evaluation worker cannot load the task: {msg}")
        self.device_info = dict(msg or {})

    def kill(self) -> None:
        """Stop the child now (it is restarted on the next request)."""
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
        if self.proc is not None:
            self.proc.join(5)
        self.proc = None
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def close(self) -> None:
        """Ask the child to stop, then make sure it is gone."""
        if self.conn is not None and self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(("stop", None))
                self.proc.join(5)
            except (OSError, BrokenPipeError):
                pass
        self.kill()

    def _death(self) -> Death:
        """How the child died (it is gone after this; the next request starts a new one)."""
        if self.proc is not None:
            self.proc.join(5)  # reap it, so its exit code (the signal) is known
        code = self.proc.exitcode if self.proc is not None else None
        self.kill()
        return Death.from_exit_code(code, "worker")

    def request(self, kind: str, payload) -> StageOutcome:
        """Send one job and wait for its outcome, enforcing per-stage limits.

        An outcome made here (a timeout, a death) says the device the child used.
        """
        return self._request(kind, payload).with_device(self.device_info)

    def _request(self, kind: str, payload) -> StageOutcome:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        try:
            self.conn.send((kind, payload))
        except (OSError, BrokenPipeError):
            return self.supervisor.send_failed(self._death())
        clock = self.supervisor.start()
        while True:
            try:
                ready = self.conn.poll(clock.left())
            except (OSError, EOFError):
                return clock.died(self._death())
            if not ready:
                self.kill()
                return clock.timed_out()
            try:
                msg_kind, msg = self.conn.recv()
            except (EOFError, OSError):
                return clock.died(self._death())
            if msg_kind == "stage":
                clock.enter(msg)
            elif msg_kind == "result":
                return clock.received(msg)
