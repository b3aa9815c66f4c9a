"""The one run name shared by wandb, the results store's ``run_id`` and the output folder."""

from __future__ import annotations

import re
import time

__all__ = ["run_name", "parse_run_name"]

_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _check_part(name: str, value: object) -> str:
    if not isinstance(value, str) or not _PART.match(value) or "__" in value:
        raise ValueError(f"`{name}` {value!r} cannot go into a run name: use letters, digits, '.', '-' and single '_' only")
    return value


def run_name(task: str, strategy: str, seed: int, when: float | None = None) -> str:
    """The run name ``{task}__{strategy}__{seed}__{unix_time}`` (cleanrl's convention).

    Args:
        task: the task's name, e.g. ``"cifar_resnet18"``.
        strategy: the strategy's name, e.g. ``"ppo"``.
        seed: the run's seed.
        when: unix time in seconds; now when ``None``. Truncated to whole seconds.

    Returns:
        The name, safe as a folder name and a wandb run name.

    Raises:
        ValueError: when a part holds ``"__"``, a path separator, spaces or other
            characters that would make the name ambiguous or unsafe.

    >>> run_name("digits", "random", 3, when=1700000000.9)
    'digits__random__3__1700000000'
    """
    _check_part("task", task)
    _check_part("strategy", strategy)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an integer, got {type(seed).__name__} {seed!r}")
    stamp = int(time.time() if when is None else when)
    return f"{task}__{strategy}__{seed}__{stamp}"


def parse_run_name(name: str) -> tuple[str, str, int, int]:
    """Split a :func:`run_name` back into ``(task, strategy, seed, unix_time)``.

    Raises:
        ValueError: when ``name`` is not of that form.

    >>> parse_run_name("digits__random__3__1700000000")
    ('digits', 'random', 3, 1700000000)
    """
    parts = name.split("__") if isinstance(name, str) else []
    try:
        task, strategy, seed, stamp = parts
        return _check_part("task", task), _check_part("strategy", strategy), int(seed), int(stamp)
    except ValueError:
        raise ValueError(f"`{name}` is not a run name of the form task__strategy__seed__unixtime") from None
