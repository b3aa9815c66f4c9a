"""SQLiteStore beyond the shared contract: processes, kill -9, schema versions, bad paths."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kasrl.store import SCHEMA_VERSION, SQLiteStore, StoreError
from tests.store.test_contract import make_record

REPO = Path(__file__).resolve().parents[2]


def _append_rows(path: str, worker: int, rows: int) -> None:
    """Spawned worker: append ``rows`` records tagged with ``worker``."""
    store = SQLiteStore(path)
    for n in range(rows):
        store.append(make_record(n, run_id=f"worker{worker}"))
    store.close()


def test_file_settings_and_schema(tmp_path):
    path = tmp_path / "r.db"
    SQLiteStore(path).append(make_record(0))
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    indexes = {row[1]: row for row in conn.execute("PRAGMA index_list(evaluations)")}
    assert [r[2] for r in conn.execute("PRAGMA index_info(evaluations_key)")] == ["task_fingerprint", "kernel_hash"]
    assert "evaluations_key" in indexes
    conn.close()


def test_rows_persist_across_reopening(tmp_path):
    path = tmp_path / "r.db"
    with SQLiteStore(path) as store:
        for n in range(3):
            store.append(make_record(n))
    with SQLiteStore(path) as store:
        assert store.count() == 3
        assert store.append(make_record(9)) == 4
        assert store.lookup("task-a", "k1").id == 2


def test_the_file_refuses_update_and_delete_from_any_client(tmp_path):
    path = tmp_path / "r.db"
    SQLiteStore(path).append(make_record(0))
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE evaluations SET reward = 0")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM evaluations")
    conn.close()


def test_store_pickles_as_its_path(tmp_path):
    store = SQLiteStore(tmp_path / "r.db", synchronous="full")
    store.append(make_record(0))
    clone = pickle.loads(pickle.dumps(store))
    assert clone.path == store.path and clone.synchronous == "FULL"
    assert clone.count() == 1


def test_several_processes_append_at_once(tmp_path):
    path = str(tmp_path / "r.db")
    SQLiteStore(path).close()  # created up front; the workers also race on opening it
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_rows, args=(path, w, 50)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    store = SQLiteStore(path)
    assert store.count() == 150
    assert [r.id for r in store.records()] == list(range(1, 151))
    for w in range(3):
        assert [r.kernel_hash for r in store.records(run_id=f"worker{w}")] == [f"k{n}" for n in range(50)]


def test_a_forked_child_opens_its_own_connection(tmp_path):
    if not hasattr(os, "fork"):
        pytest.skip("needs fork")
    store = SQLiteStore(tmp_path / "r.db")
    store.append(make_record(0))
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=store.append, args=(make_record(1),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert store.append(make_record(2)) == 3  # the parent's connection still works
    assert [r.kernel_hash for r in store.records()] == ["k0", "k1", "k2"]


CHILD = textwrap.dedent(
    """
    import sys
    from kasrl.store import SQLiteStore
    from tests.store.test_contract import make_record
    store = SQLiteStore(sys.argv[1])
    n = 0
    while True:
        new_id = store.append(make_record(n, kernel_doc="x" * 2000))
        print(new_id, flush=True)
        n += 1
    """
)


def test_kill_9_in_the_middle_loses_no_committed_row(tmp_path):
    path = tmp_path / "r.db"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
    reported = []
    deadline = time.monotonic() + 60
    try:
        while len(reported) < 200 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            reported.append(int(line))
    finally:
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate(timeout=30)
    reported += [int(x) for x in rest.split()]
    assert child.returncode == -signal.SIGKILL
    assert len(reported) >= 200, "the child stopped before it was killed"

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    store = SQLiteStore(path)
    stored = {r.id for r in store.records()}
    assert set(reported) <= stored
    assert store.append(make_record(0)) == max(stored) + 1


def test_another_schema_version_is_refused_in_one_line(tmp_path):
    path = tmp_path / "r.db"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.close()
    message = f"results store `{path}` has schema version 2, this kasrl reads version {SCHEMA_VERSION}"
    with pytest.raises(StoreError, match=re.escape(message)) as info:
        SQLiteStore(path)
    assert "\n" not in str(info.value)


def test_a_missing_folder_is_one_line(tmp_path):
    path = tmp_path / "missing" / "r.db"
    message = f"cannot open results store `{path}`: folder `{path.parent}` does not exist"
    with pytest.raises(StoreError, match=re.escape(message)) as info:
        SQLiteStore(path)
    assert "\n" not in str(info.value)


def test_an_unwritable_folder_is_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):  # root writes anywhere: pretend it may not
            real_access = os.access
            monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == folder else real_access(p, mode))
        path = folder / "r.db"
        message = f"cannot open results store `{path}`: folder `{folder}` is not writable"
        with pytest.raises(StoreError, match=re.escape(message)):
            SQLiteStore(path)
    finally:
        folder.chmod(0o700)


def test_a_file_that_is_not_a_database_is_one_line(tmp_path):
    path = tmp_path / "r.db"
    path.write_text("not a database " * 100)
    with pytest.raises(StoreError, match=re.escape(f"cannot open results store `{path}`: file is not a database")) as info:
        SQLiteStore(path)
    assert "\n" not in str(info.value)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="`synchronous`"):
        SQLiteStore(tmp_path / "r.db", synchronous="OFF")
    with pytest.raises(ValueError, match="`timeout`"):
        SQLiteStore(tmp_path / "r.db", timeout=0)
