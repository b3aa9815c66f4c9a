"""A results store held in memory, for tests and the analytic fidelity."""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Iterable

from kasrl.store.base import ResultStore, StoreError, hardware_set
from kasrl.store.records import EvalRecord

__all__ = ["MemoryStore"]


class MemoryStore(ResultStore):
    """The :class:`ResultStore` contract in one process's memory; gone when it closes.

    Thread-safe through one lock. It is not shared across processes: a forked child
    gets its own copy, and pickling is refused (it would silently fork the log).

    >>> from kasrl.store.records import EvalRecord, Status
    >>> store = MemoryStore()
    >>> store.append(EvalRecord("t", "k", "{}", Status.OK, 1.0, {}, {}, {}, "run", "random", "analytic", 0.0))
    1
    >>> store.lookup("t", "k").id, store.lookup("other-task", "k")
    (1, None)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: list[EvalRecord] = []
        self._by_key: dict[tuple[str, str], list[int]] = {}
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the MemoryStore is closed; make a new one")

    def append(self, record: EvalRecord) -> int:
        """See :meth:`ResultStore.append`."""
        if not isinstance(record, EvalRecord):
            raise TypeError(f"`record` must be an EvalRecord, got {type(record).__name__}")
        with self._lock:
            self._check_open()
            new_id = len(self._rows) + 1
            # replace() re-runs the checks and copies the dicts: the caller keeps no alias.
            self._rows.append(dataclasses.replace(record, id=new_id))
            self._by_key.setdefault((record.task_fingerprint, record.kernel_hash), []).append(new_id - 1)
            return new_id

    def lookup(self, task_fingerprint: str, kernel_hash: str, fidelity: str | None = None,
               hardware: str | Iterable[str] | None = None) -> EvalRecord | None:
        """See :meth:`ResultStore.lookup`."""
        keys = hardware_set(hardware)
        if keys is not None and not keys:
            return None
        with self._lock:
            self._check_open()
            for index in reversed(self._by_key.get((task_fingerprint, kernel_hash), ())):
                row = self._rows[index]
                if (fidelity is None or row.fidelity == fidelity) and (keys is None or row.hardware in keys):
                    return copy.deepcopy(row)
            return None

    def records(
        self,
        run_id: str | None = None,
        task_fingerprint: str | None = None,
        strategy: str | None = None,
    ) -> list[EvalRecord]:
        """See :meth:`ResultStore.records`."""
        with self._lock:
            self._check_open()
            rows = [
                r
                for r in self._rows
                if (run_id is None or r.run_id == run_id)
                and (task_fingerprint is None or r.task_fingerprint == task_fingerprint)
                and (strategy is None or r.strategy == strategy)
            ]
            return copy.deepcopy(rows)

    def count(
        self,
        run_id: str | None = None,
        task_fingerprint: str | None = None,
        strategy: str | None = None,
    ) -> int:
        """See :meth:`ResultStore.count`."""
        with self._lock:
            self._check_open()
            return sum(
                1
                for r in self._rows
                if (run_id is None or r.run_id == run_id)
                and (task_fingerprint is None or r.task_fingerprint == task_fingerprint)
                and (strategy is None or r.strategy == strategy)
            )

    def close(self) -> None:
        """Drop the records; later calls raise :class:`StoreError`."""
        with self._lock:
            self._closed = True
            self._rows = []
            self._by_key = {}

    def __reduce__(self):
        raise TypeError("a MemoryStore cannot be pickled: it lives in one process; use SQLiteStore to share results")

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._rows)} records)"
