"""Tasks: the network, data, training recipe, latency setup, budget and reward of a search.

A task is a YAML file (shipped ones in ``kasrl/configs/tasks/``) loaded into
nested frozen dataclasses, typed by OmegaConf (:mod:`kasrl.tasks.structured`);
errors name the dotted key (``task.recipe.lr``) in one line. Every field has a
documented default, so a minimal task names just its network, data and
placeholders::

    network: {target: small_cnn}                       # or package.module:factory, with kwargs: {...}
    dataset: {target: digits, kwargs: {resize: [28, 28]}, train_size: 1000}
    placeholders: {select: all}                        # or [layer*.conv2, {channels: [64]}]

The network and the data are named by import path (``target``) with their
arguments (``kwargs``); kasrl's own are aliases (:mod:`kasrl.tasks.targets`).
A ``fallback`` section (overrides of the task's sections) is loaded in its place
when the dataset's files are absent, announced in one line on stderr; the loaded
task then says so (``fallback_active``), so its fingerprint differs.

The older layout (``network: {name: small_cnn, width: 32}``, ``dataset: {name:
fashion_mnist, path: ..., resize: ...}``) still loads: ``name`` is ``target``, and
a key that is an argument of the target goes into ``kwargs``.

=============================  ===================================================
``load_task(path_or_name)``    YAML file or bare name -> :class:`Task`
``task_from_dict(d)``          plain dict -> :class:`Task` (the inverse of ``to_dict``)
``Task.fingerprint``           sha256 of everything that changes a result
``build_task_network(task)``   the network with placeholders in the selected convs
``task_placements(task, m)``   the distinct ``(C, H, W)`` the placeholders see
``latency_placements(...)``    where kernels are timed (separate ones, if configured)
=============================  ===================================================

>>> task = load_task("digits_cnn")
>>> model, names = build_task_network(task)
>>> names
['stage1.0.conv', 'stage2.0.conv']
>>> task_placements(task, model)
(Placement(c=16, h=14, w=14), Placement(c=32, h=7, w=7))
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
import yaml

from kasrl.errors import ConfigError, DatasetError, KasrlError
from kasrl.placeholders import choose_layers, parse_select, record_placements, replace_convs_with_placeholders
from kasrl.solver.budget import Budget, Placement, parse_placements
from kasrl.tasks.data import DatasetInfo, DatasetSpec, dataset_info, dataset_missing, prepare_target_section
from kasrl.tasks.networks import SUPPLIED, with_supplied
from kasrl.tasks.structured import Checked, build, deep_merge, nest, plain
from kasrl.tasks.targets import Target, check_kwargs, parameters, resolve

__all__ = [
    "Task",
    "NetworkSpec",
    "PlaceholderSpec",
    "DatasetSpec",
    "Recipe",
    "LatencySpec",
    "Budget",
    "Penalties",
    "RewardSpec",
    "TimeoutSpec",
    "LadderSpec",
    "LADDER_RUNGS",
    "TASKS_DIR",
    "FINGERPRINT_VERSION",
    "load_task",
    "task_from_dict",
    "list_tasks",
    "build_task_network",
    "task_input_shape",
    "task_placements",
    "latency_placements",
    "resolve_device",
    "check_device_options",
]

TASKS_DIR = Path(__file__).resolve().parents[1] / "configs" / "tasks"
"""Where bare task names are looked up: ``kasrl/configs/tasks/<name>.yaml``, shipped with the package."""

# 2: negative measured rewards squashed above reward.floor; 3: speed read at a low quantile of per-call times;
# 4: how latency is taken (latency.dtype, channels_last, compile, cuda_graphs), recipe.autocast, timeouts.compile_s and
#    the synthetic dataset's fields enter the task, and GPU workers pin their device (before, a pool worker on cuda:i > 0
#    timed host dispatch, not the GPU): GPU results of version 3 are not comparable and must not be reused.
# 5: the ladder's settings (task.ladder) enter the task; its rungs key their own rows of the store.
# (Still 5: the target/kwargs layout of network and dataset changed every digest without changing what a field means; a
#  Fashion-MNIST task that fell back to digits now has its own digest, where before it shared the real task's.)
FINGERPRINT_VERSION = 5
"""Bumped whenever the meaning of a task field changes, so old fingerprints stop matching."""


# ------------------------------------------------------------------ the sections


@dataclass(frozen=True)
class NetworkSpec(Checked):
    """Which network to build: a factory and its arguments."""

    _prefix: ClassVar[str] = "task.network"
    target: str = "small_cnn"
    """The factory: a built-in name (:data:`kasrl.tasks.networks.NETWORKS`) or an import path ``package.module:factory``
    returning an ``nn.Module``."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """The factory's arguments (``width``...); ``num_classes`` and ``in_channels`` come from the dataset when the factory
    takes them and they are not set here."""

    @classmethod
    def _prepare(cls, data: dict, prefix: str) -> dict:
        return prepare_target_section(data, prefix, "network", ("target", "kwargs"), SUPPLIED)

    def _validate(self) -> None:
        check_kwargs(self.factory, self.kwargs, f"{self._prefix}.kwargs", "network", SUPPLIED)

    @property
    def factory(self) -> Target:
        """The resolved factory (imported)."""
        return resolve("network", self.target, f"{self._prefix}.target")

    @property
    def name(self) -> str:
        """The built-in name of the factory, or its import path."""
        return self.factory.name


@dataclass(frozen=True)
class PlaceholderSpec(Checked):
    """Which 3x3 convolutions become placeholders for the searched kernel."""

    _prefix: ClassVar[str] = "task.placeholders"
    select: Any = "all"
    """``all`` shape-preserving 3x3 convs, or a list of dotted layer names and ``fnmatch`` patterns (``layer*.conv2``) and
    shape filters (``{channels: [64, 128]}``, ``{placements: [64x56x56]}``), unioned; see :mod:`kasrl.placeholders`."""

    def _validate(self) -> None:
        object.__setattr__(self, "select", parse_select(self.select, f"{self._prefix}.select"))


@dataclass(frozen=True)
class Recipe(Checked):
    """How candidate networks are trained (the short proxy recipe)."""

    _prefix: ClassVar[str] = "task.recipe"
    epochs: float = 1.0
    """Passes over the training subset; fractions allowed (0.5 = half the batches)."""
    batch_size: int = 64
    """Images per training step."""
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    """Optimizer name."""
    lr: float = 1e-3
    """Learning rate (the peak rate for ``onecycle``)."""
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    """Learning-rate schedule over the run's steps (``onecycle``: warm up to ``lr``, then anneal)."""
    momentum: float = 0.9
    """SGD momentum (unused by adam/adamw)."""
    weight_decay: float = 0.0
    """L2 weight decay (decoupled for adamw)."""
    max_train_seconds: float | None = None
    """Wall-clock seconds after which one training run stops early; None = no limit."""
    loss_milestones: tuple[tuple[float, float], ...] = ()
    """``[fraction_of_training, max_loss]`` pairs: prune a run whose loss is above ``max_loss`` then."""
    autocast: Literal["bf16", "fp16"] | None = None
    """Train and test under ``torch.autocast`` at this dtype (``fp16`` with a gradient scaler, CUDA only); None: fp32."""
    num_workers: int = 0
    """DataLoader worker processes for data that are not in-memory tensors (augmenting datasets, data larger than
    memory); 0 loads in the training process. In-memory ``TensorDataset`` splits are indexed directly and ignore it."""

    def _validate(self) -> None:
        milestones = []
        for i, item in enumerate(self.loss_milestones):
            if (not isinstance(item, (list, tuple)) or len(item) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in item)):
                raise ConfigError(f"`task.recipe.loss_milestones[{i}]` must be a list [fraction, max_loss] of numbers, got {item!r}")
            milestones.append((float(item[0]), float(item[1])))
        object.__setattr__(self, "loss_milestones", tuple(milestones))
        self._require("epochs", self.epochs > 0, "a positive number of epochs")
        self._require("batch_size", self.batch_size >= 1, "a positive integer")
        self._require("lr", self.lr > 0, "a positive number")
        self._require("momentum", 0 <= self.momentum < 1, "in [0, 1)")
        self._require("weight_decay", self.weight_decay >= 0, "a non-negative number")
        self._require("num_workers", self.num_workers >= 0, "a non-negative integer")
        self._require(
            "max_train_seconds", self.max_train_seconds is None or self.max_train_seconds > 0, "a positive number of seconds or null"
        )
        last = 0.0
        for i, (fraction, max_loss) in enumerate(self.loss_milestones):
            if not last < fraction <= 1:
                raise ConfigError(f"`task.recipe.loss_milestones[{i}]`: fraction {fraction} must be in ({last:g}, 1] (ascending)")
            if not max_loss > 0:
                raise ConfigError(f"`task.recipe.loss_milestones[{i}]`: max_loss must be positive, got {max_loss}")
            last = fraction


