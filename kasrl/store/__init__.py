"""The results store: one frozen record per evaluated kernel, append-only, also the evaluation cache.

``SQLiteStore`` keeps records in one SQLite file that several processes may share;
``MemoryStore`` keeps them in memory for tests and the analytic fidelity. Both
follow the contract in :class:`ResultStore`.
"""

from kasrl.store.base import ResultStore, StoreError
from kasrl.store.memory import MemoryStore
from kasrl.store.records import CSV_COLUMNS, EvalRecord, Status, read_csv, read_jsonl, write_csv, write_jsonl
from kasrl.store.sqlite import SCHEMA_VERSION, SQLiteStore

__all__ = [
    "ResultStore",
    "StoreError",
    "MemoryStore",
    "SQLiteStore",
    "SCHEMA_VERSION",
    "EvalRecord",
    "Status",
    "CSV_COLUMNS",
    "read_csv",
    "read_jsonl",
    "write_csv",
    "write_jsonl",
]
