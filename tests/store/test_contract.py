"""The results-store contract, run against every backend (Optuna's StorageTestCase style)."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from kasrl.store import EvalRecord, MemoryStore, ResultStore, SQLiteStore, Status, StoreError, read_csv, read_jsonl

STORE_MODES = ["memory", "sqlite"]


def make_record(n: int = 0, **changes) -> EvalRecord:
    """A valid record; ``n`` varies the kernel hash and the numbers."""
    fields = dict(
        task_fingerprint="task-a",
        kernel_hash=f"k{n}",
        kernel_doc='{"version": 1, "nodes": []}',
        status=Status.OK,
        reward=0.5 + n,
        metrics={"speedup": 1.25 + n, "accuracy": 0.91, "flops": 1200 * (n + 1), "latency_ms": [1.5, 1.6]},
        stages={"build": {"outcome": "ok", "seconds": 0.01}, "latency": {"outcome": "ok", "seconds": 1.5, "repeats": 9}},
        device={"cpu": "Test CPU", "torch": "2.13.0", "threads": 1},
        run_id="digits__random__0__1700000000",
        strategy="random",
        fidelity="measured",
        created_at=1700000000.123456 + n,
    )
    fields.update(changes)
    return EvalRecord(**fields)


@pytest.fixture(params=STORE_MODES)
def store(request, tmp_path) -> ResultStore:
    """Each backend in turn, empty; SQLite on a fresh file."""
    s = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "results.db")
    yield s
    s.close()


def without_id(record: EvalRecord) -> EvalRecord:
    """The record as it was before the store gave it an id."""
    return dataclasses.replace(record, id=None)


def test_append_returns_ids_from_one_in_order(store):
    ids = [store.append(make_record(n)) for n in range(5)]
    assert ids == [1, 2, 3, 4, 5]
    assert [r.id for r in store.records()] == ids


def test_append_then_lookup_returns_the_same_record(store):
    record = make_record(3)
    new_id = store.append(record)
    found = store.lookup("task-a", "k3")
    assert found is not None and found.id == new_id
    assert without_id(found) == record


def test_append_ignores_the_incoming_id(store):
    store.append(make_record(0))
    assert store.append(make_record(1, id=99)) == 2


def test_lookup_returns_the_most_recent_record_for_the_key(store):
    store.append(make_record(0, reward=1.0))
    store.append(make_record(1))
    last = store.append(make_record(0, reward=2.0, status=Status.TIMEOUT))
    found = store.lookup("task-a", "k0")
    assert found.id == last and found.reward == 2.0 and found.status is Status.TIMEOUT


def test_lookup_of_another_task_fingerprint_misses(store):
    store.append(make_record(0))
    assert store.lookup("task-b", "k0") is None
    assert store.lookup("task-a", "k-unknown") is None


def test_lookup_narrows_by_fidelity(store):
    analytic = store.append(make_record(0, fidelity="analytic"))
    measured = store.append(make_record(0, fidelity="measured"))
    assert store.lookup("task-a", "k0", fidelity="analytic").id == analytic
    assert store.lookup("task-a", "k0", fidelity="measured").id == measured
    assert store.lookup("task-a", "k0").id == measured
    assert store.lookup("task-a", "k0", fidelity="other") is None


def test_lookup_narrows_by_hardware_and_rows_without_a_key_never_match(store):
    """lookup(hardware=...) returns only records measured on that hardware."""
    old = store.append(make_record(0))  # written before results carried a hardware key
    on_a = store.append(make_record(0, device={"gpu": "GPU A", "hardware": "hw-a"}))
    on_b = store.append(make_record(0, device={"gpu": "GPU B", "hardware": "hw-b"}))
    assert store.lookup("task-a", "k0", hardware="hw-a").id == on_a
    assert store.lookup("task-a", "k0", hardware=["hw-b", "hw-c"]).id == on_b
    assert store.lookup("task-a", "k0", hardware=("hw-a", "hw-b")).id == on_b  # the most recent of them
    assert store.lookup("task-a", "k0", hardware="hw-c") is None
    assert store.lookup("task-a", "k0", hardware=()) is None  # no hardware accepted: nothing
    assert store.lookup("task-a", "k0", fidelity="analytic", hardware="hw-a") is None
    assert store.lookup("task-a", "k0").id == on_b  # not narrowed: any
    assert store.lookup("task-a", "k0", hardware="") is None  # "" is no key: the old row is not found through it
    assert [r.hardware for r in store.records()] == ["", "hw-a", "hw-b"] and old == 1


def test_records_are_in_insertion_order_and_filter(store):
    plan = [("run1", "random", "task-a"), ("run2", "ppo", "task-a"), ("run1", "random", "task-b"), ("run2", "ppo", "task-b")]
    for n, (run, strategy, task) in enumerate(plan * 2):
        store.append(make_record(n, run_id=run, strategy=strategy, task_fingerprint=task))
    everything = store.records()
    assert [r.kernel_hash for r in everything] == [f"k{n}" for n in range(8)]
    assert [r.id for r in store.records(run_id="run1")] == [1, 3, 5, 7]
    assert [r.id for r in store.records(strategy="ppo", task_fingerprint="task-b")] == [4, 8]
    assert store.records(run_id="run1", strategy="ppo") == []
    assert store.count() == 8
    assert store.count(run_id="run2") == 4
    assert store.count(run_id="run1", task_fingerprint="task-a") == 2
    assert store.count(run_id="nope") == 0


def test_empty_store(store):
    assert store.records() == [] and store.count() == 0 and store.lookup("task-a", "k0") is None


def test_export_csv_round_trip(store, tmp_path):
    for n in range(4):
        store.append(make_record(n, status=Status(n % len(Status)), kernel_doc='{"code": "a, b\\n\\"c\\""}'))
    path = store.export_csv(tmp_path / "out.csv")
    assert read_csv(path) == store.records()
    lines = path.read_text().splitlines()
    assert lines[0].startswith("id,task_fingerprint,kernel_hash,status,reward")
    only = store.export_csv(tmp_path / "run.csv", run_id="nobody")
    assert read_csv(only) == []


def test_export_jsonl_round_trip(store, tmp_path):
    for n in range(4):
        store.append(make_record(n, metrics={"nested": {"a": [1, 2.5, None]}, "inf": float("inf")}))
    path = store.export_jsonl(tmp_path / "out.jsonl")
    assert len(path.read_text().splitlines()) == 4
    assert read_jsonl(path) == store.records()


def test_a_record_is_frozen(store):
    store.append(make_record(0))
    found = store.lookup("task-a", "k0")
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.reward = 10.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.id = 7


def test_records_are_never_modified_through_returned_or_appended_objects(store):
    record = make_record(0)
    store.append(record)
    record.metrics["speedup"] = -1.0  # the caller's copy; the store kept its own
    record.stages["build"]["outcome"] = "edited"
    found = store.lookup("task-a", "k0")
    found.metrics["speedup"] = -2.0
    store.records()[0].device["cpu"] = "edited"
    again = store.lookup("task-a", "k0")
    assert again == dataclasses.replace(make_record(0), id=1)
    assert again is not found


def test_append_rejects_what_is_not_a_record(store):
    with pytest.raises(TypeError, match="EvalRecord"):
        store.append({"kernel_hash": "k0"})


def test_several_threads_append_at_once(store):
    def work(t):
        for n in range(20):
            store.append(make_record(n, run_id=f"thread{t}"))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert store.count() == 80
    assert [r.id for r in store.records()] == list(range(1, 81))
    assert all(store.count(run_id=f"thread{t}") == 20 for t in range(4))


def test_a_closed_store_refuses_calls(store):
    store.close()
    store.close()  # twice is fine
    with pytest.raises(StoreError, match="closed"):
        store.append(make_record(0))
    with pytest.raises(StoreError, match="closed"):
        store.records()


def test_context_manager_closes(tmp_path):
    for s in (MemoryStore(), SQLiteStore(tmp_path / "cm.db")):
        with s as opened:
            opened.append(make_record(0))
        with pytest.raises(StoreError):
            s.count()