@dataclass(frozen=True)
class LatencySpec(Checked):
    """How latency is measured."""

    _prefix: ClassVar[str] = "task.latency"
    batch: int = 8
    """Images per timed forward pass."""
    resolution: tuple[int, int] | None = None
    """Input height and width in pixels for timing; None = the training resolution."""
    repeats: int = 20
    """Interleaved (kernel block, baseline block) pairs timed at least."""
    warmup: int = 3
    """Untimed runs before timing."""
    time_s: float = 2.0
    """Seconds each interleaved timing (a placement, the whole network) lasts at least."""
    max_time_s: float | None = None
    """Seconds it may be extended to while its estimate is not yet stable (``target_spread``); None: 3 x ``time_s``."""
    target_spread: float = 0.05
    """Spread of the speedup over five slices of a timing at which an extended timing stops."""
    quantile: float = 0.01
    """Where in each side's per-call times its speed is read (see :mod:`kasrl.eval.latency`)."""
    threads: int = 1
    """Torch CPU threads while timing (1 avoids OpenMP spin-waiting on shared cores)."""
    placements: tuple[str, ...] | None = None
    """``CxHxW`` placements to time kernels at instead of the search placements (e.g. ResNet-18's ImageNet stages)."""
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Both sides run under ``torch.autocast`` at this dtype (``fp32``: no autocast; ``fp16``: CUDA only)."""
    channels_last: bool = False
    """Both sides' input and 4-d weights in the channels-last memory format."""
    compile: bool = False
    """Both sides through ``torch.compile``; compiling is kept out of the timing and reported as ``compile_s``."""
    cuda_graphs: bool = False
    """Both sides captured in a CUDA graph and timed as replays (what small, launch-bound batches deploy with; CUDA only)."""
    profile: str | None = None
    """The latency model's profile (``python -m kasrl calibrate --out``); null: this device's default one, calibrated
    on first use. Used when ``budget.latency`` is set or the ladder has ``predict`` (see :mod:`kasrl.latency.task`)."""
    calibrate_s: float = 150.0
    """Seconds a first-use calibration measures for."""
    refine: bool = True
    """Refit the model at the start of each run to every kernel latency the store holds for this task on this device."""

    @property
    def longest_s(self) -> float:
        """``max_time_s``, or 3 x ``time_s`` when it is None (as in :func:`kasrl.eval.latency.time_pair`)."""
        return self.max_time_s if self.max_time_s is not None else 3 * self.time_s

    _removed: ClassVar[Mapping[str, str]] = {
        "task.latency.min_time_s": "removed in task fingerprint version 3: use `time_s` (seconds each interleaved timing lasts at "
        "least; the speed is read at `quantile` of per-call times, see kasrl/eval/latency.py)",
    }

    @classmethod
    def _prepare(cls, data: dict, prefix: str) -> dict:
        if isinstance(data.get("placements"), str):  # "64x56x56,128x28x28", as on a command line
            data["placements"] = [t for t in data["placements"].split(",") if t.strip()]
        return data

    def _validate(self) -> None:
        self._require("batch", self.batch >= 1, "a positive integer")
        self._require("resolution", self.resolution is None or min(self.resolution) >= 1, "[height, width] of positive integers")
        self._require("repeats", self.repeats >= 1, "a positive integer")
        self._require("warmup", self.warmup >= 0, "a non-negative integer")
        self._require("time_s", 0 <= self.time_s < math.inf, "a finite, non-negative number of seconds")
        self._require("max_time_s", self.max_time_s is None or self.time_s <= self.max_time_s < math.inf,
                      f"null or a finite number of seconds, at least time_s ({self.time_s:g} s)")
        self._require("target_spread", 0 <= self.target_spread < math.inf, "a finite, non-negative fraction")
        self._require("quantile", 0 <= self.quantile <= 0.5, "a number in [0, 0.5]")
        self._require("threads", self.threads >= 1, "a positive integer")
        self._require("calibrate_s", 0 < self.calibrate_s <= 24 * 3600, "a number of seconds in (0, 86400]")
        self._require("profile", self.profile is None or (isinstance(self.profile, str) and self.profile.strip() != ""),
                      "a file path or null")
        if self.cuda_graphs and self.compile:
            raise ConfigError("`task.latency.cuda_graphs` cannot be combined with `task.latency.compile` (torch.compile captures graphs "
                              "of its own, with mode 'reduce-overhead'); set one of them to false")
        if self.placements is not None:
            parsed = parse_placements(",".join(self.placements), field="task.latency.placements")
            object.__setattr__(self, "placements", tuple(str(p) for p in parsed))


