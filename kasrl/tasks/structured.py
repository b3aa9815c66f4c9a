"""Typed configs on OmegaConf structured configs, with one-line errors that name the dotted key.

The task (:mod:`kasrl.tasks.task`) is a tree of frozen dataclasses. OmegaConf
does the merging and the typing, as it does for run configs
(:mod:`kasrl.experiment.config`); this module adds what a task needs on top:

* every error in one line naming the full dotted key (``task.recipe.lr``) with
  the expected type in words and the value given;
* a ``_prepare`` step per section that reads older layouts and shorthands
  before typing (a task file written for an older kasrl still loads);
* ``_validate`` per section for the rules types alone do not express;
* dataclasses constructed directly in Python are typed the same way.

Typing is OmegaConf's, so it converts where it can: the string ``"1"`` is
accepted for an integer, ``"yes"`` and ``1`` for a boolean, ``5`` for a string.

>>> @dataclasses.dataclass(frozen=True)
... class Demo(Checked):
...     _prefix: ClassVar[str] = "demo"
...     lr: float = 0.1
>>> build(Demo, {"lr": 1}, "demo").lr
1.0
>>> build(Demo, {"lr": "fast"}, "demo")
Traceback (most recent call last):
kasrl.errors.ConfigError: `demo.lr` must be a number, got 'fast' (str)
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Literal

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from kasrl.errors import ConfigError

__all__ = ["Checked", "build", "plain", "type_name", "describe", "unknown_key", "deep_merge", "nest"]

_BUILDING = contextvars.ContextVar("kasrl_structured_building", default=False)
_TEMPLATES: dict = {}


@contextlib.contextmanager
def _building() -> Iterator[None]:
    token = _BUILDING.set(True)
    try:
        yield
    finally:
        _BUILDING.reset(token)


# ------------------------------------------------------------------ words for types and values


def describe(value: Any) -> str:
    """``'fast' (str)``: a value and its type, for messages."""
    return f"{value!r} ({type(value).__name__})"


def type_name(tp: Any) -> str:
    """What a type hint asks for, in words (``an integer or null``)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {type_name(args[0])}"
        return f"a list [{', '.join(type_name(a) for a in args)}]"
    if origin in (dict, Mapping) or dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", Any: "anything"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _section(tp: Any) -> type | None:
    """The dataclass a field holds (``X`` or ``X | None``), or None."""
    tp = _strip_optional(tp)
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _fields(cls: type) -> list:
    return [f.name for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")]


def unknown_key(key: str, known: list, removed: Mapping[str, str] | None = None) -> ConfigError:
    """``unknown key `task.recipe.lrate`; did you mean `lr`?`` (or a note on a key that was removed)."""
    if removed and key in removed:
        return ConfigError(f"`{key}` was {removed[key]}")
    last = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(last, known, n=1, cutoff=0.5)
    hint = f"; did you mean `{close[0]}`?" if close else f"; known: {', '.join(known)}"
    return ConfigError(f"unknown key `{key}`{hint}")


# ------------------------------------------------------------------ plain data


def plain(obj: Any) -> Any:
    """Dataclasses, tuples and mappings as plain dicts and lists (YAML/JSON-ready)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.name.startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    return obj


def nest(flat: Mapping[str, Any], drop_prefix: str = "") -> dict:
    """Dotted keys (``{"recipe.lr": 0.1}``) as nested mappings; nested mappings are merged in as they are."""
    out: dict = {}
    for dotted, value in flat.items():
        parts = str(dotted).removeprefix(drop_prefix).split(".") if drop_prefix else str(dotted).split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override `{dotted}`: `{'.'.join(parts[: i + 1])}` is set and is not a section")
            node = nxt
        leaf = parts[-1]
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = deep_merge(node[leaf], nest(value))
        else:
            node[leaf] = nest(value) if isinstance(value, Mapping) else value
    return out


def deep_merge(base: Mapping, top: Mapping) -> dict:
    """``top`` over ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


# ------------------------------------------------------------------ building


class Checked:
    """Mixin of config sections: typed by OmegaConf, then checked by ``_validate``.

    ``_prefix`` is the section's dotted key in messages. Subclasses may define
    ``_prepare(data, prefix)`` (raw data -> the fields' layout: older layouts,
    shorthands) and ``_validate()`` (rules beyond types, raising ConfigError
    naming the key). Constructed directly, a section is typed through OmegaConf
    like one loaded from a file.
    """

    _prefix: ClassVar[str] = "task"
    _removed: ClassVar[Mapping[str, str]] = {}

    def __post_init__(self) -> None:
        if not _BUILDING.get():
            typed = build(type(self), plain(self), self._prefix)
            for f in dataclasses.fields(self):
                object.__setattr__(self, f.name, getattr(typed, f.name))
            return
        self._validate()

    @classmethod
    def _prepare(cls, data: dict, prefix: str) -> dict:
        return data

    def _validate(self) -> None:
        pass

    def _require(self, name: str, ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"`{self._prefix}.{name}` must be {what}, got {getattr(self, name)!r}")


def _prepared(cls: type, data: Any, prefix: str) -> dict:
    """Check the layout of ``data`` against ``cls`` (sections are mappings, keys are known) and run each ``_prepare``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"`{prefix}` must be a mapping, got {describe(data)}")
    data = dict(data)
    if hasattr(cls, "_prepare"):
        data = cls._prepare(data, prefix)
    known = _fields(cls)
    hints = _hints(cls)
    removed = getattr(cls, "_removed", {})
    for key in list(data):
        if key not in known:
            raise unknown_key(f"{prefix}.{key}", known, removed)
        section = _section(hints[key])
        if section is not None and data[key] is not None:
            data[key] = _prepared(section, data[key], f"{prefix}.{key}")
    return data


def _required(cls: type) -> list:
    return [f.name for f in dataclasses.fields(cls)
            if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


def _template(cls: type):
    if cls not in _TEMPLATES:
        with _building():
            _TEMPLATES[cls] = OmegaConf.structured(cls)
    return _TEMPLATES[cls]


def build(cls: type, data: Any, prefix: str) -> Any:
    """An instance of dataclass ``cls`` from plain ``data`` (its defaults for what is missing), typed and validated.

    Raises:
        ConfigError: one line naming the dotted key (``{prefix}.<key>``) of an unknown
            key, a value of the wrong type or a value the section rejects.
    """
    data = _prepared(cls, data, prefix)
    missing = [name for name in _required(cls) if name not in data]
    if missing:
        raise ConfigError(f"missing key `{prefix}.{missing[0]}`")
    with _building():
        try:
            return OmegaConf.to_object(OmegaConf.merge(_template(cls), OmegaConf.create(data)))
        except OmegaConfBaseException as e:
            raise _error(e, cls, data, prefix) from None


def _parts(key: str) -> list:
    """``"a.b[1].c"`` -> ``["a", "b", 1, "c"]``."""
    out: list = []
    for piece in key.split("."):
        m = re.fullmatch(r"([^\[\]]*)((?:\[\d+\])*)", piece)
        if m is None:
            out.append(piece)
            continue
        if m.group(1):
            out.append(m.group(1))
        out.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return out


def _hint_at(cls: type, parts: list) -> Any:
    tp: Any = cls
    for part in parts:
        tp = _strip_optional(tp)
        if isinstance(part, int):
            args = typing.get_args(tp)
            tp = args[0] if len(args) == 2 and args[1] is Ellipsis else (args[part] if part < len(args) else Any)
        elif dataclasses.is_dataclass(tp):
            tp = _hints(tp).get(part, Any)
        elif typing.get_origin(tp) in (dict, Mapping):
            tp = typing.get_args(tp)[1] if typing.get_args(tp) else Any
        else:
            return Any
    return tp


def _value_at(data: Any, parts: list) -> Any:
    for part in parts:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _leaves(cls: type, data: Mapping, parts: list) -> Iterator[tuple]:
    hints = _hints(cls)
    for key, value in data.items():
        section = _section(hints.get(key, Any))
        if section is not None and isinstance(value, Mapping):
            yield from _leaves(section, value, [*parts, key])
        else:
            yield [*parts, key], value


def _locate(cls: type, data: Mapping) -> tuple | None:
    """The first leaf of ``data`` that does not type on its own (for errors OmegaConf reports without a key)."""
    required = {name: data[name] for name in _required(cls) if name in data}
    for parts, value in _leaves(cls, data, []):
        single: Any = value
        for part in reversed(parts):
            single = {part: single}
        try:
            OmegaConf.to_object(OmegaConf.merge(_template(cls), OmegaConf.create(deep_merge(required, single))))
        except OmegaConfBaseException:
            return parts, value
        except Exception:  # noqa: BLE001, S112 - a leaf that types but fails validation alone: not the one
            continue
    return None


def _error(e: OmegaConfBaseException, cls: type, data: Mapping, prefix: str) -> ConfigError:
    key = getattr(e, "full_key", None) or ""
    if isinstance(e, ConfigKeyError):
        parent = _hint_at(cls, _parts(key)[:-1])
        known = _fields(_strip_optional(parent)) if dataclasses.is_dataclass(_strip_optional(parent)) else []
        return unknown_key(f"{prefix}.{key}", known)
    if key:
        parts = _parts(key)
        value = _value_at(data, parts)
    else:
        found = _locate(cls, data)
        if found is None:
            return ConfigError(f"`{prefix}`: {str(e).splitlines()[0]}")
        parts, value = found
        key = ".".join(str(p) for p in parts)
    hint = _hint_at(cls, parts)
    suggest = ""
    literal = _strip_optional(hint)
    if typing.get_origin(literal) is Literal:
        close = difflib.get_close_matches(str(value), [str(a) for a in typing.get_args(literal)], n=1)
        suggest = f"; did you mean {close[0]!r}?" if close else ""
    shown = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)
    return ConfigError(f"`{prefix}{shown}` must be {type_name(hint)}, got {describe(value)}{suggest}")
