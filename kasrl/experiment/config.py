"""Typed run configs shared by :class:`kasrl.study.Study`, ``train_agent.py``, ``evolve.py`` and ``compete.py``.

A run config is a nested dataclass loaded from YAML and overridden with dotted
``key=value`` pairs (OmegaConf does the merging and type checking); an
unknown key or a wrong type fails with one line naming the key. The strategy
is named by ``strategy`` (a registry name, see :mod:`kasrl.strategy`) and
configured by ``options``; ``task.<key>=value`` overrides a field of the task
(kept in ``task_overrides``).

>>> cfg = load_config(RunConfig, None, ["seed=3", "budget.evaluations=10", "task.device=auto", "options.family_first=true"])
>>> cfg.seed, cfg.budget.evaluations, cfg.task_overrides, cfg.options
(3, 10, {'device': 'auto'}, {'family_first': True})
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from kasrl.errors import ConfigError
from kasrl.space.config import SpaceConfig

__all__ = [
    "BudgetConfig",
    "WandbConfig",
    "RayConfig",
    "RunConfig",
    "load_config",
    "to_dict",
    "CONFIGS_DIR",
]

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
"""The configs shipped with the package: run configs, ``tasks/`` and ``strategies/``."""
T = TypeVar("T")


@dataclass
class BudgetConfig:
    """What a run may spend (the same currency for every strategy)."""

    evaluations: int = 60
    """Evaluations this run may ask for (a cache hit still costs one)."""
    seconds: float = 780.0
    """Wall-clock seconds; the run stops at the first evaluation after this."""


@dataclass
class WandbConfig:
    """Experiment tracking (offline unless WANDB_MODE says otherwise)."""

    project: str = "kasrl"
    """wandb project name."""
    mode: str = ""
    """offline | disabled | online; empty: WANDB_MODE, else offline."""
    group: str = ""
    """wandb group (compete.py sets one per competition)."""


@dataclass
class RayConfig:
    """Ray cluster settings (executor=ray only)."""

    address: str = ""
    """'auto' to join a running cluster, host:port, or empty to start a local one."""
    num_gpus: float = 0.0
    """GPUs reserved per evaluation (1 on a GPU cluster)."""
    num_cpus: float = 1.0
    """CPUs reserved per evaluation."""


@dataclass
class RunConfig:
    """Settings every search run has."""

    seed: int = 0
    """Seeds every random choice (the same seed gives the same kernels)."""
    task: str = "fashion_mnist_cnn"
    """Task name (kasrl/configs/tasks/<name>.yaml) or path to a task YAML."""
    task_overrides: dict[str, Any] = field(default_factory=dict)
    """Fields of the task to change (``task.device=cuda`` on the command line lands here)."""
    strategy: str = "random"
    """The search strategy: a name from kasrl/configs/strategies/ (random, random_family, random_prior, ppo, aging,
    mu_plus_lambda, nsga2, mcts)."""
    options: dict[str, Any] = field(default_factory=dict)
    """The strategy's options, over the defaults of its registry file (see ``python -m kasrl strategies``)."""
    fidelity: str = "measured"
    """measured (real latency and training) | analytic (FLOPs/params ratios only)."""
    out: str = "runs"
    """Folder for run folders (runs/<run name>/)."""
    store: str = "runs/results.db"
    """SQLite results store (the evaluation cache, shared across runs)."""
    executor: str = "process"
    """inline | process | ray: where evaluations run."""
    workers: int = 1
    """Evaluation workers (process and ray executors)."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Ray settings (executor=ray)."""
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    """Evaluations and seconds this run may spend."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Experiment tracking."""
    space: SpaceConfig = field(default_factory=lambda: SpaceConfig(min_steps=5))
    """The search space (primitive families, sizes, kernel limits; see :class:`kasrl.space.SpaceConfig`)."""
    top_k: int = 5
    """Kernels written out and shown in the final leaderboard."""
    checkpoint_every: int = 10
    """Evaluations between checkpoints of the run state (0: only at the end)."""

    def validate(self) -> None:
        """Check values that types alone do not catch.

        Raises:
            ConfigError: naming the key.
        """
        if self.fidelity not in ("measured", "analytic"):
            raise ConfigError(f"`fidelity` must be 'measured' or 'analytic', got {self.fidelity!r}")
        if self.executor not in ("inline", "process", "ray"):
            raise ConfigError(f"`executor` must be 'inline', 'process' or 'ray', got {self.executor!r}")
        if self.workers < 1:
            raise ConfigError(f"`workers` must be at least 1, got {self.workers}")
        if self.budget.evaluations < 1:
            raise ConfigError(f"`budget.evaluations` must be at least 1, got {self.budget.evaluations}")
        if not self.budget.seconds > 0:
            raise ConfigError(f"`budget.seconds` must be positive, got {self.budget.seconds}")
        if self.wandb.mode not in ("", "offline", "disabled", "online"):
            raise ConfigError(f"`wandb.mode` must be offline, disabled or online, got {self.wandb.mode!r}")
        if self.top_k < 1:
            raise ConfigError(f"`top_k` must be at least 1, got {self.top_k}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"`checkpoint_every` must be >= 0, got {self.checkpoint_every}")


def _flatten_keys(cfg, prefix: str = "") -> list:
    out = []
    for f in dataclasses.fields(cfg):
        key = f"{prefix}{f.name}"
        out.append(key)
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.extend(_flatten_keys(value, key + "."))
    return out


def _key_error(e: OmegaConfBaseException, known: list) -> ConfigError:
    key = getattr(e, "full_key", None) or ""
    msg = str(e).splitlines()[0]
    if isinstance(e, ConfigKeyError) or "not in struct" in msg or "Key '" in msg and "not in" in msg:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        return ConfigError(f"unknown key `{key}`{hint}")
    if isinstance(e, ValidationError):
        return ConfigError(f"`{key}`: {msg}")
    return ConfigError(f"`{key}`: {msg}" if key else msg)


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Load ``cls`` defaults, then the YAML at ``path``, then dotted overrides.

    Raises:
        ConfigError: for a missing or malformed file, an unknown key, a wrong
            type or a bad value, naming the file or key.
    """
    base = OmegaConf.structured(cls)
    known = _flatten_keys(cls())
    layers = [base]
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            layers.append(OmegaConf.load(p))
        except Exception as e:  # noqa: BLE001 - YAML errors have many types
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not key=value")
    # task.<field>=value changes the task, which `task` only names
    overrides = [f"task_overrides.{o[len('task.'):]}" if o.startswith("task.") else o for o in overrides]
    try:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise _key_error(e, known) from None
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def from_mapping(base: T, fields: Any) -> T:
    """``base`` with ``fields`` (a mapping of keys, nested mappings allowed) merged on top, checked like a file.

    Raises:
        ConfigError: for an unknown key, a wrong type or a bad value, naming the key.
    """
    cls = type(base)
    known = _flatten_keys(base)
    fields = dict(fields or {})
    if "task" in fields and not isinstance(fields["task"], str):  # a Task object: its name, and the rest as overrides
        task = fields.pop("task")
        fields["task"] = getattr(task, "name", task)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(base), OmegaConf.create(_plain(fields)))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise _key_error(e, known) from None
    if hasattr(cfg, "validate"):
        cfg.validate()
    assert isinstance(cfg, cls)
    return cfg


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def load_saved(run_dir: str | Path, cls: type[T] | None = None) -> T:
    """The config saved in a run folder (``config.yaml``).

    Raises:
        ConfigError: when ``run_dir`` is not a run folder.
    """
    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"`--resume` {run_dir}: not a run folder (no config.yaml)")
    return load_config(cls or RunConfig, saved)


def to_dict(cfg: Any) -> dict:
    """A config as plain nested dicts and lists (for YAML, wandb and checkpoints)."""
    return _plain(cfg)