@dataclass(frozen=True)
class Penalties(Checked):
    """Reward given to a kernel whose evaluation fails, by cause (all <= 0)."""

    _prefix: ClassVar[str] = "task.reward.penalties"
    build_error: float = -7.0
    """The kernel does not build or does not preserve the shape."""
    numerics_error: float = -6.0
    """NaN or infinite values, or a loss milestone missed."""
    budget_violation: float = -6.0
    """FLOPs, parameters or tensor size over the budget."""
    timeout: float = -6.0
    """A stage ran past its time limit."""
    oom: float = -6.0
    """Out of memory."""
    crash: float = -7.0
    """The evaluation process died."""

    def _validate(self) -> None:
        for f in dataclasses.fields(self):
            self._require(f.name, getattr(self, f.name) <= 0, "a number <= 0")

    def __getitem__(self, cause: str) -> float:
        """The penalty for ``cause`` (a field name)."""
        if cause not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(f"unknown failure cause {cause!r}; known: {', '.join(f.name for f in dataclasses.fields(self))}")
        return getattr(self, cause)


@dataclass(frozen=True)
class RewardSpec(Checked):
    """How speed and accuracy turn into one reward."""

    _prefix: ClassVar[str] = "task.reward"
    tolerance: float = 1.0
    """Accuracy points below the baseline that cost nothing."""
    slope: float = 0.1
    """Reward lost per accuracy point beyond ``tolerance``."""
    speed: Literal["log", "linear"] = "log"
    """Speed term: ``log`` = ln(speedup), ``linear`` = speedup - 1."""
    floor: float = -5.0
    """Bound that rewards of kernels that ran approach but never reach (negative rewards are
    squashed as ``floor * tanh(r / floor)``); every penalty must lie at or below it, so a
    failure never outranks a kernel that ran."""
    penalties: Penalties = field(default_factory=Penalties)
    """Reward for each failure cause (each <= ``floor``)."""

    def _validate(self) -> None:
        self._require("tolerance", self.tolerance >= 0, "a non-negative number of accuracy points")
        self._require("slope", self.slope >= 0, "a non-negative number")
        self._require("floor", self.floor <= 0, "a number <= 0")
        for f in dataclasses.fields(self.penalties):
            value = getattr(self.penalties, f.name)
            if value > self.floor:
                raise ConfigError(f"`task.reward.penalties.{f.name}` must be <= `task.reward.floor` ({self.floor}) so a failed kernel "
                                  f"never outranks one that ran, got {value}")


