"""Latency measurement: a kernel against the layer it replaces, interleaved.

Rules (docs/architecture.md, section 7), all applied here:

* both sides are timed **in the same process, interleaved** (a block of kernel
  calls, a block of baseline calls, ...) so a noisy neighbour hits both alike;
* warm-up first; every call is timed on its own, the spread (IQR / median) is
  recorded; ratios are what we report, never single absolute times;
* single-threaded (``torch.set_num_threads(1)``) unless told otherwise;
* glibc's allocator pinned: ``MALLOC_MMAP_THRESHOLD_`` and
  ``MALLOC_TRIM_THRESHOLD_`` must be set before the process starts (else large
  blocks are returned to the OS and page-faulted back on every call, which
  swung a 3x3 convolution between 4 and 10 ms here). :func:`pinned_env` gives
  that environment for a child process, :func:`ensure_pinned` re-executes the
  current script with it;
* on CUDA, CUDA events around each call, on the device the worker pinned
  (``torch.cuda.set_device``: events and ``synchronize`` act on the current device);
* both sides as deployed, identically (:class:`TimingOptions`, the task's
  ``latency`` section): under ``torch.autocast`` at ``dtype``, channels-last
  input and weights, through ``torch.compile`` (compiling on the first call, kept
  out of the timing and reported), or captured in CUDA graphs and replayed.
  :func:`prepare_pair` readies both sides, :func:`time_prepared` times them;
  :func:`time_pair` does both.

**Which statistic.** On these shared 2-core machines the noise is the host, not
the process: a pure-Python loop's per-call time swings between 1x and 2x in
periods of ~0.1-1 s, whatever the other core does, and slows the kernel and the
convolution by different factors (memory- vs compute-bound). The median of
block times therefore moved 7-19% from one measurement of a kernel to the next
(5 measurements, IQR / median), at any number of repeats we could afford. Noise
only ever adds time, so the speed of a layer is its time in the machine's
quiet periods: a low quantile (default the 1st percentile) of its per-call
times, pooled over the whole interleaved run, which lasts ``time_s`` so that it
spans several quiet periods. Measured the same way, that ratio moved 2-5%
(``python bench/evaluate.py`` prints it).
The median per-call times are kept beside it; ``speedup_spread`` is the
spread of the same estimate made on each fifth of the run (a conservative
stand-in for the full run's repeatability: each fifth has fewer calls).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn

from kasrl.errors import KasrlError
from kasrl.eval.locks import cuda_index, physical_gpu

__all__ = [
    "MALLOC_ENV",
    "pinned_env",
    "allocator_pinned",
    "ensure_pinned",
    "device_fingerprint",
    "hardware_key",
    "describe_device",
    "HARDWARE_FIELDS",
    "Timing",
    "TimingOptions",
    "Autocast",
    "CompileError",
    "PreparedPair",
    "prepare_pair",
    "time_prepared",
    "time_pair",
    "compile_module",
    "capture_graph",
    "conv3x3",
]

#: Environment that stops glibc from returning large blocks to the OS.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 31), "OMP_WAIT_POLICY": "PASSIVE"}


def pinned_env(base: dict | None = None) -> dict:
    """A copy of the environment with the allocator pinned (for child processes)."""
    env = dict(os.environ if base is None else base)
    env.update(MALLOC_ENV)
    return env


def allocator_pinned() -> bool:
    """True when this process started with the allocator thresholds set."""
    return all(os.environ.get(k) == v for k, v in MALLOC_ENV.items() if k.startswith("MALLOC"))


def ensure_pinned() -> None:
    """Re-execute the running script with the allocator pinned, unless it already is."""
    if not allocator_pinned():
        os.execve(sys.executable, [sys.executable] + sys.argv, pinned_env())


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str:
    """The NVIDIA kernel driver's version ("" when there is none to read)."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            found = re.search(r"Kernel Module\s+(\S+)", f.read())
            if found:
                return found.group(1)
    except OSError:
        pass
    try:
        import pynvml  # nvidia-ml-py, where it is installed

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 - not installed, or no driver: the version is unknown
        return ""


#: The fields of a device fingerprint that decide whether two timings are comparable (its ``hardware`` key).
#: The host CPU counts on a GPU too: at small batch a GPU waits for the host to launch its kernels.
HARDWARE_FIELDS = ("kind", "name", "cpu", "gpu", "capability", "cuda", "driver", "torch", "dtype", "threads")


