"""Import-path targets: the networks and datasets of a task, named ``package.module:attribute``.

A task names its network factory and its dataset loader by import path
(``network.target: mypkg.nets:tiny_cnn``). The task travels to every evaluation
worker (process pool or Ray actor) as plain data, and each worker imports the
target itself, so the module must be importable there (installed, or on
``PYTHONPATH`` / the working directory of the run).

kasrl's own networks and datasets are reached the same way: a name such as
``small_cnn`` or ``fashion_mnist`` is only an alias for its import path in
:data:`ALIASES`, resolved here like any other target.

A dataset loader may carry optional hooks (attributes, set with
:func:`loader_hooks`) that let a task be checked without reading the data:

============  ===============================================================================
``info``      ``info(**kwargs) -> DatasetInfo``: channels, classes and image size, known
              without loading (else the data are loaded once to find them)
``missing``   ``missing(**kwargs) -> str``: why the files are absent ("" when present), checked
              at task load: a task with a ``fallback`` switches to it then. Raise
              :class:`~kasrl.errors.DatasetError` instead for a wrong explicit location (a typo
              must not fall back silently)
``validate``  ``validate(**kwargs)``: raise :class:`~kasrl.errors.ConfigError` naming
              ``task.dataset.kwargs.<key>`` for a bad argument
``location``  names of arguments that say where the files are, not what they are (left out
              of the task's fingerprint, like ``path``)
============  ===============================================================================

>>> resolve("network", "small_cnn", "task.network.target").path
'kasrl.tasks.networks:SmallCNN'
>>> resolve("network", "kasrl.tasks.networks:SmallCNN", "task.network.target").name
'small_cnn'
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from kasrl.errors import ConfigError

__all__ = ["ALIASES", "Target", "resolve", "alias_of", "parameters", "check_kwargs", "loader_hooks", "ANY_KWARGS"]

ALIASES: dict[str, dict[str, str]] = {
    "network": {
        "small_cnn": "kasrl.tasks.networks:SmallCNN",
        "resnet18_cifar": "kasrl.tasks.networks:resnet18_cifar",
        "resnet34_cifar": "kasrl.tasks.networks:resnet34_cifar",
        "resnet18_imagenet": "kasrl.tasks.networks:resnet18_imagenet",
        "resnet34_imagenet": "kasrl.tasks.networks:resnet34_imagenet",
    },
    "dataset": {
        "fashion_mnist": "kasrl.tasks.data:fashion_mnist",
        "digits": "kasrl.tasks.data:digits",
        "cifar10": "kasrl.tasks.data:cifar10",
        "cifar100": "kasrl.tasks.data:cifar100",
        "synthetic": "kasrl.tasks.data:synthetic",
    },
}
"""The one registry of built-in names: kind (``network`` | ``dataset``) -> alias -> import path."""

_WHAT = {"network": "factory", "dataset": "loader"}

ANY_KWARGS = None
"""What :func:`parameters` returns for a callable that takes ``**kwargs`` (any keyword is accepted)."""


class Target(NamedTuple):
    """A resolved target: its display name (the alias, when it has one), import path and object."""

    name: str
    path: str
    obj: Callable[..., Any]


def alias_of(kind: str, text: str) -> str:
    """The alias of ``text`` (an alias or an import path) when it has one, else ``text`` itself."""
    table = ALIASES[kind]
    if text in table:
        return text
    return next((alias for alias, path in table.items() if path == text), text)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def resolve(kind: str, text: str, field: str) -> Target:
    """Import the ``kind`` named ``text`` (an alias of :data:`ALIASES` or ``package.module:attribute``).

    Raises:
        ConfigError: in one line naming ``field``, for an unknown alias, a module that does not
            import, a missing attribute or an object that is not callable.
    """
    table = ALIASES[kind]
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"`{field}` must be a built-in {kind} name or an import path 'package.module:{_WHAT[kind]}', got {text!r}")
    path = table.get(text, text)
    if ":" not in path:
        close = difflib.get_close_matches(text, table, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"`{field}`: {text!r} is neither a built-in {kind} ({', '.join(table)}) nor an import path "
                          f"'package.module:{_WHAT[kind]}'{hint}")
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"`{field}`: {text!r} is not an import path 'package.module:{_WHAT[kind]}'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ConfigError(f"`{field}`: cannot import module {module_name!r} ({_first_line(e)}); is it installed or on "
                              f"PYTHONPATH?") from None
        raise ConfigError(f"`{field}`: importing {module_name!r} failed: {type(e).__name__}: {_first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - any error inside the user's module, in one line
        raise ConfigError(f"`{field}`: importing {module_name!r} failed: {type(e).__name__}: {_first_line(e)}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"`{field}`: module {module_name!r} has no attribute {attr!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"`{field}`: {path!r} is not callable (it is {type(obj).__name__} {obj!r:.40}); "
                          f"name a {_WHAT[kind]} function or class")
    return Target(alias_of(kind, text), path, obj)


def parameters(obj: Callable[..., Any]) -> dict[str, Any] | None:
    """Keyword parameters of ``obj``: name -> default (``inspect.Parameter.empty`` when required).

    ``None`` (:data:`ANY_KWARGS`) when it takes ``**kwargs`` or has no signature to read.
    """
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return ANY_KWARGS
    out = {}
    for name, p in sig.parameters.items():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return ANY_KWARGS
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            out[name] = p.default
    return out


def check_kwargs(target: Target, kwargs: Mapping[str, Any], prefix: str, kind: str, supplied: Iterable[str] = ()) -> None:
    """Check that ``target`` accepts every key of ``kwargs`` and gets every argument it requires.

    Args:
        target: the resolved factory or loader.
        kwargs: the task's arguments for it.
        prefix: dotted key of ``kwargs`` (``task.network.kwargs``).
        kind: ``network`` or ``dataset``, for the message.
        supplied: arguments kasrl passes itself when the target takes them (``num_classes``, ...).

    Raises:
        ConfigError: naming the unknown or missing key.
    """
    params = parameters(target.obj)
    if params is ANY_KWARGS:
        return
    known = [k for k in params if k not in supplied]
    for key in kwargs:
        if key not in params:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.5)
            hint = f"; did you mean `{close[0]}`?" if close else f"; known: {', '.join(known) or 'none'}"
            raise ConfigError(f"unknown key `{prefix}.{key}` for {kind} {target.name!r}{hint}")
    required = [k for k, d in params.items() if d is inspect.Parameter.empty and k not in kwargs and k not in supplied]
    if required:
        raise ConfigError(f"`{prefix}`: {kind} {target.name!r} needs `{required[0]}` (it has no default)")


def loader_hooks(*, info: Callable[..., Any] | None = None, missing: Callable[..., str] | None = None,
                 validate: Callable[..., None] | None = None, location: Sequence[str] = ()) -> Callable:
    """Decorator attaching the optional hooks of a dataset loader (see the module docstring)."""

    def attach(fn: Callable) -> Callable:
        fn.kasrl_info = info
        fn.kasrl_missing = missing
        fn.kasrl_validate = validate
        fn.kasrl_location = tuple(location)
        return fn

    return attach
