"""EvalRecord and Status: checked on creation, one clear line per bad field."""

from __future__ import annotations

import re

import numpy as np
import pytest

from kasrl.store import EvalRecord, Status
from tests.store.test_contract import make_record


def test_status_names_round_trip():
    assert [s.label for s in Status] == ["ok", "build_error", "numerics_error", "budget_violation", "timeout", "oom", "crash",
                                         "screened_slow", "screened_accuracy"]
    assert [int(s) for s in Status] == list(range(9))
    for s in Status:
        assert Status.from_name(s.label) is s
        assert Status.from_name(s.name) is s
    assert Status.OK.is_ok() and not any(s.is_ok() for s in Status if s is not Status.OK)


def test_status_from_an_unknown_name_suggests_the_closest():
    with pytest.raises(ValueError, match=re.escape("`status` 'timout' is not a status name; did you mean 'timeout'?")):
        Status.from_name("timout")


def test_status_is_coerced_from_label_and_int():
    assert make_record(status="oom").status is Status.OOM
    assert make_record(status=6).status is Status.CRASH


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("task_fingerprint", "", "`task_fingerprint` must be a non-empty string"),
        ("kernel_hash", None, "`kernel_hash` must be a non-empty string"),
        ("kernel_doc", {"nodes": []}, "`kernel_doc` must be a non-empty string"),
        ("status", 9, "`status` 9 is not a status value"),
        ("status", True, "`status` must be a Status"),
        ("reward", float("nan"), "`reward` must not be NaN"),
        ("reward", "1.0", "`reward` must be a number"),
        ("metrics", [1, 2], "`metrics` must be a dict"),
        ("metrics", {1: 2.0}, "`metrics` keys must be strings"),
        ("metrics", {"x": object()}, "`metrics` must be JSON-serialisable"),
        ("stages", {"build": "ok"}, "`stages['build']` must be a dict"),
        ("stages", {"build": {"seconds": 1.0}}, "`stages['build']['outcome']` must be a string"),
        ("stages", {"build": {"outcome": "ok", "seconds": -1}}, "`stages['build']['seconds']` must be a number >= 0"),
        ("device", None, "`device` must be a dict"),
        ("run_id", "", "`run_id` must be a non-empty string"),
        ("strategy", 3, "`strategy` must be a non-empty string"),
        ("fidelity", "", "`fidelity` must be a non-empty string"),
        ("created_at", float("inf"), "`created_at` must be a unix time >= 0"),
        ("id", 0, "`id` must be None or an integer >= 1"),
    ],
)
def test_a_bad_field_raises_a_value_error_naming_it(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        make_record(**{field: value})
    assert "\n" not in str(info.value)


def test_dicts_are_deep_copied_and_numpy_values_normalised():
    metrics = {"speedup": np.float32(1.5), "params": np.int64(12), "shape": np.array([1, 2]), "pair": (1, 2)}
    record = make_record(metrics=metrics)
    metrics["speedup"] = 0.0
    assert record.metrics == {"speedup": 1.5, "params": 12, "shape": [1, 2], "pair": [1, 2]}
    assert type(record.metrics["params"]) is int


def test_infinite_reward_is_allowed():
    assert make_record(reward=float("-inf")).reward == float("-inf")


def test_to_dict_from_dict_round_trip():
    record = make_record(2, id=5)
    data = record.to_dict()
    assert data["status"] == "ok" and data["id"] == 5
    data["metrics"]["speedup"] = 0.0  # a copy
    assert record.metrics["speedup"] == 3.25
    assert EvalRecord.from_dict(record.to_dict()) == record


def test_from_dict_names_unknown_and_missing_fields():
    data = make_record().to_dict()
    with pytest.raises(ValueError, match=re.escape("unknown record field(s) ['speed']")):
        EvalRecord.from_dict({**data, "speed": 1})
    del data["fidelity"]
    with pytest.raises(ValueError, match=re.escape("record is missing field(s) ['fidelity']")):
        EvalRecord.from_dict(data)


def test_created_at_and_id_have_defaults():
    data = make_record().to_dict()
    del data["created_at"], data["id"]
    record = EvalRecord.from_dict(data)
    assert record.id is None and record.created_at > 1.7e9
