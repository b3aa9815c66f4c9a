"""In-process ``nn.Module`` for a kernel, compiled from its generated source.

Like ``torch.fx.GraphModule.recompile``, the source is registered with
:mod:`linecache` so tracebacks show the generated lines. The source is built
only from validated primitives and integers, never from text in a document.
"""

from __future__ import annotations

import hashlib
import linecache
from collections.abc import Mapping

import torch.nn as nn

from kasrl.codegen.source import kernel_source
from kasrl.ir.graph import KernelGraph
from kasrl.ir.sizes import SizeChoice

__all__ = ["kernel_class", "build_module"]

_CLASS_CACHE: dict = {}


def kernel_class(graph: KernelGraph, sizes: Mapping[int, SizeChoice] | None = None) -> type:
    """The ``Kernel`` class of a finished kernel (cached by its source)."""
    src = kernel_source(graph, sizes)
    key = hashlib.sha256(src.encode()).hexdigest()[:16]
    cls = _CLASS_CACHE.get(key)
    if cls is None:
        filename = f"<kasrl-kernel-{key}>"
        linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
        namespace: dict = {"__name__": f"kasrl_kernel_{key}"}
        exec(compile(src, filename, "exec"), namespace)  # noqa: S102 - our own generated code
        cls = namespace["Kernel"]
        cls.source = src
        _CLASS_CACHE[key] = cls
    return cls


def build_module(graph: KernelGraph, c: int, h: int, w: int, sizes: Mapping[int, SizeChoice] | None = None) -> nn.Module:
    """Instantiate the kernel for placement ``(c, h, w)``.

    Raises:
        ValueError: when a size is not an integer at this placement.
    """
    return kernel_class(graph, sizes)(c, h, w)