LADDER_RUNGS = ("predict", "screen", "precise", "short", "full")
"""The rungs a ladder may climb, in this order (see :mod:`kasrl.eval.ladder`)."""


@dataclass(frozen=True)
class LadderSpec(Checked):
    """The multi-fidelity ladder: cheap rungs first, more only for kernels that can still win."""

    _prefix: ClassVar[str] = "task.ladder"
    rungs: tuple[str, ...] = ()
    """Rungs to climb, in order, ending with ``full`` (empty: every kernel pays the full evaluation).
    Known: predict (the latency model; needs a latency budget), screen, precise, short, full."""
    top_k: int = 5
    """The threshold is the run's k-th best final reward."""
    floor: float | None = None
    """A reward a kernel must be able to beat to go on even before k have finished (e.g. 0: not slower than the baseline)."""
    predict_margin: float = 0.5
    """predict: how much the latency model may understate a kernel's log speedup."""
    screen_time_s: float = 0.25
    """screen: seconds each short timing lasts (a placement, the network)."""
    screen_margin: float = 0.15
    """screen: log-speedup margin of the short timing, beyond twice its own spread."""
    short_fraction: float = 0.25
    """short: the fraction of the recipe's training steps."""
    accuracy_noise: float = 3.0
    """short: accuracy points a short run may understate the full run's (beyond the baseline's own gain)."""
    confirm_top: int = 3
    """confirm: the best kernels of a run retrained."""
    confirm_seeds: int = 3
    """confirm: training seeds each is retrained with (on the whole test split)."""

    def _validate(self) -> None:
        unknown = [r for r in self.rungs if r not in LADDER_RUNGS]
        if unknown:
            raise ConfigError(f"`task.ladder.rungs`: unknown rung {unknown[0]!r}; known: {', '.join(LADDER_RUNGS)}")
        if self.rungs and (self.rungs[-1] != "full" or list(self.rungs) != sorted(self.rungs, key=LADDER_RUNGS.index)
                           or len(set(self.rungs)) != len(self.rungs)):
            raise ConfigError(f"`task.ladder.rungs` must be distinct rungs in the order {', '.join(LADDER_RUNGS)}, ending with full; "
                              f"got {list(self.rungs)}")
        if self.rungs and "precise" not in self.rungs:
            raise ConfigError("`task.ladder.rungs` must include precise: the reward's speed is the precise rung's measurement")
        self._require("top_k", self.top_k >= 1, "a positive integer")
        for name in ("predict_margin", "screen_margin", "accuracy_noise"):
            self._require(name, 0 <= getattr(self, name) < math.inf, "a finite, non-negative number")
        self._require("screen_time_s", 0 < self.screen_time_s < math.inf, "a positive number of seconds")
        self._require("short_fraction", 0 < self.short_fraction < 1, "a fraction in (0, 1)")
        self._require("confirm_top", self.confirm_top >= 1, "a positive integer")
        self._require("confirm_seeds", self.confirm_seeds >= 2, "at least 2 (a spread needs two)")


