"""Evaluations on Ray actors: the measured stages and reward of the local pool, on a cluster.

:class:`RayEvaluator` is a :class:`~kasrl.eval.measured.MeasuredEvaluator` whose
stages run on Ray actors instead of a local child process. Only the stage work
moves: the baseline's cache in the results store, the penalties and the reward
stay in the driver, in the code :class:`MeasuredEvaluator` already has.

* one actor per worker, each with the task loaded once (data, networks,
  placements) and ``num_cpus`` / ``num_gpus`` reserved for it: ``num_gpus=1``
  gives every evaluation a GPU of its own on a GPU cluster;
* kernels travel as their JSON documents; outcomes come back as plain dicts
  (:meth:`kasrl.eval.outcome.StageOutcome.to_dict`), are checked, and become
  :class:`EvalResult` here;
* an actor that dies (segfault, OOM kill) is restarted by Ray (``max_restarts``)
  and its kernel is recorded as ``crash`` (``oom`` when Ray's memory monitor
  killed it); an actor that runs past its stage's time limit (the task's
  ``timeouts``, plus a few seconds' grace) is killed, restarted, and its kernel
  is recorded as ``timeout``. The batch goes on on the other actors meanwhile.
  These rules are the local worker's (:mod:`kasrl.eval.isolation`); here the
  driver learns an actor's stage by asking it (``progress``).
  Without GPUs an actor's private memory is capped (``memory_limit``, as
  ``RLIMIT_DATA``): a runaway allocation fails inside the stage and is ``oom``;
* actors on one node share the timing locks of :func:`kasrl.eval.stages.timing_lock`,
  as local workers do: one machine-wide for CPU timings, one per physical GPU;
* an actor pins the GPU Ray gave it (``CUDA_VISIBLE_DEVICES`` makes it ``cuda:0``)
  and reports its device fingerprint, which names the physical GPU (``gpu_id``);
  every outcome records it, failures made here too, and the results cache reuses
  only results measured on the actors' hardware (:meth:`RayEvaluator.hardware_keys`).

``ray`` is imported only inside the functions of this module: kasrl does not
need Ray unless ``executor=ray``.

**On machines without outside network access, start Ray only inside a network
namespace that has nothing but loopback**: at start-up Ray probes a cloud
metadata address and a public DNS server. :func:`netns_command` wraps a command
in such a namespace and :func:`loopback_only` tells whether this process is in one::

    unshare --net sh -c 'ip link set lo up; python train_agent.py executor=ray workers=2'

>>> netns_command(["python", "-V"])[-4:]
['-c', 'ip link set lo up && exec "$0" "$@"', 'python', '-V']
"""

from __future__ import annotations

import collections
import logging
import math
import os
import subprocess
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kasrl.eval.isolation import Death, StageClock, Supervisor, first_line, stage_limits
from kasrl.eval.measured import MeasuredEvaluator
from kasrl.eval.outcome import StageOutcome
from kasrl.eval.stages import Evaluable, GraphKernel
from kasrl.eval.worker import WorkerError
from kasrl.ir.graph import KernelGraph
from kasrl.tasks import Task

__all__ = ["RayEvaluator", "RAY_ENV", "loopback_only", "netns_command", "netns_problem"]

#: Set before Ray starts: no usage statistics, no metrics exporter.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_enable_metrics_collection": "0"}

_RETRY_S = 0.5  # pause between "are you back?" calls to a restarting actor


# -- running Ray safely on machines without outside network access -----------------------------
def loopback_only() -> bool:
    """True when this process's network namespace has no interface but loopback.

    Reads ``/proc/self/net/dev`` (``/sys/class/net`` shows the namespace sysfs was
    mounted in, not this process's).
    """
    try:
        with open("/proc/self/net/dev") as f:
            names = {line.split(":", 1)[0].strip() for line in f.readlines()[2:] if ":" in line}
    except OSError:
        return False
    return names <= {"lo"}


