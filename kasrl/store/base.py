"""The results-store contract every backend implements."""

from __future__ import annotations

import abc
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from kasrl.errors import KasrlError
from kasrl.store.records import EvalRecord, write_csv, write_jsonl

__all__ = ["ResultStore", "StoreError", "hardware_set"]

SelfStore = TypeVar("SelfStore", bound="ResultStore")


class StoreError(KasrlError):
    """Raised when a results store cannot be opened, read or written."""


def hardware_set(hardware: str | Iterable[str] | None) -> frozenset | None:
    """``lookup``'s ``hardware`` argument as a set of keys (None: any hardware; "" is no key and is dropped)."""
    if hardware is None:
        return None
    if isinstance(hardware, str):
        hardware = (hardware,)
    return frozenset(str(k) for k in hardware if k)


class ResultStore(abc.ABC):
    """An append-only log of evaluation records, which doubles as the evaluation cache.

    ``append(record) -> int``
        Writes a record and returns the id the store gave it.
    ``lookup(task_fingerprint, kernel_hash, fidelity=None, hardware=None) -> EvalRecord | None``
        The most recent record for that key: a repeated kernel costs nothing, and
        a different task fingerprint (or hardware, when one is asked for) misses.
    ``records(run_id=None, task_fingerprint=None, strategy=None) -> list[EvalRecord]``
        The matching records in insertion order; ``count(...)`` counts them.
    ``export_csv(path)`` / ``export_jsonl(path)``
        One row (line) per record; see :mod:`kasrl.store.records` for the formats.
    ``close()``
        Releases the backend; a store is also a context manager.

    The contract:

    * **Append-only.** A record never changes once written and is never deleted.
      Ids are integers from 1 up, unique within a store, and increase in the order
      records were committed, so ``records()`` is in insertion order.
    * **Frozen, unshared results.** Every record returned is a fresh copy with its
      ``id`` set; editing its dicts cannot change what the store holds or what a
      later call returns.
    * **Cache key.** ``(task_fingerprint, kernel_hash)``, narrowed by ``fidelity``
      when one is given, and by ``hardware`` (one key or several) when given: a
      record's hardware key is ``device["hardware"]`` (:attr:`EvalRecord.hardware`;
      "" for records that have none, which a narrowed lookup never returns).
      ``lookup`` returns records of any status; whether a cached failure is worth
      retrying (a timeout, say) is the caller's decision.
    * **Thread safety.** One instance may be used from several threads of one
      process; each call is atomic. Whether several *processes* may share the
      backing data is up to the backend: ``SQLiteStore`` allows it, ``MemoryStore``
      lives in one process.

    Subclasses implement ``append``, ``lookup``, ``records`` and ``close``; ``count``
    and the exports have generic versions built on ``records``.
    """

    @abc.abstractmethod
    def append(self, record: EvalRecord) -> int:
        """Write ``record`` as a new row, in its own transaction where the backend has them.

        Args:
            record: the record; its ``id`` is ignored, the store assigns a new one.

        Returns:
            The new record's id.

        Raises:
            StoreError: when the backend cannot write.
        """

    @abc.abstractmethod
    def lookup(self, task_fingerprint: str, kernel_hash: str, fidelity: str | None = None,
               hardware: str | Iterable[str] | None = None) -> EvalRecord | None:
        """The most recent record for a kernel on a task, or ``None`` when there is none.

        Args:
            task_fingerprint: the task's fingerprint; other tasks never match.
            kernel_hash: the kernel's canonical hash.
            fidelity: only records of this fidelity; ``None`` accepts any.
            hardware: only records measured on this hardware (a key, or several:
                any of them); ``None`` accepts any, an empty collection none.

        Returns:
            The record with the highest id for that key, or ``None``.
        """

    @abc.abstractmethod
    def records(
        self,
        run_id: str | None = None,
        task_fingerprint: str | None = None,
        strategy: str | None = None,
    ) -> list[EvalRecord]:
        """The records that match every filter given (``None`` matches all), in insertion order."""

    def count(
        self,
        run_id: str | None = None,
        task_fingerprint: str | None = None,
        strategy: str | None = None,
    ) -> int:
        """How many records ``records`` would return for the same filters."""
        return len(self.records(run_id=run_id, task_fingerprint=task_fingerprint, strategy=strategy))

    def export_csv(
        self,
        path: str | Path,
        run_id: str | None = None,
        task_fingerprint: str | None = None,
        strategy: str | None = None,
    ) -> Path:
        """Write the matching records to a CSV file (``kasrl.store.read_csv`` reads it back).

        Returns:
            The path written.
        """
        return write_csv(self.records(run_id=run_id, task_fingerprint=task_fingerprint, strategy=strategy), path)

    def export_jsonl(
        self,
        path: str | Path,
        run_id: str | None = None,
        task_fingerprint: str | None = None,
        strategy: str | None = None,
    ) -> Path:
        """Write the matching records to a JSON-lines file (``kasrl.store.read_jsonl`` reads it back).

        Returns:
            The path written.
        """
        return write_jsonl(self.records(run_id=run_id, task_fingerprint=task_fingerprint, strategy=strategy), path)

    @abc.abstractmethod
    def close(self) -> None:
        """Release the backend; safe to call twice."""

    def __enter__(self: SelfStore) -> SelfStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