def hardware_key(fingerprint: dict) -> str:
    """A short digest of the fingerprint's :data:`HARDWARE_FIELDS`: results with another key were measured elsewhere."""
    text = json.dumps({k: fingerprint.get(k) for k in HARDWARE_FIELDS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def device_fingerprint(device: Any = "cpu", dtype: str = "fp32", threads: int | None = None) -> dict:
    """Where timings come from, as plain values, with its ``hardware`` key (:func:`hardware_key`).

    Args:
        device: the device timed on (``"cpu"``, ``"cuda:1"`` or a ``torch.device``).
        dtype: the task's ``latency.dtype``.
        threads: torch threads while timing (None: this process's current count).

    Returns:
        ``kind`` (cpu or cuda), ``device``, ``name`` (the GPU's name, else the
        CPU model), ``cpu``, ``torch``, ``dtype``, ``threads``,
        ``allocator_pinned``; on CUDA also ``gpu``, ``gpu_id`` (the physical
        GPU: its ``CUDA_VISIBLE_DEVICES`` entry), ``cuda_visible_devices``,
        ``capability``, ``cuda`` (the CUDA version torch was built with) and
        ``driver``; and ``hardware``.
    """
    cpu = _cpu_model()
    on_cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    out = {
        "kind": "cuda" if on_cuda else "cpu",
        "device": str(device),
        "name": cpu,
        "cpu": cpu,
        "torch": torch.__version__,
        "dtype": dtype,
        "threads": int(threads if threads is not None else torch.get_num_threads()),
        "allocator_pinned": allocator_pinned(),
    }
    if on_cuda:
        index = cuda_index(device)
        out["gpu"] = out["name"] = torch.cuda.get_device_name(index)
        out["gpu_id"] = physical_gpu(index)
        out["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        try:
            out["capability"] = ".".join(map(str, torch.cuda.get_device_capability(index)))
        except Exception:  # noqa: BLE001 - a device that cannot say; the name still tells it apart
            out["capability"] = ""
        out["cuda"] = torch.version.cuda or ""
        out["driver"] = _nvidia_driver()
    out["hardware"] = hardware_key(out)
    return out


def describe_device(fp: dict) -> str:
    """One line for people: what a fingerprint (:func:`device_fingerprint`, or an older one) says."""
    if not fp:
        return "unknown (not recorded)"
    if fp.get("gpu"):
        bits = [fp.get("device", "cuda"), f"GPU {fp.get('gpu_id', '?')}"]
        bits += [f"CUDA {fp['cuda']}"] if fp.get("cuda") else []
        bits += [f"driver {fp['driver']}"] if fp.get("driver") else []
        head = f"{fp['gpu']} ({', '.join(bits)}), host {fp.get('cpu', '?')}"
    else:
        head = f"{fp.get('cpu', '?')} ({fp.get('device', 'cpu')})"
    return (f"{head} | torch {fp.get('torch', '?')} | {fp.get('dtype', 'fp32')} | {fp.get('threads', '?')} threads | "
            f"hardware {fp.get('hardware') or 'unkeyed'}")


@dataclass(frozen=True)
class Timing:
    """Interleaved timing of a kernel against a baseline.

    Attributes:
        kernel_ms, baseline_ms: the ``quantile`` of each side's per-call times
            (milliseconds): its speed in the machine's quiet periods.
        speedup: ``baseline_ms / kernel_ms``.
        kernel_spread, baseline_spread: IQR / median of each side's per-call
            times (how noisy the machine was).
        speedup_spread: IQR / median of the speedup estimated on each fifth of
            the run (conservative: each fifth has a fifth of the calls).
        repeats: interleaved block pairs timed.
        kernel_median_ms, baseline_median_ms: median per-call times.
        calls: ``(kernel calls, baseline calls)`` timed.
        quantile: the quantile the speed is read at.
        seconds: how long the interleaved run lasted.
    """

    kernel_ms: float
    baseline_ms: float
    speedup: float
    kernel_spread: float
    baseline_spread: float
    speedup_spread: float
    repeats: int
    kernel_median_ms: float = 0.0
    baseline_median_ms: float = 0.0
    calls: tuple = (0, 0)
    quantile: float = 0.01
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """Plain dict (for metrics)."""
        return asdict(self)


def _iqr_over_median(xs: list) -> float:
    if len(xs) < 4:
        return 0.0
    q = statistics.quantiles(xs, n=4)
    med = statistics.median(xs)
    return (q[2] - q[0]) / med if med > 0 else 0.0


#: Slices a run is cut into to judge whether its estimate has settled.
_SLICES = 5
#: Calls shorter than this get an untimed call at the start of each block (cache refill); longer ones do not need it.
_WARM_CALL_BELOW_S = 0.01
#: Most calls in one block (a probe that read ~0 must not ask for millions).
_MAX_CALLS_PER_BLOCK = 1000
#: Shortest time a call is taken to last: CUDA events resolve ~0.5 us, and a ratio must never divide by 0.
_FLOOR_S = {"cpu": 1e-9, "cuda": 1e-6}


def _quantile(xs: list, q: float, floor: float = 1e-9) -> float:
    """The ``q`` quantile of ``xs`` (linear interpolation between order statistics), at least ``floor``."""
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return max(xs[lo] + (xs[hi] - xs[lo]) * (k - lo), floor)


def _cpu_block(fn: Callable[[], object], number: int, out: list, warm: bool = True) -> None:
    if warm:
        fn()  # untimed: brings back into cache what the other side's block evicted
    clock = time.perf_counter
    for _ in range(number):
        start = clock()
        fn()
        out.append(clock() - start)


def _cuda_block(fn: Callable[[], object], number: int, out: list, warm: bool = True) -> None:
    if warm:
        fn()  # untimed, as on the CPU
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(number)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    out.extend(start.elapsed_time(end) / 1000.0 for start, end in events)


def _block_plan(fn: Callable[[], object], block: Callable, block_s: float) -> tuple:
    """``(timed calls per block, warm-up call first?)`` so that one block lasts about ``block_s``."""
    probe: list = []
    block(fn, 3, probe)
    one = max(min(probe), 1e-7)
    return min(max(1, int(block_s / one)), _MAX_CALLS_PER_BLOCK), one < _WARM_CALL_BELOW_S


def _slice_speedups(ks: list, bs: list, pair_ends: list, q: float, floor: float = 1e-9, slices: int = _SLICES) -> list:
    """The speedup estimated on each of ``slices`` consecutive runs of block pairs ([] for fewer pairs)."""
    n = len(pair_ends)
    if n < slices:
        return []
    out = []
    for i in range(slices):
        a, b = i * n // slices, (i + 1) * n // slices
        k0, b0 = pair_ends[a - 1] if a else (0, 0)
        k1, b1 = pair_ends[b - 1]
        out.append(_quantile(bs[b0:b1], q, floor) / _quantile(ks[k0:k1], q, floor))
    return out


#: ``latency.dtype`` -> the dtype autocast runs at (``fp32``: no autocast).
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TimingOptions:
    """How both sides of a timing run: the task's ``latency`` options, applied identically to each.

    Attributes:
        dtype: ``fp32`` (no autocast), ``bf16`` or ``fp16`` (``torch.autocast`` on the device).
        channels_last: input and 4-d weights in the channels-last memory format.
        compile: both sides through :func:`compile_module` (``torch.compile``).
        cuda_graphs: both sides captured once (:func:`capture_graph`) and timed as replays.
    """

    dtype: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        if self.dtype != "fp32" and self.dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"`dtype` must be 'fp32', 'bf16' or 'fp16', got {self.dtype!r}")

    @classmethod
    def from_spec(cls, spec: Any) -> TimingOptions:
        """The options of a task's :class:`~kasrl.tasks.LatencySpec`."""
        return cls(spec.dtype, spec.channels_last, spec.compile, spec.cuda_graphs)


class Autocast(nn.Module):
    """``inner`` run under ``torch.autocast(device_type, dtype)``: a module, so ``torch.compile`` traces the autocast too.

    ``cache_enabled`` is off under CUDA-graph capture (the cast weights must not be
    cached outside the graph's memory).
    """

    def __init__(self, inner: nn.Module, device_type: str, dtype: torch.dtype, cache_enabled: bool = True) -> None:
        super().__init__()
        self.inner = inner
        self.device_type = device_type
        self.dtype = dtype
        self.cache_enabled = cache_enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``inner(x)`` under autocast."""
        with torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=self.cache_enabled):
            return self.inner(x)


class CompileError(KasrlError):
    """``torch.compile`` failed on one side of a timing (``side``: ``"kernel"`` or ``"baseline"``)."""

    def __init__(self, side: str, error: BaseException) -> None:
        lines = str(error).strip().splitlines()
        super().__init__(f"torch.compile failed on the {side}: {type(error).__name__}: {lines[0][:300] if lines else ''}")
        self.side = side


def compile_module(module: nn.Module) -> Callable:
    """``torch.compile(module)`` (one place, so tests can put a fake in)."""
    return torch.compile(module)


def capture_graph(run: Callable[[], object], warmup: int = 3) -> Callable[[], object]:
    """Capture one call of ``run`` in a CUDA graph; the returned callable replays it.

    ``run`` is warmed up on a side stream first (as capture requires); its output
    is kept alive with the graph, whose memory it lives in.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(warmup, 1)):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    torch.cuda.synchronize()

    def replay(graph=graph, out=out) -> object:
        graph.replay()
        return out

    return replay


@dataclass
class PreparedPair:
    """Both sides of a timing, ready to be called (see :func:`prepare_pair`).

    Attributes:
        kernel, baseline: one call of each side (no arguments).
        x: the input both sides are called on (channels-last when asked).
        kernel_module, baseline_module: the modules as they run (moved, converted
            and wrapped in :class:`Autocast`), before compiling or capture.
        options: what was applied.
        compile_s: seconds ``torch.compile`` took on each side, ``(kernel, baseline)``
            (its first call; 0 without ``compile``).
        on_cuda: whether the sides run on a GPU (timed with CUDA events).
    """

    kernel: Callable[[], object]
    baseline: Callable[[], object]
    x: torch.Tensor
    kernel_module: nn.Module
    baseline_module: nn.Module
    options: TimingOptions
    compile_s: tuple = (0.0, 0.0)
    on_cuda: bool = False


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


@torch.no_grad()
def prepare_pair(kernel: nn.Module, baseline: nn.Module, x: torch.Tensor, options: TimingOptions | None = None,
                 warmup: int = 3) -> PreparedPair:
    """Ready both sides of a timing with the same options, on ``x``'s device.

    Each side is moved to the device and set to eval mode; then, as
    ``options`` say and in this order: converted to channels-last (the input
    too), wrapped in :class:`Autocast`, compiled (its first call, which compiles,
    is timed here and kept out of the timing), captured in a CUDA graph.

    Raises:
        CompileError: when compiling (or the first compiled call) fails on a side.
    """
    opts = options or TimingOptions()
    device = x.device
    if opts.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    modules = []
    for m in (kernel, baseline):
        m = m.to(device).eval()
        if opts.channels_last:
            m = m.to(memory_format=torch.channels_last)
        if opts.dtype != "fp32":
            m = Autocast(m, device.type, AUTOCAST_DTYPES[opts.dtype], cache_enabled=not opts.cuda_graphs).eval()
        modules.append(m)
    calls: list = []
    compile_s: list = []
    for side, m in zip(("kernel", "baseline"), modules, strict=True):
        fn, seconds = m, 0.0
        if opts.compile:
            start = time.perf_counter()
            try:
                fn = compile_module(m)
                fn(x)  # torch.compile compiles on the first call
                _sync(x)
            except Exception as e:  # noqa: BLE001 - whatever the compiler raises, it is this side's failure to compile
                raise CompileError(side, e) from e
            seconds = time.perf_counter() - start
        calls.append(lambda fn=fn: fn(x))
        compile_s.append(seconds)
    if opts.cuda_graphs:
        calls = [capture_graph(c, warmup) for c in calls]
    return PreparedPair(calls[0], calls[1], x, modules[0], modules[1], opts, tuple(compile_s), x.is_cuda)


@torch.no_grad()
def time_prepared(pair: PreparedPair, repeats: int = 20, warmup: int = 3, time_s: float = 2.0, threads: int | None = 1,
                  block_s: float = 1e-3, quantile: float = 0.01, max_time_s: float | None = None, target_spread: float = 0.05) -> Timing:
    """Time a prepared pair's kernel against its baseline, interleaved block by block, every call on its own.

    Blocks alternate (kernel, baseline, kernel, ...) until at least ``repeats``
    pairs (and five, to judge the estimate) are done and ``time_s`` seconds have
    passed; then, while the speedup estimated on each fifth of the run still
    spreads more than ``target_spread`` (the host had no quiet period in some of
    them), until ``max_time_s``. A block of calls shorter than 10 ms starts with
    an untimed call: without it, a side whose block is a single call was timed
    with the caches the other side left behind (10% slower for a 3x3
    convolution at 32x14x14 here), and whether that happened depended on a
    probe's noise. The garbage collector is off while timing, as in ``timeit``.
    See the module docstring for why the speed is read at a low quantile of the
    per-call times.

    Args:
        pair: both sides (:func:`prepare_pair`); on a GPU, timed with CUDA events.
        repeats: at least this many interleaved block pairs.
        warmup: untimed calls of each side first.
        time_s: the interleaved run lasts at least this long (seconds).
        threads: torch intra-op threads while timing (None: leave as is).
        block_s: each side's block runs enough calls to last about this long.
        quantile: where in each side's per-call times its speed is read (0: the fastest call).
        max_time_s: how long an unsettled run may go on (default ``3 * time_s``; a run
            also goes on until it has ``repeats`` pairs, however long that takes).
        target_spread: the spread over the run's fifths at which an extended run stops.
    """
    if not 0.0 <= quantile <= 0.5:
        raise ValueError(f"`quantile` must be in [0, 0.5], got {quantile}")
    max_time_s = 3 * time_s if max_time_s is None else max(max_time_s, time_s)
    floor = _FLOOR_S["cuda" if pair.on_cuda else "cpu"]
    old_threads = torch.get_num_threads()
    gc_was_on = gc.isenabled()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        block = _cuda_block if pair.on_cuda else _cpu_block
        run_k, run_b = pair.kernel, pair.baseline
        for _ in range(warmup):
            run_k()
            run_b()
        if pair.on_cuda:
            torch.cuda.synchronize()
        (nk, warm_k), (nb, warm_b) = _block_plan(run_k, block, block_s), _block_plan(run_b, block, block_s)
        ks: list = []
        bs: list = []
        pair_ends: list = []
        min_pairs = max(repeats, _SLICES)
        gc.disable()
        start = time.perf_counter()
        check_at = start + time_s
        while True:
            block(run_k, nk, ks, warm_k)
            block(run_b, nb, bs, warm_b)
            pair_ends.append((len(ks), len(bs)))
            now = time.perf_counter()
            if len(pair_ends) < min_pairs or now < check_at:
                continue
            if now - start >= max_time_s or _iqr_over_median(_slice_speedups(ks, bs, pair_ends, quantile, floor)) <= target_spread:
                break
            check_at = now + 0.1 * time_s  # not settled yet: time on, look again shortly
        seconds = time.perf_counter() - start
    finally:
        if gc_was_on:
            gc.enable()
        torch.set_num_threads(old_threads)
    k_s, b_s = _quantile(ks, quantile, floor), _quantile(bs, quantile, floor)
    return Timing(
        kernel_ms=k_s * 1000,
        baseline_ms=b_s * 1000,
        speedup=b_s / k_s,
        kernel_spread=_iqr_over_median(ks),
        baseline_spread=_iqr_over_median(bs),
        speedup_spread=_iqr_over_median(_slice_speedups(ks, bs, pair_ends, quantile, floor)),
        repeats=len(pair_ends),
        kernel_median_ms=statistics.median(ks) * 1000,
        baseline_median_ms=statistics.median(bs) * 1000,
        calls=(len(ks), len(bs)),
        quantile=quantile,
        seconds=seconds,
    )


def time_pair(kernel: nn.Module, baseline: nn.Module, x: torch.Tensor, repeats: int = 20, warmup: int = 3,
              time_s: float = 2.0, threads: int | None = 1, block_s: float = 1e-3, quantile: float = 0.01,
              max_time_s: float | None = None, target_spread: float = 0.05, options: TimingOptions | None = None) -> Timing:
    """Time ``kernel(x)`` against ``baseline(x)``: :func:`prepare_pair` with ``options``, then :func:`time_prepared`.

    ``x`` is on the device to time on; see :func:`time_prepared` for the other arguments.
    """
    pair = prepare_pair(kernel, baseline, x, options, warmup)
    return time_prepared(pair, repeats, warmup, time_s, threads, block_s, quantile, max_time_s, target_spread)


def conv3x3(c: int) -> nn.Module:
    """The layer a kernel replaces: a 3x3, stride-1, same-padding convolution C -> C without bias."""
    return nn.Conv2d(c, c, 3, padding=1, bias=False)