def netns_command(argv: Sequence[str]) -> list:
    """``argv`` run inside a new network namespace with only loopback, brought up.

    As root, ``unshare --net``; otherwise inside a user namespace as well
    (``--user --map-root-user``), where the kernel allows unprivileged ones.
    """
    flags = ["--net"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--net"]
    return ["unshare", *flags, "sh", "-c", 'ip link set lo up && exec "$0" "$@"', *argv]


def netns_problem() -> str:
    """Why a loopback-only namespace cannot be made here ("" when it can)."""
    try:
        out = subprocess.run(netns_command(["true"]), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`unshare` cannot run here ({type(e).__name__}: {e})"
    if out.returncode != 0:
        first = (out.stderr.strip().splitlines() or ["no message"])[0]
        return f"`{' '.join(netns_command([])[:-3])}` is not permitted here ({first})"
    return ""


# -- the actor ------------------------------------------------------------------------------------
class _StageActor:
    """One Ray actor: the task loaded once, one evaluation at a time.

    Runs with ``max_concurrency=2`` so that :meth:`progress` answers while
    :meth:`run` works; the driver uses it to enforce per-stage time limits.
    """

    def __init__(self, task: dict, skip: tuple, memory_limit: int | None) -> None:
        self.skip = tuple(skip)
        self.fatal = ""
        self._now: tuple = (None, "", 0.0)  # (job token, stage, monotonic start)
        if memory_limit:
            # RLIMIT_DATA, not RLIMIT_AS: Ray maps its object store into every worker.
            import resource

            resource.setrlimit(resource.RLIMIT_DATA, (memory_limit, memory_limit))
        try:
            from kasrl.eval.runtime import TaskRuntime

            self.rt = TaskRuntime(task)  # pins its device: with a GPU of its own, the cuda:0 CUDA_VISIBLE_DEVICES shows it
        except Exception as e:  # noqa: BLE001 - reported to the driver by ready()
            self.fatal = f"{type(e).__name__}: {e}"

    def ready(self) -> dict:
        """Where this actor runs: its device fingerprint and pid (or ``{"fatal": message}`` when the task did not load)."""
        if self.fatal:
            return {"fatal": self.fatal}
        return {**self.rt.hardware, "pid": os.getpid()}

    def progress(self) -> tuple:
        """``(job token, stage, seconds in that stage)`` of the evaluation under way."""
        token, stage, start = self._now
        return token, stage, time.monotonic() - start

    def run(self, token: int, kind: str, payload: dict | None) -> dict:
        """Run the stages on one kernel (``kind="eval"``) or train the baseline; a ``StageOutcome.to_dict()``."""
        from kasrl.eval.stages import run_job

        def report(stage: str) -> None:
            self._now = (token, stage, time.monotonic())

        try:
            return run_job(self.rt, kind, payload, report=report, skip=self.skip).to_dict()
        finally:
            self._now = (None, "", 0.0)


# -- the driver -----------------------------------------------------------------------------------
@dataclass
class _Slot:
    """One actor as the driver sees it: idle, busy with a job, or (re)starting."""

    actor: Any
    token: int = 0
    job: int | None = None  # index into the batch
    ref: Any = None  # the job's ObjectRef
    probe: Any = None  # a pending progress() call
    last_probe: float = 0.0
    clock: StageClock | None = None  # the job's stage and deadline
    ready: Any = None  # a pending ready() call while the actor (re)starts
    ready_since: float = 0.0
    retry_at: float = 0.0  # when to ask a restarting actor again
    pid: int = 0  # the actor's process; a restart must show a new one
    stale_pid: int = 0  # the pid of the process that was killed or died
    device: dict | None = None  # the actor's device fingerprint (from ready())

    @property
    def idle(self) -> bool:
        return self.job is None and self.ready is None and not self.retry_at


class RayEvaluator(MeasuredEvaluator):
    """Measured evaluations on Ray actors, one evaluation per actor at a time.

    An :class:`~kasrl.eval.base.Evaluator` like every backend: :meth:`evaluate`
    (one kernel), :meth:`evaluate_many` (a batch, spread over the actors, results
    in input order), :meth:`baseline` (trained once on an actor, cached in the
    store), :meth:`close` (kills the actors; shuts Ray down if it started it).
    One caller at a time: concurrent calls wait for each other.

    Args:
        task: a :class:`~kasrl.tasks.Task`, a task name or a YAML path.
        workers: actors (evaluations at once).
        address: ``""`` starts a local Ray with ``workers * num_cpus`` CPUs;
            ``"auto"`` joins the cluster running on this machine; ``host:port``
            joins that one. Start Ray inside a loopback-only network namespace
            on machines without outside network access (see the module docstring).
        num_cpus: CPUs reserved per actor.
        num_gpus: GPUs reserved per actor (1 on a GPU cluster: Ray sets
            ``CUDA_VISIBLE_DEVICES`` so each actor sees its own).
        store_path: the SQLite results store where the baseline's accuracy is
            cached (None: trained once per evaluator).
        skip: stages to leave out (e.g. ``("accuracy",)``).
        run_id, strategy: written into the baseline's record.
        memory_limit: cap on an actor's private memory in bytes (``RLIMIT_DATA``;
            only without GPUs; None: no cap).
        start_timeout: seconds allowed for an actor to load the task.
        poll_s: how often the driver asks a busy actor which stage it is in.
    """

    isolations = ("ray",)

    def __init__(
        self,
        task: Task | str,
        workers: int = 1,
        address: str = "",
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        store_path: str | None = None,
        *,
        skip: Sequence[str] = (),
        run_id: str = "adhoc",
        strategy: str = "adhoc",
        memory_limit: int | None = 8 << 30,
        start_timeout: float = 300.0,
        poll_s: float = 0.5,
    ) -> None:
        if workers < 1:
            raise ValueError(f"`workers` must be at least 1, got {workers}")
        if num_cpus < 0 or num_gpus < 0:
            raise ValueError(f"`num_cpus` and `num_gpus` must not be negative, got {num_cpus} and {num_gpus}")
        store = None
        if store_path:
            from kasrl.store.sqlite import SQLiteStore

            store = SQLiteStore(store_path)
        super().__init__(task, store, isolation="ray", run_id=run_id, strategy=strategy, memory_limit=memory_limit, skip=skip)
        self.supervisor = Supervisor(stage_limits(self.task.timeouts), "Ray actor")
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.start_timeout = start_timeout
        self.poll_s = poll_s
        self.devices: list = []
        self._own_store = store
        self._slots: list = []
        self._tokens = 0
        self._lock = threading.Lock()
        self._started_ray = _connect(address, workers * num_cpus, workers * num_gpus)
        try:
            _warn_if_short(workers, num_cpus, num_gpus)
            self._slots = [_Slot(self._new_actor()) for _ in range(workers)]
            self.devices = self._wait_ready([s.actor for s in self._slots])
            for s, info in zip(self._slots, self.devices, strict=True):
                s.pid, s.device = info["pid"], _device_of(info)
        except BaseException:
            self.close()
            raise

    @property
    def restarts(self) -> int:
        """How many times an actor was killed or found dead (and so restarted)."""
        return self.supervisor.restarts

    def device_info(self) -> dict:
        """The device fingerprint of the first actor (they may differ: see :meth:`hardware_keys`)."""
        return self._known_device()

    def hardware_keys(self) -> tuple:
        """The ``hardware`` keys of every actor's device: results measured on any of them may be reused."""
        return tuple(sorted({s.device["hardware"] for s in self._slots if s.device and s.device.get("hardware")}))

    def _known_device(self) -> dict:
        return next((dict(s.device) for s in self._slots if s.device), {})

    # -- actors ---------------------------------------------------------------------------------
    def _new_actor(self):
        import ray

        from kasrl.eval.latency import MALLOC_ENV

        limit = self.memory_limit if not self.num_gpus else None  # CUDA maps private memory of its own
        cls = ray.remote(_StageActor)
        return cls.options(
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
            max_restarts=-1,
            max_task_retries=0,
            max_concurrency=2,
            runtime_env={"env_vars": dict(MALLOC_ENV)},
        ).remote(self.task.to_dict(), self.skip, limit)

    def _wait_ready(self, actors: list) -> list:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            infos = ray.get([a.ready.remote() for a in actors], timeout=self.start_timeout)
        except GetTimeoutError:
            raise WorkerError(
                f"the Ray actors did not load the task within {self.start_timeout:.0f} s; each asks for "
                f"{self.num_cpus} CPUs and {self.num_gpus} GPUs, and the cluster has {ray.cluster_resources()}"
            ) from None
        except RayActorError as e:
            raise WorkerError(f"a Ray actor died while loading the task: {first_line(e)}") from None
        for info in infos:
            if "fatal" in info:
                raise WorkerError(f"the Ray actor cannot load the task: {info['fatal']}")
        return infos

    # -- MeasuredEvaluator's hook: the stages run remotely ----------------------------------------
    def _run(self, kind: str, payload) -> StageOutcome:
        """Run one job on an actor."""
        return self._dispatch([(kind, _wire(payload))])[0]

    def evaluate_many(self, kernels: Sequence[KernelGraph | Evaluable]) -> list:
        """Evaluate a batch on the actors at once (results in input order)."""
        evs = [k if isinstance(k, Evaluable) else GraphKernel(k) for k in kernels]
        if not evs:
            return []
        baseline_acc = self.baseline()["accuracy"] if "accuracy" not in self.skip else 0.0
        payloads = [{"planted": ev.planted} if getattr(ev, "planted", None) else {"doc": ev.doc} for ev in evs]
        raws = self._dispatch([("eval", p) for p in payloads])
        return [self._result(raw, ev.hash, baseline_acc) for raw, ev in zip(raws, evs, strict=True)]

    def measure_many(self, kernels: Sequence, skip: Sequence[str] = (), options: dict | None = None) -> list:
        """Raw stage outcomes of a batch at a chosen fidelity, on the actors at once (a ladder rung)."""
        evs = [k if isinstance(k, Evaluable) else GraphKernel(k) for k in kernels]
        if not evs:
            return []
        extra = {"skip": list(skip), "options": dict(options or {})}
        payloads = [{"planted": ev.planted, **extra} if getattr(ev, "planted", None) else {"doc": ev.doc, **extra} for ev in evs]
        return self._dispatch([("eval", p) for p in payloads])

    def _dispatch(self, jobs: list) -> list:
        """Run ``[(kind, payload), ...]`` on the actors; their outcomes in order."""
        import ray

        with self._lock:
            if not self._slots:
                raise WorkerError("this RayEvaluator is closed")
            results: list = [None] * len(jobs)
            todo = collections.deque(range(len(jobs)))
            while todo or any(s.job is not None for s in self._slots):  # restarts may go on after the batch
                now = time.monotonic()
                for s in self._slots:
                    if s.retry_at and now >= s.retry_at:
                        s.retry_at = 0.0
                        s.ready = s.actor.ready.remote()
                    if s.idle and todo:
                        self._submit(s, todo.popleft(), jobs)
                waiting = {}
                for s in self._slots:
                    for what in ("ref", "probe", "ready"):
                        if getattr(s, what) is not None:
                            waiting[getattr(s, what)] = (s, what)
                if waiting:
                    ray.wait(list(waiting), num_returns=1, timeout=self.poll_s)
                    done, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=0)
                else:  # every busy actor is restarting: ask again shortly
                    time.sleep(_RETRY_S / 5)
                    done = []
                for ref in done:
                    s, what = waiting[ref]
                    if getattr(s, what) is not None and getattr(s, what) == ref:  # not superseded this round
                        setattr(s, what, None)
                        getattr(self, f"_on_{what}")(s, ref, results)
                self._watch(results)
            return results

    def _submit(self, s: _Slot, job: int, jobs: list) -> None:
        kind, payload = jobs[job]
        self._tokens += 1
        now = time.monotonic()
        s.token, s.job = self._tokens, job
        s.clock = self.supervisor.start(kind)  # named by the job's kind until the actor names its stage
        s.ref = s.actor.run.remote(s.token, kind, payload)
        s.probe, s.last_probe = None, now

    def _on_probe(self, s: _Slot, ref, results: list) -> None:
        """A busy actor said which stage it is in: move its deadline to that stage's limit."""
        import ray

        try:
            token, stage, elapsed = ray.get(ref)
        except Exception:  # noqa: BLE001 - a probe is advisory; the job's own ref tells what happened
            return
        if token == s.token and s.job is not None:
            s.clock.sampled(stage, elapsed)

    def _on_ready(self, s: _Slot, ref, results: list) -> None:
        """A (re)starting actor answered, or said it is not back yet."""
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        try:
            info = ray.get(ref)
        except ActorUnavailableError:  # still restarting
            s.retry_at = time.monotonic() + _RETRY_S
            return
        except RayActorError:  # gone for good (out of restarts): start a new one
            s.actor = self._new_actor()
            s.ready, s.ready_since = s.actor.ready.remote(), time.monotonic()
            return
        if "fatal" in info:
            raise WorkerError(f"the restarted Ray actor cannot load the task: {info['fatal']}")
        if info["pid"] == s.stale_pid:  # the killed process answered before it went: ask again
            s.retry_at = time.monotonic() + _RETRY_S
            return
        s.pid, s.stale_pid, s.device = info["pid"], 0, _device_of(info)

    def _on_ref(self, s: _Slot, ref, results: list) -> None:
        """A job finished, raised, or lost its actor."""
        import ray
        from ray.exceptions import RayActorError

        job, clock = s.job, s.clock
        s.job = s.probe = s.clock = None
        try:
            results[job] = clock.received(ray.get(ref))
        except RayActorError as e:  # the actor's process died: Ray restarts it
            results[job] = clock.died(Death.from_ray_error(e))
            self._restarting(s)
        except Exception as e:  # noqa: BLE001 - the call itself raised (the actor lives on)
            results[job] = clock.raised(e)
        results[job] = results[job].with_device(s.device or {})  # where it ran, also when the driver made the outcome

    def _restarting(self, s: _Slot) -> None:
        """Wait for ``s``'s actor to come back (with a new process) before giving it work."""
        s.stale_pid, s.pid = s.pid, 0
        s.ready, s.retry_at, s.ready_since = None, time.monotonic() + _RETRY_S, time.monotonic()

    def _watch(self, results: list) -> None:
        """Kill actors past their stage's limit; ask busy ones for progress; give up on dead ones."""
        import ray

        now = time.monotonic()
        for s in self._slots:
            if s.job is not None and s.clock.expired():
                results[s.job] = s.clock.timed_out().with_device(s.device or {})
                ray.kill(s.actor, no_restart=False)
                s.job = s.ref = s.probe = s.clock = None
                self._restarting(s)
            elif s.job is not None and s.probe is None and now - s.last_probe >= self.poll_s:
                s.probe, s.last_probe = s.actor.progress.remote(), now
            elif (s.ready is not None or s.retry_at) and now - s.ready_since > self.start_timeout:
                raise WorkerError(f"a Ray actor did not come back within {self.start_timeout:.0f} s of a restart")

    def close(self) -> None:
        """Kill the actors; shut Ray down if this evaluator started it."""
        slots, self._slots = self._slots, []
        if slots or self._started_ray:
            import ray

            for s in slots:
                try:
                    ray.kill(s.actor, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            if self._started_ray and ray.is_initialized():
                ray.shutdown()
            self._started_ray = False
        if self._own_store is not None:
            self._own_store.close()
            self._own_store = None


# -- helpers --------------------------------------------------------------------------------------
def _connect(address: str, cpus: float, gpus: float) -> bool:
    """Start or join Ray; True when this call started it (and so must shut it down)."""
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    import ray

    if ray.is_initialized():
        return False
    common = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **common)
    else:
        extra = {"num_gpus": None} if gpus else {"num_gpus": 0}  # GPUs: let Ray find them
        ray.init(address="local", num_cpus=max(1, math.ceil(cpus)), object_store_memory=128 << 20, **extra, **common)
    return True


def _warn_if_short(workers: int, num_cpus: float, num_gpus: float) -> None:
    """Warn when the cluster cannot host every actor at once (the rest would wait for resources)."""
    import ray

    have = ray.cluster_resources()
    for name, per in (("CPU", num_cpus), ("GPU", num_gpus)):
        if per and have.get(name, 0.0) < workers * per:
            warnings.warn(
                f"`workers` * `ray.num_{name.lower()}s` = {workers * per:g} {name}s, but the Ray cluster has {have.get(name, 0.0):g}: "
                f"only some actors can start (fewer workers, or more nodes)",
                stacklevel=3,
            )


def _device_of(info: dict) -> dict:
    """An actor's device fingerprint from what ``ready()`` said (without its pid)."""
    return {k: v for k, v in info.items() if k != "pid"}


def _wire(payload) -> dict | None:
    """What travels to an actor: the kernel's JSON document (or a planted class name) and plain
    options (a rung's fidelity, the stages to skip), never the object."""
    if payload is None:
        return None
    return {k: v for k, v in payload.items() if k in ("doc", "planted", "options", "skip")}
