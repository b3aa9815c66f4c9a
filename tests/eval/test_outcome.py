"""The typed stage outcome: its round trip across a process boundary, and what a malformed one is."""

from __future__ import annotations

import pytest

from kasrl.eval.outcome import StageOutcome
from kasrl.store.records import Status


def test_an_outcome_survives_its_round_trip():
    ok = StageOutcome(Status.OK, "", {"speedup": 1.5, "placements": ["64x8x8"]}, {"build": {"outcome": "ok", "seconds": 0.25}},
                      {"device": "cpu", "threads": 2, "allocator_pinned": True})
    bad = StageOutcome.failure(Status.TIMEOUT, "build: ran past its limit of 5 s", stage="build", seconds=5,
                               metrics={"placements": []}, stages={})
    for out in (ok, bad):
        wire = out.to_dict()
        assert wire["status"] == out.status.label and isinstance(wire["status"], str)
        assert StageOutcome.from_dict(wire) == out
    assert bad.stages == {"build": {"outcome": "timeout", "seconds": 5.0}}
    assert StageOutcome.failure(Status.CRASH, "send: the worker exited with code 1").stages == {}  # no stage: none recorded


def test_to_dict_hands_out_copies():
    out = StageOutcome(Status.OK, "", {"a": 1.0}, {"build": {"outcome": "ok", "seconds": 1.0}})
    wire = out.to_dict()
    wire["metrics"]["a"] = 2.0
    wire["stages"]["build"]["seconds"] = 9.0
    assert out.metrics == {"a": 1.0} and out.stages["build"]["seconds"] == 1.0


def test_a_failure_keeps_the_stages_before_it():
    before = {"build": {"outcome": "ok", "seconds": 1.0}}
    out = StageOutcome.failure(Status.BUDGET_VIOLATION, "budget: too many FLOPs", stage="budget", seconds=0.5, stages=before)
    assert list(out.stages) == ["build", "budget"] and out.stages["budget"]["outcome"] == "budget_violation"
    assert list(before) == ["build"]  # the caller's dict is not changed


def test_missing_optional_fields_are_empty():
    out = StageOutcome.from_dict({"status": "oom", "cause": "build: out of memory"})
    assert (out.status, out.metrics, out.stages, out.device) == (Status.OOM, {}, {}, {})


@pytest.mark.parametrize(
    "data,words",
    [
        (None, "`outcome` must be a dict, got NoneType"),
        ([("status", "ok")], "`outcome` must be a dict, got list"),
        ({"cause": "x"}, "no `status`"),
        ({"status": "fine"}, "`status` 'fine' is not a status name"),
        ({"status": 0}, "`status` must be a status name"),
        ({"status": "ok", "extra": 1}, "unknown outcome field(s) ['extra']"),
        ({"status": "crash", "cause": 3}, "`cause` must be a string"),
        ({"status": "ok", "metrics": [1, 2]}, "`metrics` must be a dict"),
        ({"status": "ok", "metrics": {1: 2.0}}, "`metrics` keys must be strings"),
        ({"status": "ok", "stages": {"build": "ok"}}, "`stages['build']` must be a dict"),
        ({"status": "ok", "stages": {"build": {"seconds": 1.0}}}, "`stages['build']['outcome']` must be a string"),
        ({"status": "ok", "stages": {"build": {"outcome": "ok", "seconds": -1}}}, "`stages['build']['seconds']` must be a number >= 0"),
        ({"status": "ok", "stages": {"build": {"outcome": "ok", "seconds": float("nan")}}}, "must be a number >= 0"),
        ({"status": "ok", "device": {"gpu": object()}}, "`device['gpu']` must be a plain value"),
    ],
)
def test_a_malformed_outcome_is_refused_in_one_line(data, words):
    with pytest.raises(ValueError) as info:
        StageOutcome.from_dict(data)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_an_outcome_is_typed_when_made():
    with pytest.raises(ValueError, match="`status` must be a Status"):
        StageOutcome("ok")
    with pytest.raises(ValueError, match="other than OK"):
        StageOutcome.failure(Status.OK, "")
