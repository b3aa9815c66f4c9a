"""Evaluation records: the frozen row the results store keeps per evaluated kernel.

An :class:`EvalRecord` is what one evaluation of one kernel produced: the kernel's
JSON text, a :class:`Status`, the reward, the measured metrics, what each stage of
the evaluation pipeline did, the device it ran on, and the run that asked for it.
Records are checked when they are made and never change afterwards; stores hand
out copies, so editing a returned record's dicts cannot alter what was written.

The CSV and JSONL helpers here define the export formats of every store: one row
(or line) per record, the dict fields as JSON text in CSV.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

__all__ = [
    "Status",
    "EvalRecord",
    "CSV_COLUMNS",
    "write_csv",
    "read_csv",
    "write_jsonl",
    "read_jsonl",
]


class Status(IntEnum):
    """How an evaluation ended; the integer value is what the SQLite store keeps.

    ``OK`` means every stage passed and the reward is meaningful; every other
    status names the first stage that stopped the evaluation. ``label`` gives the
    lowercase name used in exports and configs, ``from_name`` reads it back.

    >>> Status.from_name("numerics_error")
    <Status.NUMERICS_ERROR: 2>
    >>> Status.TIMEOUT.label, Status.OK.is_ok()
    ('timeout', True)
    """

    OK = 0
    BUILD_ERROR = 1
    NUMERICS_ERROR = 2
    BUDGET_VIOLATION = 3
    TIMEOUT = 4
    OOM = 5
    CRASH = 6
    SCREENED_SLOW = 7
    SCREENED_ACCURACY = 8

    def is_ok(self) -> bool:
        """Whether the evaluation passed every stage."""
        return self is Status.OK

    def is_screened(self) -> bool:
        """Whether a multi-fidelity ladder stopped the kernel early: it ran, but could
        no longer beat the run's threshold (on speed, or on accuracy)."""
        return self in (Status.SCREENED_SLOW, Status.SCREENED_ACCURACY)

    def is_failure(self) -> bool:
        """Whether the kernel failed a stage (neither ok nor screened)."""
        return not (self.is_ok() or self.is_screened())

    @property
    def label(self) -> str:
        """The lowercase name, e.g. ``"build_error"``."""
        return self.name.lower()

    @classmethod
    def from_name(cls, name: str) -> Status:
        """The status called ``name`` (case-insensitive, e.g. ``"oom"``).

        Raises:
            ValueError: when no status has that name; the message suggests the closest.
        """
        if not isinstance(name, str):
            raise ValueError(f"`status` must be a status name, got {type(name).__name__} {name!r}")
        try:
            return cls[name.strip().upper()]
        except KeyError:
            labels = [s.label for s in cls]
            close = difflib.get_close_matches(name.strip().lower(), labels, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {labels}"
            raise ValueError(f"`status` {name!r} is not a status name{hint}") from None


def _jsonable(obj: Any) -> Any:
    """``json.dumps`` fallback: NumPy/torch scalars and arrays become Python values."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _json_dict(name: str, value: Any) -> dict:
    """A deep, JSON-normalised copy of ``value``; ValueError naming ``name`` if impossible."""
    if not isinstance(value, Mapping):
        raise ValueError(f"`{name}` must be a dict, got {type(value).__name__}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise ValueError(f"`{name}` keys must be strings, got {bad[0]!r}")
    try:
        return json.loads(json.dumps(dict(value), default=_jsonable))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`{name}` must be JSON-serialisable: {exc}") from None


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise ValueError(f"`{name}` must be a number, got {type(value).__name__} {value!r}")
    return float(value)


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation of one kernel on one task; frozen and checked on creation.

    Attributes:
        task_fingerprint: identifies the task (network, data, placements, budget);
            a cached result is only reused for the same fingerprint.
        kernel_hash: the kernel's canonical hash (``kasrl.ir.canonical.kernel_hash``).
        kernel_doc: the kernel's JSON document as text.
        status: how the evaluation ended.
        reward: the scalar reward the strategy saw (finite or infinite, never NaN).
        metrics: JSON-able measurements, e.g. ``speedup``, ``accuracy``, ``flops``,
            ``params``, ``latency_ms``.
        stages: stage name -> ``{"outcome": str, "seconds": float, ...}``, in the
            order the stages ran.
        device: where it ran: CPU model or GPU name, torch version, threads, and
            its ``hardware`` key (see :attr:`hardware`).
        run_id: the run that asked for it (``kasrl.tracking.run_name``).
        strategy: the search strategy's name, e.g. ``"random"``, ``"ppo"``.
        fidelity: how it was evaluated, e.g. ``"analytic"`` or ``"measured"``.
        created_at: unix time in seconds when the evaluation finished.
        id: assigned by the store on ``append`` (from 1 up, in insertion order);
            ``None`` for a record not yet stored.

    Raises:
        ValueError: from the constructor, naming the first field with a bad value.

    >>> r = EvalRecord("task", "k1", "{}", Status.OK, 1.5, {"speedup": 1.5}, {}, {}, "run", "random", "analytic", 0.0)
    >>> EvalRecord.from_dict(r.to_dict()) == r
    True
    """

    task_fingerprint: str
    kernel_hash: str
    kernel_doc: str
    status: Status
    reward: float
    metrics: dict
    stages: dict
    device: dict
    run_id: str
    strategy: str
    fidelity: str
    created_at: float = field(default_factory=time.time)
    id: int | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        for name in ("task_fingerprint", "kernel_hash", "kernel_doc", "run_id", "strategy", "fidelity"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"`{name}` must be a non-empty string, got {value!r}")
        status = self.status
        if isinstance(status, str):
            status = Status.from_name(status)
        elif isinstance(status, int) and not isinstance(status, bool):
            if status not in Status._value2member_map_:
                raise ValueError(f"`status` {status!r} is not a status value; expected 0..{max(Status)}")
            status = Status(status)
        else:
            raise ValueError(f"`status` must be a Status, got {type(status).__name__} {status!r}")
        put("status", status)
        reward = _real("reward", self.reward)
        if math.isnan(reward):
            raise ValueError("`reward` must not be NaN")
        put("reward", reward)
        for name in ("metrics", "stages", "device"):
            put(name, _json_dict(name, getattr(self, name)))
        for stage, info in self.stages.items():
            if not isinstance(info, dict):
                raise ValueError(f"`stages[{stage!r}]` must be a dict with 'outcome' and 'seconds', got {info!r}")
            if not isinstance(info.get("outcome"), str):
                raise ValueError(f"`stages[{stage!r}]['outcome']` must be a string, got {info.get('outcome')!r}")
            seconds = info.get("seconds")
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
                raise ValueError(f"`stages[{stage!r}]['seconds']` must be a number >= 0, got {seconds!r}")
        created_at = _real("created_at", self.created_at)
        if not math.isfinite(created_at) or created_at < 0:
            raise ValueError(f"`created_at` must be a unix time >= 0, got {created_at!r}")
        put("created_at", created_at)
        if self.id is not None and (isinstance(self.id, bool) or not isinstance(self.id, int) or self.id < 1):
            raise ValueError(f"`id` must be None or an integer >= 1, got {self.id!r}")

    @property
    def hardware(self) -> str:
        """The hardware key the result was measured on (``device["hardware"]``; "" when it has none).

        Stores narrow lookups by it, so a result timed on one machine is not
        reused on another (see :mod:`kasrl.eval.cache`).
        """
        key = self.device.get("hardware")
        return key if isinstance(key, str) else ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (``status`` as its label), deep-copied."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["status"] = self.status.label
        for name in ("metrics", "stages", "device"):
            out[name] = json.loads(json.dumps(out[name]))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalRecord:
        """The record ``to_dict`` described; ``status`` may be a label or an integer.

        Raises:
            ValueError: on a missing or unknown key, or a bad value.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown record field(s) {unknown}; expected {names}")
        missing = [n for n in names[:11] if n not in data]
        if missing:
            raise ValueError(f"record is missing field(s) {missing}")
        return cls(**data)


CSV_COLUMNS: tuple[str, ...] = (
    "id",
    "task_fingerprint",
    "kernel_hash",
    "status",
    "reward",
    "fidelity",
    "run_id",
    "strategy",
    "created_at",
    "metrics",
    "stages",
    "device",
    "kernel_doc",
)
"""The CSV header, in column order; ``metrics``, ``stages`` and ``device`` hold JSON text."""

_JSON_COLUMNS = ("metrics", "stages", "device")


def write_csv(records: Iterable[EvalRecord], path: str | Path) -> Path:
    """Write one CSV row per record under the :data:`CSV_COLUMNS` header; returns the path."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for record in records:
            row = record.to_dict()
            for name in _JSON_COLUMNS:
                row[name] = json.dumps(row[name], sort_keys=True)
            row["id"] = "" if row["id"] is None else row["id"]
            row["reward"] = repr(row["reward"])
            row["created_at"] = repr(row["created_at"])
            writer.writerow(row)
    return path


def read_csv(path: str | Path) -> list[EvalRecord]:
    """The records :func:`write_csv` wrote, in file order.

    Raises:
        ValueError: when the header is not :data:`CSV_COLUMNS` or a row is bad.
    """
    path = Path(path)
    out = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise ValueError(f"`{path}` is not a kasrl results CSV: header {reader.fieldnames} != {list(CSV_COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            try:
                data: dict[str, Any] = dict(row)
                data["id"] = int(row["id"]) if row["id"] else None
                data["reward"] = float(row["reward"])
                data["created_at"] = float(row["created_at"])
                for name in _JSON_COLUMNS:
                    data[name] = json.loads(row[name])
                out.append(EvalRecord.from_dict(data))
            except ValueError as exc:
                raise ValueError(f"`{path}` line {line}: {exc}") from None
    return out


def write_jsonl(records: Iterable[EvalRecord], path: str | Path) -> Path:
    """Write one JSON object per line per record (:meth:`EvalRecord.to_dict`); returns the path."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record.to_dict()) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[EvalRecord]:
    """The records :func:`write_jsonl` wrote, in file order; blank lines are skipped.

    Raises:
        ValueError: naming the line that is not a valid record.
    """
    path = Path(path)
    out = []
    with path.open(encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                out.append(EvalRecord.from_dict(json.loads(text)))
            except ValueError as exc:
                raise ValueError(f"`{path}` line {line}: {exc}") from None
    return out
