"""Placeholders: where kernels go inside any ``nn.Module``, and :func:`apply`, which puts one there for good.

Which layers: ``select`` is ``"all"`` (every shape-preserving 3x3 convolution:
stride 1, C in = C out, groups 1, dilation 1, same padding) or a list whose
entries are unioned:

* a dotted module name (``stage1.0.conv``) or an ``fnmatch`` pattern of one
  (``layer*.conv2``, ``layer[34].*``): a name must be such a conv; a pattern
  takes the ones among what it matches;
* a shape filter, a mapping ``{channels: [64, 128]}`` (the conv's channel
  counts) and/or ``{placements: [64x56x56]}`` (the ``CxHxW`` its input has);
  both keys in one mapping must both hold.

A name or filter that selects nothing is an error, in one line.

>>> import torch, torch.nn as nn
>>> net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1))
>>> replace_convs_with_placeholders(net)
['0']
>>> record_placements(net, torch.zeros(1, 8, 10, 12))
{'0': Placement(c=8, h=10, w=12)}
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from kasrl.codegen.module import build_module
from kasrl.errors import ConfigError, KasrlError
from kasrl.ir.graph import KernelGraph
from kasrl.solver.budget import Budget, Placement, parse_placements

__all__ = ["Placeholder", "replace_convs_with_placeholders", "record_placements", "fill_placeholders", "placeholders", "apply",
           "parse_select", "choose_layers", "why_not_replaceable", "fit_kernel", "sizes_problem", "as_kernel"]

log = logging.getLogger(__name__)


class Placeholder(nn.Module):
    """Marks where a kernel goes.

    Until a kernel is put in, it computes what the layer it replaced computed
    (``original``), so the network is still the baseline. ``placement`` is the
    ``(C, H, W)`` recorded by :func:`record_placements`.
    """

    def __init__(self, channels: int, original: nn.Module | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.original = original
        self.kernel: nn.Module | None = None
        self.placement: Placement | None = None
        self._recording = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel's output when one is in, else the replaced layer's (recording the placement when asked)."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise KasrlError(f"placeholder expects [N, {self.channels}, H, W] input, got {list(x.shape)}")
        if self._recording:
            self.placement = Placement(int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
        if self.kernel is not None:
            return self.kernel(x)
        if self.original is not None:
            return self.original(x)
        return x

    def extra_repr(self) -> str:
        """Channels, placement and what it computes now, for ``print(model)``."""
        filled = "kernel" if self.kernel is not None else ("original" if self.original is not None else "identity")
        return f"channels={self.channels}, placement={self.placement}, computes={filled}"


def _is_replaceable_conv(m: nn.Module) -> bool:
    return not why_not_replaceable(m)


def why_not_replaceable(m: nn.Module) -> str:
    """Why ``m`` is not a shape-preserving 3x3 convolution ("" when it is)."""
    if not isinstance(m, nn.Conv2d):
        return f"a {type(m).__name__}, not a Conv2d"
    checks = (
        (m.kernel_size == (3, 3), f"kernel {m.kernel_size[0]}x{m.kernel_size[1]}"),
        (m.stride == (1, 1), f"stride {m.stride[0] if m.stride[0] == m.stride[1] else m.stride}"),
        (m.in_channels == m.out_channels, f"C in {m.in_channels} != C out {m.out_channels}"),
        (m.groups == 1, f"groups {m.groups}"),
        (m.dilation == (1, 1), f"dilation {m.dilation[0] if m.dilation[0] == m.dilation[1] else m.dilation}"),
        (m.padding in ((1, 1), "same"), f"padding {m.padding}"),
        (m.padding_mode == "zeros", f"padding_mode {m.padding_mode!r}"),
    )
    return next((why for ok, why in checks if not ok), "")


def replace_convs_with_placeholders(model: nn.Module, predicate: Callable[[str, nn.Module], bool] | None = None) -> list:
    """Swap shape-preserving 3x3 convolutions (stride 1, C in = C out) for placeholders.

    Args:
        model: any module; changed in place.
        predicate: optional ``(name, conv) -> bool`` to choose among them.

    Returns:
        The dotted names of the replaced layers, in module order.
    """
    names = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if _is_replaceable_conv(child) and (predicate is None or predicate(full, child)):
                setattr(module, child_name, Placeholder(child.in_channels, child))
                names.append(full)
    return names


def placeholders(model: nn.Module) -> dict:
    """Dotted name -> :class:`Placeholder`, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Placeholder)}