@dataclass(frozen=True)
class TimeoutSpec(Checked):
    """Hard wall-clock limits per evaluation stage; past one, the evaluation is a ``timeout``."""

    _prefix: ClassVar[str] = "task.timeouts"
    build_s: float = 60.0
    """Seconds to build and check the kernel at every placement."""
    latency_s: float = 120.0
    """Seconds to measure latency."""
    train_s: float = 600.0
    """Seconds to train and test the network."""
    compile_s: float = 600.0
    """Seconds to ``torch.compile`` both sides of every timing (only with ``latency.compile``)."""

    def _validate(self) -> None:
        for f in dataclasses.fields(self):
            self._require(f.name, getattr(self, f.name) > 0, "a positive number of seconds")


@dataclass(frozen=True)
class Task(Checked):
    """One search problem: where kernels go, how they are trained, timed, budgeted and rewarded.

    ``fingerprint`` identifies everything that changes an evaluation's result
    (all fields but ``name``, ``description`` and ``fallback``); ``to_dict()``
    gives back the plain data ``task_from_dict`` reads.
    """

    _prefix: ClassVar[str] = "task"
    name: str
    """Task name (``load_task``: the YAML file's stem unless the file sets it)."""
    description: str = ""
    """Free text for people; not part of the fingerprint."""
    seed: int = 0
    """Seed for weight initialisation and training."""
    network: NetworkSpec = field(default_factory=NetworkSpec)
    """The network whose convolutions are replaced (default ``small_cnn``)."""
    placeholders: PlaceholderSpec = field(default_factory=PlaceholderSpec)
    """Which convolutions are replaced (default all shape-preserving 3x3 convs)."""
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    """Training and test data (default ``fashion_mnist``, all of it)."""
    recipe: Recipe = field(default_factory=Recipe)
    """Proxy training recipe."""
    latency: LatencySpec = field(default_factory=LatencySpec)
    """Latency measurement."""
    budget: Budget = field(default_factory=Budget)
    """FLOPs, parameter and tensor-size budget per placement."""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    """Where to train and time: ``auto`` = CUDA when available."""
    reward: RewardSpec = field(default_factory=RewardSpec)
    """Reward shape and failure penalties."""
    timeouts: TimeoutSpec = field(default_factory=TimeoutSpec)
    """Hard limits per evaluation stage."""
    ladder: LadderSpec = field(default_factory=LadderSpec)
    """The multi-fidelity ladder (off unless it names rungs)."""
    fallback: dict[str, Any] | None = None
    """What to load instead when the dataset's files are absent: sections over this task's (``dataset`` replaces the
    dataset section whole; the others, e.g. ``recipe``, are merged key by key); None: a missing file is an error.
    Not part of the fingerprint (the loaded fallback task is, with ``fallback_active``)."""
    fallback_active: bool = False
    """True when this task is its fallback, loaded because the dataset's files were absent."""

    @classmethod
    def _prepare(cls, data: dict, prefix: str) -> dict:
        return _legacy_fallback(data)

    def _validate(self) -> None:
        limit = self.recipe.max_train_seconds
        if limit is not None and limit > self.timeouts.train_s:
            raise ConfigError(f"`task.recipe.max_train_seconds` ({limit:g}) exceeds `task.timeouts.train_s` ({self.timeouts.train_s:g})")
        if self.device == "cpu":
            check_device_options(self, "cpu")
        _check_network(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-ready data (lists, not tuples) that :func:`task_from_dict` reads back."""
        return plain(self)

    @property
    def fingerprint(self) -> str:
        """Sha256 hex digest of everything that changes an evaluation's result.

        Leaves out ``name``, ``description``, ``fallback`` (what would be loaded
        instead; the loaded fallback task has ``fallback_active`` and its own
        dataset and recipe), the loader arguments that only say where files
        are (``dataset.kwargs.path`` of the built-in loaders) and the latency
        model's settings (``budget.latency``, ``latency.profile``,
        ``calibrate_s``, ``refine``: they decide which kernels are drawn, not
        what a kernel measures). Targets are compared by import path, so an
        alias and its path give one digest, and an argument set to its default
        counts as left out.
        """
        data = self.to_dict()
        for key in ("name", "description", "fallback"):
            data.pop(key)
        for section, target in (("network", self.network.factory), ("dataset", self.dataset.loader)):
            data[section]["target"] = target.path
            defaults = parameters(target.obj) or {}
            kwargs = data[section]["kwargs"]
            where = getattr(target.obj, "kasrl_location", ())
            for key in [k for k, v in kwargs.items() if (k in defaults and defaults[k] == v) or k in where]:
                del kwargs[key]  # an argument at its default, or one saying where files are: the same result either way
        for key in ("profile", "calibrate_s", "refine"):  # which latency model shapes the search, not what a kernel measures
            data["latency"].pop(key)
        data["budget"].pop("latency")
        data["fingerprint_version"] = FINGERPRINT_VERSION
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()


#: Items in each split of scikit-learn's digits as the ``digits`` loader splits them (the older layout's fallback caps sizes there).
_DIGITS_SPLITS = {"train_size": 1438, "test_size": 359}


def _legacy_fallback(data: dict) -> dict:
    """A task in the older layout asking for Fashion-MNIST without a path fell back to digits on its own: keep that."""
    ds = data.get("dataset")
    if not (isinstance(ds, Mapping) and ds.get("name") == "fashion_mnist" and "target" not in ds and not ds.get("path")
            and "fallback" not in data):
        return data
    resize = list(ds.get("resize") or (28, 28))
    sizes = {k: min(ds[k], n) if isinstance(ds.get(k), int) else None for k, n in _DIGITS_SPLITS.items()}
    data = dict(data)
    data["fallback"] = {"description": f"scikit-learn digits resized to {resize[0]}x{resize[1]} (older task layout: same recipe)",
                        "dataset": {"target": "digits", "kwargs": {"resize": resize}, **sizes, "seed": ds.get("seed", 0)}}
    return data


_NETWORK_CHECKED: set = set()


def _probe_network(target: Target, kwargs: dict) -> Any:
    """Build the network without spending memory (on the meta device; on the CPU if the factory cannot)."""
    for device in ("meta", "cpu"):
        try:
            with torch.random.fork_rng(devices=[]), torch.device(device):
                return target.obj(**kwargs)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - a factory's own error, in one line
            if device == "cpu":
                first = (str(e).strip().splitlines() or [""])[0]
                raise ConfigError(f"`task.network.kwargs`: {target.name}(**{kwargs}) raised {type(e).__name__}: {first}") from None
    return None  # pragma: no cover - the loop returns or raises


def _check_network(task: Task) -> None:
    """Check at load that the factory returns an ``nn.Module``, and what else can be known without the data.

    With the data's shape known without loading them (the loader's ``info`` hook: kasrl's own loaders have one), also
    that the network has a shape-preserving 3x3 conv and that ``select`` matches; which convs preserve the shape can
    depend on ``in_channels``, so otherwise :func:`build_task_network` checks that.
    """
    hook = getattr(task.dataset.loader.obj, "kasrl_info", None)
    info: DatasetInfo | None = hook(**task.dataset.kwargs) if hook is not None else None
    key = json.dumps([task.network.target, task.network.kwargs, plain(task.placeholders.select), plain(info)], sort_keys=True,
                     default=str)
    if key in _NETWORK_CHECKED:
        return
    target = task.network.factory
    model = _probe_network(target, with_supplied(target, dict(task.network.kwargs), info.num_classes if info else 10,
                                                 info.in_channels if info else 3))
    _check_module(target, model, layers=info is not None)
    if info is not None:
        choose_layers(model, task.placeholders.select, field="task.placeholders.select", network=task.network.name, shapes_later=True)
    _NETWORK_CHECKED.add(key)


def _check_module(target: Target, model: Any, layers: bool = True) -> None:
    from kasrl.placeholders import why_not_replaceable

    if not isinstance(model, nn.Module):
        raise ConfigError(f"`task.network.target`: {target.name} returned {type(model).__name__}, not a torch.nn.Module")
    if layers and not any(not why_not_replaceable(m) for m in model.modules()):
        raise ConfigError(f"`task.network.target`: {target.name!r} has no shape-preserving 3x3 conv to replace (stride 1, C in = "
                          f"C out, groups 1, dilation 1, same padding)")


# ------------------------------------------------------------------ loading


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML loader that rejects duplicate keys and reads ``1e-3`` as a float (YAML 1.2)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"duplicate key `{key}` at line {key_node.start_mark.line + 1}")
        seen.add(key)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def list_tasks() -> list[str]:
    """Names of the tasks in :data:`TASKS_DIR`."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def _resolve(path_or_name: str | Path) -> Path:
    text = str(path_or_name)
    if text.endswith((".yaml", ".yml")) or "/" in text or Path(text).is_file():
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"task file {text} does not exist")
        return path
    path = TASKS_DIR / f"{text}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(text, list_tasks(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown task {text!r}{hint}; known: {', '.join(list_tasks()) or 'none'} (in {TASKS_DIR})")
    return path


