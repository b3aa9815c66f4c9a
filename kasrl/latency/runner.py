"""Run one node of a kernel on its own, and time callables interleaved.

A node is lowered by its primitive's own :meth:`~kasrl.ir.primitives.Primitive.emit`
(the very line the kernel's ``forward`` runs, see :mod:`kasrl.codegen.source`)
with every size written as an integer literal, applied to contiguous random
inputs of its real shapes and to weights of the shapes the module gives them.

:func:`time_interleaved` times several callables in rounds (a short block of
each, round after round) and reads each one's speed at a low quantile of its
per-call times, like :func:`kasrl.eval.latency.time_pair`: the host's slow
periods hit every callable alike, and the quiet periods decide the speed.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from kasrl.codegen.source import _HELPERS
from kasrl.ir.graph import KernelGraph, Node
from kasrl.ir.sizes import symbol_values

__all__ = ["node_callable", "time_interleaved"]

#: Calls shorter than this get an untimed call at the start of each block (as in :func:`kasrl.eval.latency.time_pair`).
_WARM_CALL_BELOW_S = 0.01

_NAMESPACE: dict = {}


def _namespace() -> dict:
    """``torch``, ``F`` and the generated source's helpers (``_shift``, ``_contract``, ``_softmax``)."""
    if not _NAMESPACE:
        ns: dict = {"torch": torch, "F": F}
        exec("".join(_HELPERS.values()), ns)  # noqa: S102 - the project's own helper source
        _NAMESPACE.update(ns)
    return _NAMESPACE


def _int(value) -> int:
    if value.denominator != 1 or value < 1:
        raise ValueError(f"size {value} is not a positive integer")
    return int(value)


def node_callable(graph: KernelGraph, node: Node, c: int, h: int, w: int, batch: int, device: str = "cpu",
                  dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None) -> Callable[[], torch.Tensor]:
    """A no-argument callable that computes ``node`` alone at placement ``(c, h, w)``.

    Inputs are contiguous ``randn`` tensors ``[batch, G, C, KH, KW, H, W]`` of the
    node's input shapes; weights have the shapes the kernel module gives them
    (uniform in ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``, or ones).

    Raises:
        ValueError: when the graph has no solved sizes or a size is not an integer here.
    """
    if graph.sizes is None:
        raise ValueError("the kernel has no solved sizes")
    values = symbol_values(graph.sizes, c, h, w)

    def sz(m) -> str:
        return str(_int(m.evaluate(values)))

    shapes = [graph.nodes[i].shape for i in node.inputs]
    env = dict(_namespace())
    env["n"] = batch
    names = []
    for j, s in enumerate(shapes):
        dims = [batch] + [_int(m.evaluate(values)) for m in s]
        env[f"a{j}"] = torch.randn(*dims, generator=generator, dtype=dtype).to(device)
        names.append(f"a{j}")
    wmap = {}
    for wt in node.prim.weights(shapes, node.shape):
        dims = [_int(d.evaluate(values)) for d in wt.dims]
        if wt.init == "ones":
            t = torch.ones(*dims, dtype=dtype)
        else:
            bound = float(wt.fan_in.evaluate(values)) ** -0.5
            t = (torch.rand(*dims, generator=generator, dtype=dtype) * 2 - 1) * bound
        env[f"w_{wt.name}"] = torch.nn.Parameter(t.to(device), requires_grad=False)
        wmap[wt.name] = f"w_{wt.name}"
    expr = node.prim.emit(names, shapes, node.shape, wmap, sz)
    return eval(compile(f"lambda: {expr}", f"<kasrl-node-{node.prim.label()}>", "eval"), env)  # noqa: S307 - emitted by our primitives


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def time_interleaved(fns: Sequence[Callable[[], object]], time_s: float = 0.1, rounds: int = 3, block_s: float = 2e-3,
                     quantile: float = 0.01, device: str = "cpu", max_calls: int = 5000) -> list:
    """Each callable's speed (seconds per call), timed in interleaved rounds.

    One untimed call of each first; then rounds of a block of calls of each
    callable in turn (a block lasts about ``block_s``, at least one call, and
    starts with an untimed call when a call is shorter than 10 ms), until
    ``rounds`` rounds are done and ``time_s`` has passed, or a callable has had
    ``max_calls`` calls. A callable's speed is the ``quantile`` of its per-call
    times (the garbage collector is off while timing).
    """
    clock = time.perf_counter
    cuda = device.startswith("cuda")
    first = []
    for fn in fns:
        _sync(device)
        t = clock()
        fn()
        _sync(device)
        first.append(clock() - t)
    per_block = [max(1, min(50, int(block_s / max(t, 1e-7)))) for t in first]
    warm = [t < _WARM_CALL_BELOW_S for t in first]
    times: list = [[] for _ in fns]
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        done = 0
        while True:
            for fn, k, w, out in zip(fns, per_block, warm, times, strict=True):
                if w:  # untimed: refill the caches the other callables' blocks evicted (as time_pair does)
                    fn()
                for _ in range(k):
                    if cuda:
                        _sync(device)
                    t = clock()
                    fn()
                    if cuda:
                        _sync(device)
                    out.append(clock() - t)
            done += 1
            if done >= rounds and (clock() - start >= time_s or max(len(t) for t in times) >= max_calls):
                break
    finally:
        if gc_was_on:
            gc.enable()
    out = []
    for ts in times:
        ts.sort()
        k = (len(ts) - 1) * quantile
        lo = int(k)
        hi = min(lo + 1, len(ts) - 1)
        out.append(ts[lo] + (ts[hi] - ts[lo]) * (k - lo))
    return out