@torch.no_grad()
def record_placements(model: nn.Module, example: torch.Tensor) -> dict:
    """Run one forward pass and return each placeholder's ``(C, H, W)``.

    Raises:
        KasrlError: when the model has no placeholder or one is never reached.
    """
    phs = placeholders(model)
    if not phs:
        raise KasrlError("the model has no placeholder; call replace_convs_with_placeholders first")
    was_training = model.training
    model.eval()
    for p in phs.values():
        p._recording = True
    try:
        model(example)
    finally:
        for p in phs.values():
            p._recording = False
        model.train(was_training)
    missing = [n for n, p in phs.items() if p.placement is None]
    if missing:
        raise KasrlError(f"placeholder {missing[0]} was not reached by the forward pass")
    return {n: p.placement for n, p in phs.items()}


def fill_placeholders(model: nn.Module, build: Callable[[Placement], nn.Module] | KernelGraph) -> int:
    """Put a kernel, built for each placeholder's placement, into every placeholder.

    Args:
        model: a model with recorded placements.
        build: a solved :class:`~kasrl.ir.graph.KernelGraph`, or any
            ``placement -> nn.Module`` function.

    Returns:
        The number of placeholders filled.

    Raises:
        KasrlError: when placements were not recorded yet.
    """
    if isinstance(build, KernelGraph):
        graph = build
        build = lambda p: build_module(graph, p.c, p.h, p.w)  # noqa: E731
    phs = placeholders(model)
    for name, p in phs.items():
        if p.placement is None:
            raise KasrlError(f"placeholder {name} has no placement; call record_placements first")
        p.kernel = build(p.placement)
    return len(phs)


# ------------------------------------------------------------------ choosing layers

_WILDCARDS = frozenset("*?[")


def parse_select(select: Any, field: str = "select") -> str | tuple:
    """``select`` checked and in canonical form.

    ``"all"``, or a tuple of name patterns (strings) and shape filters (dicts with tuple values).

    Raises:
        ConfigError: naming ``field`` (and the entry) when it is malformed.
    """
    if select == "all":
        return "all"
    if isinstance(select, str):
        select = [select]
    if not isinstance(select, Sequence) or isinstance(select, (bytes, bytearray)) or not select:
        raise ConfigError(f"`{field}` must be 'all' or a non-empty list of layer-name patterns and shape filters, got {select!r}")
    out: list = []
    for i, entry in enumerate(select):
        where = f"{field}[{i}]"
        if isinstance(entry, str) and entry.strip():
            out.append(entry.strip())
            continue
        if not isinstance(entry, Mapping) or not entry or set(entry) - {"channels", "placements"}:
            raise ConfigError(f"`{where}` must be a layer name such as 'layer1.0.conv2', a pattern such as 'layer*.conv2', or a "
                              f"shape filter such as {{channels: [64, 128]}} or {{placements: [64x56x56]}}, got {entry!r}")
        spec: dict = {}
        if "channels" in entry:
            channels = entry["channels"] if isinstance(entry["channels"], (list, tuple)) else [entry["channels"]]
            if not channels or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in channels):
                raise ConfigError(f"`{where}.channels` must be a list of positive integers, got {entry['channels']!r}")
            spec["channels"] = tuple(channels)
        if "placements" in entry:
            raw = entry["placements"]
            text = raw if isinstance(raw, str) else ",".join(str(p) for p in raw) if isinstance(raw, (list, tuple)) else ""
            spec["placements"] = tuple(str(p) for p in parse_placements(text, field=f"{where}.placements"))
        out.append(spec)
    return tuple(out)


def _describe_filter(spec: Mapping) -> str:
    return "{" + ", ".join(f"{k}: [{', '.join(map(str, v))}]" for k, v in spec.items()) + "}"


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def conv_placements(model: nn.Module, example: torch.Tensor) -> dict:
    """Dotted name -> :class:`Placement` of every shape-preserving 3x3 conv, from one forward pass (``model`` is left as it was)."""
    names = replace_convs_with_placeholders(model)
    try:
        found = record_placements(model, example) if names else {}
    finally:
        for name in names:
            _set_child(model, name, model.get_submodule(name).original)
    return {n: found[n] for n in names}