def _target_names(data: Mapping) -> dict:
    """``network.name`` / ``dataset.name`` (the older layout) as ``target``, so overrides in either layout meet."""
    out = dict(data)
    for section in ("network", "dataset"):
        value = out.get(section)
        if isinstance(value, Mapping) and "name" in value and "target" not in value:
            value = dict(value)
            value["target"] = value.pop("name")
            out[section] = value
    return out


def _fallback_task(task: Task) -> Task:
    """``task`` with its ``fallback`` sections loaded over it (``fallback_active``)."""
    sections = dict(task.fallback or {})
    dataset = sections.pop("dataset", None)
    data = deep_merge(task.to_dict(), _target_names(sections))
    if dataset is not None:
        data["dataset"] = dataset
    data["fallback_active"] = True
    try:
        return build(Task, data, "task")
    except (ConfigError, DatasetError) as e:
        raise type(e)(f"`task.fallback`: {e}") from None


_ANNOUNCED: set = set()


def _announce(task: Task, reason: str, fallback: Task) -> None:
    """One line on stderr (once per process and task) saying that the fallback is loaded, and why."""
    what = fallback.description or f"dataset {fallback.dataset.name} {fallback.dataset.kwargs}"
    line = f"kasrl: task {task.name}: {reason.split(';')[0]}; loading its fallback instead (task.fallback): {what}"
    if line not in _ANNOUNCED:
        _ANNOUNCED.add(line)
        print(line, file=sys.stderr, flush=True)


