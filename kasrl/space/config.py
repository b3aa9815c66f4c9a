"""The search-space configuration and its action table.

The action table is a flat list, in this fixed order (so an action index means
the same thing in every process and every checkpoint made with the same
config)::

    0                         finish
    1 .. W                    fork branch i
    then, per unary template  (template, branch i) for i in 0..W-1
    then, per binary template (template, branch i, branch j) for i != j

where ``W`` is ``max_width``. Templates are enumerated from the config in the
order of :data:`FAMILIES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import NamedTuple

from kasrl.errors import ConfigError
from kasrl.ir.primitives import (
    _ACTIVATIONS,
    _BINARY,
    _CONTRACTIONS,
    _ELEMENTWISE,
    Activation,
    BatchedMatmul,
    Binary,
    Conv,
    Elementwise,
    Fold,
    Group,
    Mix,
    Primitive,
    Projection,
    Scale,
    Shift,
    Softmax,
    Unfold,
)
from kasrl.ir.shape import SLOTS

__all__ = ["SpaceConfig", "Action", "ActionTable", "FAMILIES"]

FAMILIES = (
    "projection",
    "conv",
    "mix",
    "scale",
    "unfold",
    "group",
    "shift",
    "fold",
    "softmax",
    "activation",
    "elementwise",
    "binary",
    "bmm",
    "fork",
)


@dataclass(frozen=True)
class SpaceConfig:
    """Which primitives exist and how large a kernel may grow.

    Attributes:
        kernel_sizes: window sizes of convolutions and unfolds (odd).
        dilations: dilations of convolutions and unfolds.
        shifts: shift distances (each used in both directions).
        families: enabled primitive families (see :data:`FAMILIES`).
        max_width: most branches open at once.
        max_steps: most actions (primitives and forks) an agent may take; the
            kernel is finished automatically at this cap.
        min_steps: fewest actions before finishing is allowed.
        allow_spatial_weights: let ``mix`` and ``scale`` learn weights over H or
            W (then weights depend on the resolution).
    """

    kernel_sizes: tuple = (3, 5, 7)
    dilations: tuple = (1, 2, 3)
    shifts: tuple = (1, 2, 3)
    families: tuple = FAMILIES
    max_width: int = 8
    max_steps: int = 25
    min_steps: int = 1
    allow_spatial_weights: bool = False

    def __post_init__(self) -> None:
        for name in ("kernel_sizes", "dilations", "shifts", "families"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for k in self.kernel_sizes:
            if not isinstance(k, int) or k < 3 or k % 2 == 0 or k > 15:
                raise ConfigError(f"`space.kernel_sizes` must hold odd integers in [3, 15], got {k!r}")
        for d in self.dilations:
            if not isinstance(d, int) or not 1 <= d <= 8:
                raise ConfigError(f"`space.dilations` must hold integers in [1, 8], got {d!r}")
        for s in self.shifts:
            if not isinstance(s, int) or not 1 <= s <= 16:
                raise ConfigError(f"`space.shifts` must hold integers in [1, 16], got {s!r}")
        for f in self.families:
            if f not in FAMILIES:
                raise ConfigError(f"`space.families`: unknown family {f!r}; known: {', '.join(FAMILIES)}")
        if not isinstance(self.max_width, int) or not 1 <= self.max_width <= 16:
            raise ConfigError(f"`space.max_width` must be an integer in [1, 16], got {self.max_width!r}")
        if not isinstance(self.max_steps, int) or not 1 <= self.max_steps <= 200:
            raise ConfigError(f"`space.max_steps` must be an integer in [1, 200], got {self.max_steps!r}")
        if not isinstance(self.min_steps, int) or not 1 <= self.min_steps <= self.max_steps:
            raise ConfigError(f"`space.min_steps` must be an integer in [1, max_steps={self.max_steps}], got {self.min_steps!r}")

    @classmethod
    def from_dict(cls, data: dict, prefix: str = "space") -> SpaceConfig:
        """Build from a mapping, naming an unknown key in the error."""
        known = {f.name for f in fields(cls)}
        for k in data:
            if k not in known:
                raise ConfigError(f"unknown key `{prefix}.{k}`; known keys: {', '.join(sorted(known))}")
        return cls(**data)

    def unary_templates(self) -> list:
        """Every unary template, in family order."""
        on = set(self.families)
        out: list = []
        if "projection" in on:
            out += [Projection(out=o, grouped=g) for o in ("C", "new") for g in (False, True)]
        if "conv" in on:
            for o in ("C", "new", "depthwise"):
                for k in self.kernel_sizes:
                    for kh, kw in ((k, k), (k, 1), (1, k)):
                        out += [Conv(kh=kh, kw=kw, dilation=d, out=o) for d in self.dilations]
        if "mix" in on:
            for slot in SLOTS:
                for o in ("same", "C", "new"):
                    if o == "C" and slot != "C":
                        continue
                    out.append(Mix(slot=slot, out=o))
        if "scale" in on:
            out += [Scale(slot=s) for s in SLOTS]
        if "unfold" in on:
            out += [Unfold(axes=a, k=k, dilation=d) for a in ("H", "W", "HW") for k in self.kernel_sizes for d in self.dilations]
        if "group" in on:
            out.append(Group())
        if "shift" in on:
            out += [Shift(axes=a, offset=s * sign) for a in ("H", "W") for s in self.shifts for sign in (1, -1)]
        if "fold" in on:
            out += [Fold(slot=s, mode=m) for s in SLOTS for m in ("mean", "max")]
        if "softmax" in on:
            out += [Softmax(slot=s) for s in SLOTS]
        if "activation" in on:
            out += [Activation(fn=f) for f in _ACTIVATIONS]
        if "elementwise" in on:
            out += [Elementwise(fn=f) for f in _ELEMENTWISE]
        return out

    def binary_templates(self) -> list:
        """Every binary template, in family order."""
        on = set(self.families)
        out: list = []
        if "binary" in on:
            out += [Binary(op=o) for o in _BINARY]
        if "bmm" in on:
            out += [BatchedMatmul(contract=c, softmax=s) for c in _CONTRACTIONS for s in (False, True)]
        return out


class Action(NamedTuple):
    """One entry of the action table.

    Attributes:
        kind: ``"finish"``, ``"fork"``, ``"unary"`` or ``"binary"``.
        prim: the primitive template (None for finish and fork).
        operands: branch indices the action reads.
    """

    kind: str
    prim: Primitive | None
    operands: tuple

    @property
    def family(self) -> str:
        """The primitive family (``"finish"`` / ``"fork"`` for those actions)."""
        return self.prim.family if self.prim is not None else self.kind

    def label(self) -> str:
        """``"unfold[HW,dilation=1,k=3](0)"``-style text."""
        if self.kind == "finish":
            return "finish"
        name = "fork" if self.kind == "fork" else self.prim.label()
        return f"{name}({', '.join(map(str, self.operands))})"


@dataclass
class ActionTable:
    """The flat action list of a :class:`SpaceConfig` (see the module docstring)."""

    config: SpaceConfig
    actions: list = field(init=False)
    unary: list = field(init=False)
    binary: list = field(init=False)

    def __post_init__(self) -> None:
        w = self.config.max_width
        self.unary = self.config.unary_templates()
        self.binary = self.config.binary_templates()
        acts = [Action("finish", None, ())]
        if "fork" in self.config.families:
            acts += [Action("fork", None, (i,)) for i in range(w)]
        self.fork_offset = 1
        self.unary_offset = len(acts)
        acts += [Action("unary", t, (i,)) for t in self.unary for i in range(w)]
        self.binary_offset = len(acts)
        self.pairs = [(i, j) for i in range(w) for j in range(w) if i != j]
        acts += [Action("binary", t, p) for t in self.binary for p in self.pairs]
        self.actions = acts
        self.index = {a: i for i, a in enumerate(acts)}
        self.template_index = {t: i for i, t in enumerate(self.unary)}
        self.template_index.update({t: i for i, t in enumerate(self.binary)})
        self.families = sorted({a.family for a in acts})

    def __len__(self) -> int:
        return len(self.actions)

    def __getitem__(self, i: int) -> Action:
        return self.actions[i]
