"""The results store on SQLite (stdlib ``sqlite3``), safe for several processes at once."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from kasrl.store.base import ResultStore, StoreError, hardware_set
from kasrl.store.records import EvalRecord, Status

__all__ = ["SQLiteStore", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
"""The layout of the ``evaluations`` table; bump it (and add a migration) when it changes."""

_COLUMNS = (
    "task_fingerprint",
    "kernel_hash",
    "kernel_doc",
    "status",
    "reward",
    "metrics",
    "stages",
    "device",
    "run_id",
    "strategy",
    "fidelity",
    "created_at",
)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS evaluations (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        task_fingerprint TEXT    NOT NULL,
        kernel_hash      TEXT    NOT NULL,
        kernel_doc       TEXT    NOT NULL,
        status           INTEGER NOT NULL,
        reward           REAL    NOT NULL,
        metrics          TEXT    NOT NULL,
        stages           TEXT    NOT NULL,
        device           TEXT    NOT NULL,
        run_id           TEXT    NOT NULL,
        strategy         TEXT    NOT NULL,
        fidelity         TEXT    NOT NULL,
        created_at       REAL    NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS evaluations_key ON evaluations (task_fingerprint, kernel_hash)",
    "CREATE INDEX IF NOT EXISTS evaluations_run ON evaluations (run_id)",
    """CREATE TRIGGER IF NOT EXISTS evaluations_no_update BEFORE UPDATE ON evaluations
    BEGIN SELECT RAISE(ABORT, 'evaluations are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS evaluations_no_delete BEFORE DELETE ON evaluations
    BEGIN SELECT RAISE(ABORT, 'evaluations are append-only'); END""",
    f"INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}')",
)
"""The statements that create a version-1 file; each is a no-op on an existing one."""

# Connections inherited through fork() are parked here and never used or closed:
# closing one in the child could checkpoint and delete the WAL under the parent.
_INHERITED: list[sqlite3.Connection] = []


class SQLiteStore(ResultStore):
    """The :class:`ResultStore` contract in one SQLite file, one row per evaluation.

    Several processes may append to and read the same file at once. Each process
    opens its own connection, lazily, on first use (a connection never crosses a
    ``fork``; the store itself pickles as its path, so it can be handed to spawned
    workers). Within a process one connection is shared by all threads under a lock.

    Durability: the file runs in WAL journal mode with ``synchronous=NORMAL`` by
    default. Each ``append`` is its own transaction; once it returns, the row is in
    the WAL file and survives the writer being killed (``kill -9``) at any moment
    afterwards. A power loss or OS crash may lose the last few commits (never
    corrupting the file); pass ``synchronous="FULL"`` to fsync every commit and
    survive that too, at the cost of one fsync per evaluation.

    Concurrency: writers take the database lock in turn; a ``busy_timeout`` of
    ``timeout`` seconds makes a blocked writer wait rather than fail. Readers never
    block writers under WAL.

    The file carries ``meta.schema_version`` (:data:`SCHEMA_VERSION`); a file with
    another version is refused. UPDATE and DELETE on ``evaluations`` are rejected by
    triggers, so the log stays append-only even for other SQLite clients.

    Args:
        path: the database file; created, with its tables, if missing. Its folder
            must exist and be writable.
        timeout: seconds a call waits for another process's lock before failing.
        synchronous: ``"NORMAL"`` (survives a killed process) or ``"FULL"``
            (also survives power loss).

    Raises:
        StoreError: from the first use, when the folder is missing or read-only,
            the file is not a database, or its schema version differs.
    """

    def __init__(self, path: str | Path, timeout: float = 60.0, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        sync = str(synchronous).upper()
        if sync not in ("NORMAL", "FULL"):
            raise ValueError(f"`synchronous` must be 'NORMAL' or 'FULL', got {synchronous!r}")
        if not timeout > 0:
            raise ValueError(f"`timeout` must be > 0 seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self.synchronous = sync
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._closed = False
        self._check_folder()
        with self._lock:
            self._connection()  # fail early on a bad file or version

    # -- connection handling -------------------------------------------------

    def _check_folder(self) -> None:
        folder = self.path.parent
        if not folder.is_dir():
            raise StoreError(f"cannot open results store `{self.path}`: folder `{folder}` does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise StoreError(f"cannot open results store `{self.path}`: folder `{folder}` is not writable")
        if self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK):
            raise StoreError(f"cannot open results store `{self.path}`: the file is not readable and writable")

    def _connection(self) -> sqlite3.Connection:
        """This process's connection, opened (and the schema checked) on first use. Hold the lock."""
        if self._closed:
            raise StoreError(f"results store `{self.path}` is closed; open a new SQLiteStore")
        pid = os.getpid()
        if self._conn is not None and self._pid == pid:
            return self._conn
        if self._conn is not None:
            _INHERITED.append(self._conn)
            self._conn = None
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open results store `{self.path}`: {exc}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            self._set_wal(conn)
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            self._init_schema(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"cannot open results store `{self.path}`: {exc}") from None
        except StoreError:
            conn.close()
            raise
        self._conn, self._pid = conn, pid
        return conn

    def _set_wal(self, conn: sqlite3.Connection) -> None:
        # Switching to WAL needs a moment's exclusive access and may report "locked"
        # without waiting on the busy handler while another process sets it up.
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot open results store `{self.path}`: journal mode stays {mode!r}, WAL is needed")

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version: object = SCHEMA_VERSION
            has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
            if has_meta:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is not None:
                    version = int(row[0]) if str(row[0]).isdigit() else row[0]
            if version == SCHEMA_VERSION:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute("COMMIT")
            else:
                conn.execute("ROLLBACK")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if version != SCHEMA_VERSION:
            raise StoreError(f"results store `{self.path}` has schema version {version}, this kasrl reads version {SCHEMA_VERSION}")

    # -- the contract ----------------------------------------------------------

    def append(self, record: EvalRecord) -> int:
        """See :meth:`ResultStore.append`; one committed transaction per call."""
        if not isinstance(record, EvalRecord):
            raise TypeError(f"`record` must be an EvalRecord, got {type(record).__name__}")
        values = (
            record.task_fingerprint,
            record.kernel_hash,
            record.kernel_doc,
            int(record.status),
            record.reward,
            json.dumps(record.metrics),
            json.dumps(record.stages),
            json.dumps(record.device),
            record.run_id,
            record.strategy,
            record.fidelity,
            record.created_at,
        )
        sql = f"INSERT INTO evaluations ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    new_id = conn.execute(sql, values).lastrowid
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"cannot append to results store `{self.path}`: {exc}") from None
        return int(new_id)

    def lookup(self, task_fingerprint: str, kernel_hash: str, fidelity: str | None = None,
               hardware: str | Iterable[str] | None = None) -> EvalRecord | None:
        """See :meth:`ResultStore.lookup`.

        The hardware key is read from the stored ``device`` JSON (``json_extract``),
        so files written before results carried one need no migration: their rows
        have none and a narrowed lookup passes them by.
        """
        keys = hardware_set(hardware)
        if keys is not None and not keys:
            return None
        where, params = "task_fingerprint = ? AND kernel_hash = ?", [task_fingerprint, kernel_hash]
        if fidelity is not None:
            where += " AND fidelity = ?"
            params.append(fidelity)
        if keys is not None:
            where += f" AND json_extract(device, '$.hardware') IN ({', '.join('?' * len(keys))})"
            params.extend(sorted(keys))
        rows = self._select(f"WHERE {where} ORDER BY id DESC LIMIT 1", params)
        return rows[0] if rows else None

    def records(
        self,
        run_id: str | None = None,
        task_fingerprint: str | None = None,
        strategy: str | None = None,
    ) -> list[EvalRecord]:
        """See :meth:`ResultStore.records`."""
        where, params = self._filters(run_id, task_fingerprint, strategy)
        return self._select(f"{where} ORDER BY id", params)

    def count(
        self,
        run_id: str | None = None,
        task_fingerprint: str | None = None,
        strategy: str | None = None,
    ) -> int:
        """See :meth:`ResultStore.count`."""
        where, params = self._filters(run_id, task_fingerprint, strategy)
        with self._lock:
            conn = self._connection()
            try:
                return int(conn.execute(f"SELECT COUNT(*) FROM evaluations {where}", params).fetchone()[0])
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read results store `{self.path}`: {exc}") from None

    def close(self) -> None:
        """Close this process's connection; later calls raise :class:`StoreError`."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            elif self._conn is not None:
                _INHERITED.append(self._conn)
            self._conn = None
            self._closed = True

    # -- helpers ----------------------------------------------------------------

    @staticmethod
    def _filters(run_id: str | None, task_fingerprint: str | None, strategy: str | None) -> tuple[str, list[str]]:
        clauses, params = [], []
        for name, value in (("run_id", run_id), ("task_fingerprint", task_fingerprint), ("strategy", strategy)):
            if value is not None:
                clauses.append(f"{name} = ?")
                params.append(value)
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), params

    def _select(self, tail: str, params: list[str]) -> list[EvalRecord]:
        sql = f"SELECT id, {', '.join(_COLUMNS)} FROM evaluations {tail}"
        with self._lock:
            conn = self._connection()
            try:
                rows = conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read results store `{self.path}`: {exc}") from None
        return [self._to_record(row) for row in rows]

    def _to_record(self, row: tuple) -> EvalRecord:
        data = dict(zip(("id",) + _COLUMNS, row, strict=True))
        try:
            data["status"] = Status(data["status"])
            for name in ("metrics", "stages", "device"):
                data[name] = json.loads(data[name])
            return EvalRecord(**data)
        except ValueError as exc:
            raise StoreError(f"results store `{self.path}` row {data['id']} is unreadable: {exc}") from None

    def __reduce__(self):
        return (SQLiteStore, (self.path, self.timeout, self.synchronous))

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"