def task_from_dict(data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, check_paths: bool = True) -> Task:
    """Build and validate a task from plain data.

    Args:
        data: the task's sections, as in a task YAML file (either layout).
        overrides: values to set first: dotted keys (``{"recipe.lr": 0.1}``, a ``task.`` prefix
            allowed) or nested mappings (``{"recipe": {"lr": 0.1}}``).
        check_paths: check that the dataset's files are there; when they are absent and the
            task has a ``fallback``, load that instead (announced in one line on stderr).
            Workers rebuilding a task they were sent pass False: they use the task as given.

    Raises:
        ConfigError: naming the dotted key of an unknown key or a bad value.
        DatasetError: naming the key and the folder when the files are missing (and there is no fallback).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a task must be a mapping of sections, got {data!r} ({type(data).__name__})")
    data = _target_names(_legacy_fallback(dict(data)))
    data = deep_merge(data, _target_names(nest(overrides or {}, drop_prefix="task.")))
    if "name" not in data:
        raise ConfigError("missing key `task.name`")
    task = build(Task, data, "task")
    if task.fallback is None or task.fallback_active:
        if check_paths and not task.fallback_active:
            reason = dataset_missing(task.dataset)
            if reason:
                raise DatasetError(reason)
        return task
    fallback = _fallback_task(task)  # checked at load even when the files are there
    if check_paths:
        reason = dataset_missing(task.dataset)
        if reason:
            _announce(task, reason, fallback)
            return fallback
    return task


def load_task(path_or_name: str | Path, overrides: Mapping[str, Any] | None = None, check_paths: bool = True) -> Task:
    """Load a task from a YAML file, or by bare name from ``configs/tasks/<name>.yaml``.

    ``name`` defaults to the file's stem. See :func:`task_from_dict` for the
    arguments and errors.
    """
    path = _resolve(path_or_name)
    try:
        data = yaml.load(path.read_text(), Loader=_StrictLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"task file {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    except ConfigError as e:
        raise ConfigError(f"task file {path}: {e}") from e
    if data is None:
        raise ConfigError(f"task file {path} is empty")
    if isinstance(data, dict):
        data.setdefault("name", path.stem)
    return task_from_dict(data, overrides, check_paths)


# ------------------------------------------------------------------ networks and placements


def task_input_shape(task: Task) -> tuple[int, int, int]:
    """``(C, H, W)`` of one training image (after any resize)."""
    info = dataset_info(task.dataset)
    return (info.in_channels, *info.image_size)


def build_task_network(task: Task) -> tuple[nn.Module, list[str]]:
    """Build the task's network, seeded by ``task.seed``, with placeholders in the selected convs.

    ``num_classes`` and ``in_channels`` come from the dataset when the factory takes
    them and ``network.kwargs`` does not set them. The global RNG is left untouched.
    Until filled, each placeholder computes the conv it replaced, so the model is the
    baseline network.

    Returns:
        The model and the dotted names of its placeholders, in module order.

    Raises:
        ConfigError: when the factory does not return an ``nn.Module``, or
            ``placeholders.select`` names a layer that is not a shape-preserving
            3x3 conv or selects nothing.
    """
    info = dataset_info(task.dataset)
    target = task.network.factory
    kwargs = with_supplied(target, dict(task.network.kwargs), info.num_classes, info.in_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(task.seed)
        model = target.obj(**kwargs)
    _check_module(target, model)
    select = task.placeholders.select
    needs_shapes = select != "all" and any(isinstance(e, Mapping) and "placements" in e for e in select)
    example = torch.zeros(1, info.in_channels, *info.image_size) if needs_shapes else None
    chosen = set(choose_layers(model, select, field="task.placeholders.select", network=task.network.name, example=example))
    names = replace_convs_with_placeholders(model, lambda name, conv: name in chosen)
    return model, names


def task_placements(task: Task, model: nn.Module) -> tuple[Placement, ...]:
    """Record every placeholder's ``(C, H, W)`` with one forward pass at the training resolution.

    Returns:
        The distinct placements, sorted.
    """
    param = next(model.parameters(), None)
    example = torch.zeros(1, *task_input_shape(task), device=param.device if param is not None else "cpu")
    return tuple(sorted(set(record_placements(model, example).values())))


def latency_placements(task: Task, search_placements: Sequence[Placement], model: nn.Module | None = None) -> tuple[Placement, ...]:
    """Where kernels are timed.

    ``latency.placements`` when given; else, when ``latency.resolution`` is
    set, the placements recorded at that resolution on a copy of ``model``;
    else ``search_placements``.

    Raises:
        ConfigError: when ``latency.resolution`` is set but no model is given.
    """
    spec = task.latency
    if spec.placements is not None:
        return parse_placements(",".join(spec.placements), field="task.latency.placements")
    if spec.resolution is None:
        return tuple(search_placements)
    if model is None:
        raise ConfigError("`task.latency.resolution` is set: pass the model to latency_placements to record placements there")
    c = task_input_shape(task)[0]
    probe = copy.deepcopy(model).cpu()  # recording overwrites the placeholders' placements
    try:
        found = record_placements(probe, torch.zeros(1, c, *spec.resolution))
    except (RuntimeError, KasrlError) as e:
        raise ConfigError(f"`task.latency.resolution` {list(spec.resolution)}: the network does not run at it ({e})") from e
    return tuple(sorted(set(found.values())))


#: Options that only CUDA has: dotted key -> (is it asked for?, what to use on the CPU instead).
_CUDA_ONLY = {
    "latency.dtype": (lambda t: t.latency.dtype == "fp16", "use 'bf16' or 'fp32' on the CPU"),
    "latency.cuda_graphs": (lambda t: t.latency.cuda_graphs, "set it to false on the CPU"),
    "recipe.autocast": (lambda t: t.recipe.autocast == "fp16", "use 'bf16' or null on the CPU"),
}


def check_device_options(task: Task, device: str | torch.device) -> None:
    """Refuse the task's CUDA-only options on a device that is not CUDA.

    Checked when the task loads with ``device: cpu``, and when a worker resolves
    ``auto`` (or is given a device) and gets the CPU.

    Raises:
        ConfigError: in one line naming the first such field.
    """
    kind = torch.device(device).type
    if kind == "cuda":
        return
    why = "`task.device` is 'cpu'" if task.device == "cpu" else f"the task runs on {kind} here (`task.device` is {task.device!r})"
    for key, (asked, instead) in _CUDA_ONLY.items():
        if asked(task):
            section, name = key.split(".")
            value = getattr(getattr(task, section), name)
            shown = "" if isinstance(value, bool) else f" {value!r}"
            raise ConfigError(f"`task.{key}`{shown} needs CUDA, but {why}; {instead}")


def resolve_device(task: Task) -> torch.device:
    """The device ``task.device`` names (``auto``: CUDA when available).

    Raises:
        ConfigError: when ``cuda`` is asked for and not available, or the
            device resolved has not got an option the task asks for
            (:func:`check_device_options`).
    """
    if task.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("`task.device` is 'cuda' but CUDA is not available here; use 'auto' or 'cpu'")
    if task.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(task.device)
    check_device_options(task, device)
    return device
