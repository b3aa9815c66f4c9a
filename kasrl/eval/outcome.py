"""What the stages of a measured evaluation produce, before the reward is known.

A :class:`StageOutcome` is made by :func:`kasrl.eval.stages.run_stages` (and
:func:`~kasrl.eval.stages.run_baseline`) wherever the stages run, and by the
parent of an isolated worker when the worker dies or runs past its time. It
crosses a pipe or Ray as :meth:`StageOutcome.to_dict` and is rebuilt, checked,
with :meth:`StageOutcome.from_dict`. The evaluator turns it into the
:class:`~kasrl.eval.base.EvalResult` strategies see, adding the reward.

This module needs neither torch nor Ray: a parent process can read outcomes
without loading either.

>>> out = StageOutcome.failure(Status.TIMEOUT, "build: too slow", stage="build", seconds=5.0)
>>> out.stages
{'build': {'outcome': 'timeout', 'seconds': 5.0}}
>>> StageOutcome.from_dict(out.to_dict()) == out
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kasrl.store.records import Status

__all__ = ["StageOutcome"]

_FIELDS = ("status", "cause", "metrics", "stages", "device")
_SCALARS = (str, int, float, bool, type(None))


def _short(value: Any, n: int = 80) -> str:
    """``repr(value)`` on one line, at most ``n`` characters."""
    text = " ".join(repr(value).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _dict(name: str, value: Any) -> dict:
    """``value`` as a plain dict with string keys; ValueError naming ``name`` otherwise."""
    if not isinstance(value, Mapping):
        raise ValueError(f"`{name}` must be a dict, got {type(value).__name__} {_short(value)}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise ValueError(f"`{name}` keys must be strings, got {_short(bad[0])}")
    return dict(value)


@dataclass(frozen=True)
class StageOutcome:
    """The raw outcome of an evaluation's stages (no reward yet).

    Attributes:
        status: OK, or how the first failing stage ended.
        cause: one line saying what failed, ``"<stage>: ..."`` (empty when OK).
        metrics: what the stages measured (the baseline's run: its ``accuracy``...).
        stages: stage name -> ``{"outcome": label, "seconds": float}``, in the order they ran.
        device: where the stages ran (the worker's device fingerprint; empty when unknown).
    """

    status: Status
    cause: str = ""
    metrics: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)
    device: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.status, Status):
            raise ValueError(f"`status` must be a Status, got {_short(self.status)}")
        if not isinstance(self.cause, str):
            raise ValueError(f"`cause` must be a string, got {type(self.cause).__name__} {_short(self.cause)}")

    @classmethod
    def failure(cls, status: Status, cause: str, *, stage: str | None = None, seconds: float = 0.0, metrics: dict | None = None,
                stages: dict | None = None, device: dict | None = None) -> StageOutcome:
        """A failed outcome.

        Args:
            status: how it failed (not OK).
            cause: one line, ``"<stage>: what happened"``.
            stage: when given, the failing stage is recorded in ``stages`` with
                ``status`` as its outcome and ``seconds`` as its time.
            seconds: how long the failing stage ran.
            metrics: what was measured before the failure.
            stages: the stages run before it.
            device: where it ran, when that is known.
        """
        if status.is_ok():
            raise ValueError("a failure needs a status other than OK")
        stages = dict(stages or {})
        if stage is not None:
            stages[stage] = {"outcome": status.label, "seconds": float(seconds)}
        return cls(status, cause, dict(metrics or {}), stages, dict(device or {}))

    def with_device(self, device: Mapping[str, Any]) -> StageOutcome:
        """This outcome, saying it ran on ``device`` unless it already says where (for outcomes a parent makes)."""
        if self.device or not device:
            return self
        return StageOutcome(self.status, self.cause, self.metrics, self.stages, dict(device))

    def to_dict(self) -> dict:
        """The outcome as plain data (``status`` as its label), to cross a pipe or Ray."""
        return {
            "status": self.status.label,
            "cause": self.cause,
            "metrics": dict(self.metrics),
            "stages": {k: dict(v) for k, v in self.stages.items()},
            "device": dict(self.device),
        }

    @classmethod
    def from_dict(cls, data: Any) -> StageOutcome:
        """The outcome :meth:`to_dict` described, checked.

        ``metrics``, ``stages`` and ``device`` may be left out (empty). Every
        stage must say its ``outcome`` (a string) and ``seconds`` (a number >= 0),
        and ``device`` must hold plain values, as the results store needs them.

        Raises:
            ValueError: in one line, naming the first field that is missing or wrong.
        """
        data = _dict("outcome", data)
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise ValueError(f"unknown outcome field(s) {unknown}; expected {list(_FIELDS)}")
        if "status" not in data:
            raise ValueError("the outcome has no `status`")
        status = Status.from_name(data["status"])
        metrics = _dict("metrics", data.get("metrics", {}))
        stages = {}
        for name, info in _dict("stages", data.get("stages", {})).items():
            info = _dict(f"stages[{name!r}]", info)
            seconds = info.get("seconds")
            if not isinstance(info.get("outcome"), str):
                raise ValueError(f"`stages[{name!r}]['outcome']` must be a string, got {_short(info.get('outcome'))}")
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
                raise ValueError(f"`stages[{name!r}]['seconds']` must be a number >= 0, got {_short(seconds)}")
            stages[name] = info
        device = _dict("device", data.get("device", {}))
        bad = next((k for k, v in device.items() if not isinstance(v, _SCALARS)), None)
        if bad is not None:
            raise ValueError(f"`device[{bad!r}]` must be a plain value, got {type(device[bad]).__name__}")
        return cls(status, data.get("cause", ""), metrics, stages, device)
