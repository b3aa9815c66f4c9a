"""Machine-wide locks that keep timed code alone on the cores.

On a machine with few cores, a neighbour's training inflates a kernel's latency
(and its baseline's, but not by the same factor). So every evaluation process on
the machine shares one lock file: timing holds it exclusively
(:func:`timing_lock`); training and the other compute stages hold it shared, one
short step at a time (:class:`ComputeSlots`), so a timer waits at most one step.
A gate in front of the shared side keeps a stream of steps from starving a timer::

    timer:    gate EX -> lock EX -> time ...                  -> unlock lock, gate
    trainer:  gate EX -> lock SH -> unlock gate -> one step   -> unlock lock

``KASRL_TIMING_LOCK`` overrides the lock file (the gate is ``<file>.gate``). A
process that dies holding either lock releases it (``flock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time

__all__ = ["timing_lock", "ComputeSlots", "lock_path"]


def lock_path(path: str | None = None) -> str:
    """The machine-wide lock file (``KASRL_TIMING_LOCK`` or ``<tmp>/kasrl-timing.lock``)."""
    return path or os.environ.get("KASRL_TIMING_LOCK") or os.path.join(tempfile.gettempdir(), "kasrl-timing.lock")


@contextlib.contextmanager
def timing_lock(path: str | None = None):
    """Hold the lock exclusively: no other evaluation computes on this machine meanwhile."""
    path = lock_path(path)
    with open(path + ".gate", "a+") as gate, open(path, "a+") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)  # new compute steps wait from now on
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the steps under way finish
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)


class ComputeSlots:
    """Shared holds on the timing lock, one per step of a loop (a timer waits at most one step).

    >>> with ComputeSlots() as slots:
    ...     for batch in range(3):
    ...         with slots.step():
    ...             pass  # one training step
    """

    def __init__(self, path: str | None = None) -> None:
        path = lock_path(path)
        self._gate = open(path + ".gate", "a+")  # held across steps; closed by close()
        self._lock = open(path, "a+")
        self.waited = 0.0  # seconds spent waiting for timers (not the loop's own time)

    @contextlib.contextmanager
    def step(self):
        """Compute one step while no evaluation is timing."""
        start = time.perf_counter()
        fcntl.flock(self._gate, fcntl.LOCK_EX)  # wait behind a timer that is waiting or timing
        try:
            fcntl.flock(self._lock, fcntl.LOCK_SH)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)
        self.waited += time.perf_counter() - start
        try:
            yield
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the lock files."""
        self._gate.close()
        self._lock.close()

    def __enter__(self) -> ComputeSlots:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