def choose_layers(model: nn.Module, select: Any = "all", *, field: str = "select", network: str | None = None,
                  example: torch.Tensor | None = None, shapes_later: bool = False) -> list:
    """The dotted names of the shape-preserving 3x3 convs ``select`` chooses, in module order.

    Args:
        model: any module (left unchanged).
        select: see the module docstring.
        field: the dotted key named in errors (``task.placeholders.select``).
        network: the model's name in errors (default its class name).
        example: an input batch; needed for ``placements`` filters.
        shapes_later: skip ``placements`` filters when there is no ``example`` (a check
            before the input shape is known) instead of failing.

    Raises:
        ConfigError: in one line, naming the entry, when a named layer is not such a conv,
            or an entry selects nothing.
    """
    select = parse_select(select, field)
    network = network or type(model).__name__
    modules = {n: m for n, m in model.named_modules() if n}
    replaceable = [n for n, m in modules.items() if not why_not_replaceable(m)]
    listed = f"replaceable: {', '.join(replaceable) or 'none'}"
    if select == "all":
        return replaceable
    chosen: set = set()
    places: dict | None = None
    for i, entry in enumerate(select):
        if isinstance(entry, str) and _WILDCARDS & set(entry):
            matched = [n for n in modules if fnmatch.fnmatchcase(n, entry)]
            hits = [n for n in matched if n in replaceable]
            if not hits:
                detail = f" ({matched[0]}: {why_not_replaceable(modules[matched[0]])})" if matched else ""
                raise ConfigError(f"`{field}`: {entry!r} matches no shape-preserving 3x3 conv of {network!r}{detail}; {listed}")
        elif isinstance(entry, str):
            if entry not in modules:
                close = difflib.get_close_matches(entry, replaceable or list(modules), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"`{field}`: {entry!r} is not a layer of {network!r}{hint}; {listed}")
            why = why_not_replaceable(modules[entry])
            if why:
                raise ConfigError(f"`{field}`: {entry!r} is not a shape-preserving 3x3 conv of {network!r} ({why}); {listed}")
            hits = [entry]
        else:
            hits = list(replaceable)
            if "channels" in entry:
                hits = [n for n in hits if modules[n].in_channels in entry["channels"]]
            if "placements" in entry:
                if example is None:
                    if shapes_later:
                        continue
                    raise ConfigError(f"`{field}[{i}]`: a placements filter needs the input shape (pass an example input)")
                places = places if places is not None else conv_placements(model, example)
                hits = [n for n in hits if str(places[n]) in entry["placements"]]
            if not hits:
                have = sorted({modules[n].in_channels for n in replaceable})
                seen = f"; they have channels {', '.join(map(str, have))}" if replaceable else ""
                if places is not None:
                    seen += f" and placements {', '.join(sorted({str(p) for p in places.values()}))}"
                raise ConfigError(f"`{field}[{i}]`: {_describe_filter(entry)} matches no shape-preserving 3x3 conv of {network!r}"
                                  f"{seen if replaceable else '; it has none'}")
        chosen.update(hits)
    return [n for n in replaceable if n in chosen]


# ------------------------------------------------------------------ sizes for other placements


def as_kernel(kernel: Any) -> KernelGraph:
    """A solved kernel from a :class:`KernelGraph`, a kernel JSON file's path, its text or its parsed document.

    Raises:
        KasrlError: for anything else, or a document that does not load.
    """
    from kasrl.ir.serialize import from_document, load_kernel, loads

    if isinstance(kernel, KernelGraph):
        return kernel
    if isinstance(kernel, Mapping):
        return from_document(dict(kernel))
    if isinstance(kernel, str) and kernel.lstrip().startswith("{"):
        return loads(kernel, "kernel text")
    if isinstance(kernel, (str, os.PathLike)):
        return load_kernel(Path(kernel))
    raise KasrlError(f"`kernel` must be a KernelGraph, a kernel JSON file, its text or its document, got {type(kernel).__name__}")


def sizes_problem(graph: KernelGraph, placements: Sequence[Placement], budget: Budget | None = None) -> str:
    """Why the kernel's stored sizes do not fit ``placements`` ("" when they do).

    They fit when every size and every dimension is a positive integer, every
    identified pair of sizes is equal, and (with a ``budget``) every tensor, the
    FLOPs and the parameters stay within it, at every placement.
    """
    from kasrl.ir.dims import symbol_name
    from kasrl.ir.graph import poly_terms
    from kasrl.ir.sizes import evaluate

    sizes = graph.sizes
    if sizes is None:
        return "it has no solved sizes"
    con = graph.constraints
    for p in placements:
        for s, choice in sorted(sizes.items()):
            v = choice.exact_value(p.c)
            if v.denominator != 1 or v < 1:
                return f"size {symbol_name(s)} = {choice} is {v} at {p}, not a positive integer"
        for m in sorted(con.integral):
            v = evaluate(m, sizes, p.c, p.h, p.w)
            if v.denominator != 1 or v < 1:
                return f"{m} is {v} at {p}, not a positive integer"
        for m in sorted(con.equal):
            if evaluate(m, sizes, p.c, p.h, p.w) != 1:
                return f"{m} must be 1 at {p}"
        if budget is None:
            continue
        lim = budget.limits(p)
        for m in sorted(con.volume):
            v = evaluate(m, sizes, p.c, p.h, p.w)
            if v > lim.volume:
                return f"a tensor of {v} elements exceeds the cap of {lim.volume} at {p}"
        flops = sum(evaluate(m, sizes, p.c, p.h, p.w) for m in poly_terms(con.flops))
        if flops > lim.flops:
            return f"{flops} FLOPs exceed the budget's {lim.flops} at {p}"
        params = sum(evaluate(m, sizes, p.c, p.h, p.w) for m in poly_terms(con.params))
        if params > lim.params:
            return f"{params} parameters exceed the budget's {lim.params} at {p}"
    return ""


