"""The one run name: {task}__{strategy}__{seed}__{unix_time}."""

from __future__ import annotations

import re
import time

import pytest

from kasrl.tracking import parse_run_name, run_name


def test_run_name_format_and_round_trip():
    name = run_name("cifar_resnet18", "ppo", 7, when=1700000123.99)
    assert name == "cifar_resnet18__ppo__7__1700000123"
    assert parse_run_name(name) == ("cifar_resnet18", "ppo", 7, 1700000123)


def test_run_name_defaults_to_now():
    before = int(time.time())
    stamp = parse_run_name(run_name("digits", "random", 0))[3]
    assert before <= stamp <= int(time.time())


@pytest.mark.parametrize("task", ["a__b", "a/b", "", "with space", "../up"])
def test_unsafe_parts_are_refused(task):
    with pytest.raises(ValueError, match=re.escape(f"`task` {task!r} cannot go into a run name")):
        run_name(task, "random", 0, when=0)


def test_seed_must_be_an_integer():
    with pytest.raises(ValueError, match="`seed` must be an integer"):
        run_name("digits", "random", 1.5, when=0)


def test_parse_rejects_other_strings():
    with pytest.raises(ValueError, match=re.escape("`digits__random` is not a run name")):
        parse_run_name("digits__random")
