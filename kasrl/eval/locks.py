"""Locks that keep timed code alone on what it is timed on: the CPU cores, or one GPU.

On a machine with few cores, a neighbour's training inflates a kernel's latency
(and its baseline's, but not by the same factor). So every evaluation process on
the machine shares one lock file: timing holds it exclusively
(:func:`timing_lock`); training and the other compute stages hold it shared, one
short step at a time (:class:`ComputeSlots`), so a timer waits at most one step.
A gate in front of the shared side keeps a stream of steps from starving a timer::

    timer:    gate EX -> lock EX -> time ...                  -> unlock lock, gate
    trainer:  gate EX -> lock SH -> unlock gate -> one step   -> unlock lock

**One lock per device.** CPU timings share the cores, so the CPU has one
machine-wide lock. A GPU is timed with CUDA events on its own stream, and what
disturbs it is other work on that same GPU; so each GPU has its own lock file
and several GPUs of one node time at once. Work that runs on a GPU (training
steps, building a kernel there) holds that GPU's lock shared; work on the CPU
keeps to the machine-wide lock. A GPU is named by its *physical* index (the entry
of ``CUDA_VISIBLE_DEVICES`` that torch's index points at), so two Ray actors
that each see their own GPU as ``cuda:0`` still take different locks, and a
pool worker on ``cuda:3`` meets an actor on the same card.

``KASRL_TIMING_LOCK`` overrides the base file (default ``<tmp>/kasrl-timing.lock``):
the CPU's lock is that file, GPU ``k``'s is ``<file>.cuda<k>``, each with a
``.gate`` beside it. A process that dies holding a lock releases it (``flock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import time
from typing import Any

__all__ = ["timing_lock", "ComputeSlots", "lock_path", "physical_gpu", "cuda_index"]


def physical_gpu(index: int) -> str:
    """The physical name of torch's ``cuda:<index>``: its entry in ``CUDA_VISIBLE_DEVICES`` (an index or a UUID).

    Without ``CUDA_VISIBLE_DEVICES`` (or past its end) the index itself. Only
    characters safe in a file name are kept.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        if 0 <= index < len(entries):
            return re.sub(r"[^A-Za-z0-9_-]", "_", entries[index])
    return str(index)


def cuda_index(device: Any) -> int:
    """Torch's index of a CUDA device (``"cuda"`` alone: the current device)."""
    text = str(device)  # a torch.device prints as "cuda:1" or "cuda"
    if ":" in text:
        return int(text.split(":", 1)[1])
    import torch

    return int(torch.cuda.current_device())


def lock_path(path: str | None = None, device: Any = None) -> str:
    """The lock file of ``device`` (a ``torch.device`` or its name; None or a CPU: the machine-wide one).

    The machine-wide file is ``path``, else ``KASRL_TIMING_LOCK``, else
    ``<tmp>/kasrl-timing.lock``; GPU ``k`` (physical, :func:`physical_gpu`) adds ``.cuda<k>``.
    """
    base = path or os.environ.get("KASRL_TIMING_LOCK") or os.path.join(tempfile.gettempdir(), "kasrl-timing.lock")
    if device is None or not str(device).startswith("cuda"):
        return base
    return f"{base}.cuda{physical_gpu(cuda_index(device))}"


@contextlib.contextmanager
def timing_lock(path: str | None = None, device: Any = None):
    """Hold ``device``'s lock exclusively: no other evaluation computes there meanwhile (see the module docstring)."""
    path = lock_path(path, device)
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
    """Shared holds on ``device``'s timing lock, one per step of a loop (a timer there waits at most one step).

    Args:
        path: the machine-wide lock file (see :func:`lock_path`).
        device: where the steps compute (None or a CPU: the machine-wide lock; a GPU: its own).

    >>> with ComputeSlots() as slots:
    ...     for batch in range(3):
    ...         with slots.step():
    ...             pass  # one training step
    """

    def __init__(self, path: str | None = None, device: Any = None) -> None:
        self.path = lock_path(path, device)
        self._gate = open(self.path + ".gate", "a+")  # held across steps; closed by close()
        self._lock = open(self.path, "a+")
        self.waited = 0.0  # seconds spent waiting for timers (not the loop's own time)

    @contextlib.contextmanager
    def step(self):
        """Compute one step while no evaluation is timing on this device."""
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