def fit_kernel(graph: KernelGraph, placements: Sequence[Placement], budget: Budget | None = None) -> tuple[KernelGraph, str]:
    """The kernel with sizes that fit ``placements``: itself when its stored sizes do, else a copy re-solved there.

    Re-solving keeps the symbolic kernel (its graph) and only chooses new free sizes
    (:class:`~kasrl.solver.solve.SizeSolver`, filling ``budget``; default
    :class:`~kasrl.solver.budget.Budget`: a 3x3 conv's FLOPs and parameters). A
    latency budget is not checked here (it needs the search's latency model).

    Returns:
        ``(kernel, note)``: ``note`` is "" when nothing changed, else one line saying what was re-solved and why.

    Raises:
        SolverInfeasible: when no legal sizes exist at these placements (its message says why).
    """
    from kasrl.ir.dims import symbol_name
    from kasrl.solver.solve import SizeSolver

    placements = tuple(dict.fromkeys(Placement(*p) for p in placements))
    if budget is not None and budget.latency is not None:
        budget = dataclasses.replace(budget, latency=None)
    why = sizes_problem(graph, placements, budget)
    if not why:
        return graph, ""
    fitted = graph.copy()
    SizeSolver(placements, budget or Budget()).solve(fitted)

    def text(sizes: Mapping | None) -> str:
        return ", ".join(f"{symbol_name(s)}={c}" for s, c in sorted(sizes.items())) if sizes else "none"

    where = ", ".join(str(p) for p in placements)
    return fitted, f"re-solved the kernel's free sizes for {where} ({why}): {text(graph.sizes)} -> {text(fitted.sizes)}"


# ------------------------------------------------------------------ apply


def apply(model: nn.Module, kernel: Any, select: Any = "all", *, input_shape: Sequence[int] | None = None,
          example: torch.Tensor | None = None, budget: Budget | None = None) -> nn.Module:
    """Put a kernel into ``model`` in place of its shape-preserving 3x3 convolutions.

    Each chosen conv is replaced by the kernel built for the ``(C, H, W)`` its input
    has, as a plain ``nn.Module`` (fresh weights: train or fine-tune the model
    afterwards). When the kernel's stored sizes do not fit those placements, its free
    sizes are re-solved there first (:func:`fit_kernel`; logged at INFO).

    Args:
        model: your network; changed in place (apply to a copy to keep the original).
        kernel: a solved :class:`~kasrl.ir.graph.KernelGraph`, or a kernel JSON file's path or text.
        select: which convs (see the module docstring; default every shape-preserving 3x3 conv).
        input_shape: ``(C, H, W)`` of one input image, to find each conv's placement.
        example: an input batch instead of ``input_shape``.
        budget: what the kernel may cost per placement when sizes are re-solved (and the
            stored sizes checked against); default a 3x3 conv's FLOPs and parameters.

    Returns:
        ``model``, with the kernel in the chosen places.

    Raises:
        ConfigError: when ``select`` chooses nothing or names a layer that is not such a conv.
        SolverInfeasible: when the kernel has no legal sizes at the chosen placements.
        KasrlError: when neither ``input_shape`` nor ``example`` is given, or the kernel does not load.
    """
    graph = as_kernel(kernel)
    param = next(model.parameters(), None)
    if example is None:
        if input_shape is None:
            raise KasrlError("kasrl.apply needs the input's shape to build the kernel for each layer's (C, H, W): "
                             "pass input_shape=(C, H, W) or example=<an input batch>")
        example = torch.zeros(1, *input_shape, device=param.device if param is not None else "cpu",
                              dtype=param.dtype if param is not None else torch.float32)
    names = choose_layers(model, select, field="select", example=example)
    places = conv_placements(model, example)
    wanted = {n: places[n] for n in names}
    graph, note = fit_kernel(graph, sorted(set(wanted.values())), budget)
    if note:
        log.info("kasrl.apply: %s", note)
    for name, p in wanted.items():
        conv = model.get_submodule(name)
        module = build_module(graph, p.c, p.h, p.w).to(device=conv.weight.device, dtype=conv.weight.dtype)
        _set_child(model, name, module)
    return model
