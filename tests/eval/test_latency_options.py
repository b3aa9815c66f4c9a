"""The task's latency options reach both sides of every timing alike (dtype, channels-last, compile, CUDA graphs).

Checked on the CPU by looking at what is timed: probe modules record how they
were called, and fakes stand in for ``torch.compile`` and CUDA-graph capture
(compiling for real is slow here, capture needs a GPU; ``test_cuda.py`` has the real ones).
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn as nn

import kasrl.eval.latency as latency
import kasrl.eval.stages as stages
from kasrl.eval.latency import Autocast, CompileError, Timing, TimingOptions, conv3x3, prepare_pair, time_pair, time_prepared
from kasrl.eval.runtime import TaskRuntime
from kasrl.eval.stages import classify
from kasrl.store.records import Status
from kasrl.tasks import load_task, task_from_dict
from tests.eval.planted import ConvKernel


class Probe(nn.Module):
    """A 3x3 conv that records, at each call, how it ran: autocast and its dtype, memory formats, the output dtype."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.conv = conv3x3(c)
        self.seen: list = []

    def forward(self, x):
        """The convolution, recording how it was called."""
        kind = x.device.type
        y = self.conv(x)
        on = torch.is_autocast_enabled(kind)
        self.seen.append({"autocast": torch.get_autocast_dtype(kind) if on else None, "input_cl": _channels_last(x),
                          "weight_cl": _channels_last(self.conv.weight), "out": y.dtype})
        return y


def _channels_last(t: torch.Tensor) -> bool:
    """Stored channels-last: the channel stride is 1 (where one channel or one pixel makes both layouts the same, either)."""
    same = t.shape[1] == 1 or t.shape[2] * t.shape[3] == 1
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and (same or t.stride(1) == 1)


def _params_channels_last(m: nn.Module) -> bool:
    weights = [p for p in m.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1]
    return bool(weights) and all(_channels_last(p) for p in weights)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dtype_and_channels_last_reach_both_sides_alike(dtype, channels_last):
    """Each side runs under the same autocast dtype and memory format."""
    k, b = Probe(), Probe()
    t = time_pair(k, b, torch.randn(2, 4, 8, 8), repeats=5, warmup=1, time_s=0.0, block_s=0.0,
                  options=TimingOptions(dtype, channels_last))
    want = {"autocast": {"fp32": None, "bf16": torch.bfloat16}[dtype], "input_cl": channels_last, "weight_cl": channels_last,
            "out": {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]}
    assert k.seen and b.seen and t.calls[0] > 0
    assert all(s == want for s in k.seen) and all(s == want for s in b.seen)


def test_the_prepared_pair_shows_what_is_timed():
    """The prepared pair exposes the wrapped modules and the converted input."""
    k, b = Probe(), Probe()
    pair = prepare_pair(k, b, torch.randn(2, 4, 8, 8), TimingOptions("bf16", True))
    assert _channels_last(pair.x) and not pair.on_cuda and pair.compile_s == (0.0, 0.0)
    for m, inner in ((pair.kernel_module, k), (pair.baseline_module, b)):
        assert isinstance(m, Autocast) and m.inner is inner and m.dtype == torch.bfloat16 and m.device_type == "cpu"
        assert _params_channels_last(m) and not m.training
    pair.kernel()
    pair.baseline()
    assert k.seen == b.seen


def test_fp32_leaves_both_sides_as_they_are():
    """Without options nothing is wrapped or converted."""
    k, b = Probe(), Probe()
    pair = prepare_pair(k, b, torch.randn(2, 4, 8, 8))
    assert pair.kernel_module is k and pair.baseline_module is b and pair.options == TimingOptions()


@pytest.fixture
def fake_compile(monkeypatch):
    """``torch.compile`` replaced: records what it is given; a compiled module's first call takes 0.2 s ("compiling")."""
    compiled: list = []

    def compile_module(module):
        compiled.append(module)
        first = [True]

        def run(x):
            if first[0]:
                first[0] = False
                time.sleep(0.2)
            return module(x)

        return run

    monkeypatch.setattr(latency, "compile_module", compile_module)
    return compiled


def test_compile_compiles_both_sides_and_keeps_compiling_out_of_the_timing(fake_compile):
    """Both sides are compiled; the compiling first call is measured apart."""
    k, b = Probe(), Probe()
    pair = prepare_pair(k, b, torch.randn(2, 4, 8, 8), TimingOptions("bf16", compile=True))
    assert [type(m) for m in fake_compile] == [Autocast, Autocast]  # what is compiled is the side as it runs
    assert fake_compile[0].inner is k and fake_compile[1].inner is b
    assert min(pair.compile_s) >= 0.2  # the first call, measured on each side
    t = time_prepared(pair, repeats=5, warmup=1, time_s=0.0, block_s=0.0)
    assert t.kernel_ms < 100 and t.baseline_ms < 100  # the 0.2 s of compiling are not in the timing
    assert len(k.seen) == len(b.seen) > 5 and k.seen[0]["autocast"] == torch.bfloat16


def test_a_kernel_that_does_not_compile_is_a_build_error_and_a_baseline_a_crash(monkeypatch):
    """Which side failed to compile decides the status."""
    def compile_module(module):
        if isinstance(module, Probe) and module.conv.in_channels == 3:  # "the kernel"
            raise RuntimeError("backend compiler failed\nwith a traceback")
        return module

    monkeypatch.setattr(latency, "compile_module", compile_module)
    with pytest.raises(CompileError) as e:
        prepare_pair(Probe(3), Probe(4), torch.randn(2, 3, 8, 8), TimingOptions(compile=True))
    assert e.value.side == "kernel"
    assert classify("latency", e.value) == (Status.BUILD_ERROR, "latency: CompileError: torch.compile failed on the kernel: "
                                                                "RuntimeError: backend compiler failed")
    with pytest.raises(CompileError) as e:
        prepare_pair(Probe(4), Probe(3), torch.randn(2, 4, 8, 8), TimingOptions(compile=True))
    assert e.value.side == "baseline" and classify("latency", e.value)[0] == Status.CRASH


def test_a_compile_error_on_the_first_call_is_the_compilers_too(monkeypatch):
    """torch.compile compiles lazily: a failing first call is a CompileError."""
    def compile_module(module):
        def run(x):
            raise TypeError("cannot trace this")
        return run

    monkeypatch.setattr(latency, "compile_module", compile_module)
    with pytest.raises(CompileError, match="torch.compile failed on the kernel: TypeError: cannot trace this"):
        prepare_pair(Probe(), Probe(), torch.randn(2, 4, 8, 8), TimingOptions(compile=True))


def test_cuda_graphs_capture_both_sides(monkeypatch):
    """With cuda_graphs both sides are captured and timed as replays."""
    captured = []

    def capture_graph(run, warmup=3):
        captured.append(run)
        return lambda: ("replay", run())

    monkeypatch.setattr(latency, "capture_graph", capture_graph)
    k, b = Probe(), Probe()
    pair = prepare_pair(k, b, torch.randn(2, 4, 8, 8), TimingOptions("bf16", cuda_graphs=True))
    assert len(captured) == 2 and pair.kernel()[0] == pair.baseline()[0] == "replay"
    assert k.seen == b.seen and len(k.seen) == 1
    assert not pair.kernel_module.cache_enabled and not pair.baseline_module.cache_enabled  # autocast's cache stays out of a graph


# -- the latency stage applies the task's options to every pair it times ---------------------------------
def _task(**latency_options):
    overrides = {"timeouts.build_s": 5, "timeouts.latency_s": 20, "latency.repeats": 3, "latency.warmup": 1, "latency.time_s": 0.0,
                 "latency.max_time_s": 0.0}
    overrides.update({f"latency.{k}": v for k, v in latency_options.items()})
    return task_from_dict(load_task("digits_cnn").to_dict(), overrides=overrides)


def test_the_latency_stage_gives_every_pair_the_tasks_options(monkeypatch, fake_compile, tmp_path):
    """Every placement pair and the network pair get the task's options."""
    monkeypatch.setenv("KASRL_TIMING_LOCK", str(tmp_path / "timing.lock"))
    timed = []
    monkeypatch.setattr(stages, "time_prepared", lambda pair, *a, **k: timed.append(pair) or Timing(1.0, 2.0, 2.0, 0.0, 0.0, 0.0, 5))
    rt = TaskRuntime(_task(dtype="bf16", channels_last=True, compile=True))
    reports, metrics = [], {}
    stages._stage_latency(rt, ConvKernel(), metrics, reports.append)
    assert reports == ["compile", "timing_queue", "latency"]  # compiling is reported (its own limit) before the queue
    assert len(timed) == len(rt.timed_placements) + 1  # each placement, then the network
    for pair in timed:
        assert pair.options == TimingOptions("bf16", True, True, False)
        for m in (pair.kernel_module, pair.baseline_module):
            assert isinstance(m, Autocast) and m.dtype == torch.bfloat16 and _params_channels_last(m)
        assert _channels_last(pair.x) and min(pair.compile_s) >= 0.2
    assert len(fake_compile) == 2 * len(timed)  # both sides of every pair
    assert metrics["compile_s"] >= 0.2 * len(timed) and metrics["baseline_compile_s"] >= 0.2 * len(timed)
    assert metrics["speedup"] == 2.0


def test_a_kernel_that_does_not_compile_fails_typed_and_the_search_goes_on(monkeypatch, tmp_path):
    """A compile failure is a build_error with its penalty; the evaluator goes on."""
    from kasrl.eval.measured import MeasuredEvaluator

    monkeypatch.setenv("KASRL_TIMING_LOCK", str(tmp_path / "timing.lock"))
    broken = [True]

    def compile_module(module):
        if broken[0] and any(type(m).__name__ == "_Conv" for m in module.modules()):  # the planted kernel, alone or in the network
            raise RuntimeError("Inductor cannot lower this kernel")
        return module

    monkeypatch.setattr(latency, "compile_module", compile_module)
    ev = MeasuredEvaluator(_task(compile=True), isolation="inline", skip=("accuracy",))
    failed = ev.evaluate(ConvKernel())
    assert failed.status == Status.BUILD_ERROR and failed.reward == ev.task.reward.penalties.build_error
    assert failed.cause.startswith("latency: CompileError: torch.compile failed on the kernel: RuntimeError: Inductor cannot lower")
    assert failed.device["hardware"]  # a failure records where it ran too
    broken[0] = False
    ok = ev.evaluate(ConvKernel())
    assert ok.status.is_ok() and "compile_s" in ok.metrics and ok.metrics["speedup"] > 0


def test_training_runs_under_the_recipes_autocast(quick_task, tmp_path, monkeypatch):
    """recipe.autocast: training steps and the test run under autocast."""
    from kasrl.eval.runtime import train_and_test

    monkeypatch.setenv("KASRL_TIMING_LOCK", str(tmp_path / "timing.lock"))
    task = task_from_dict(quick_task.to_dict(), overrides={"recipe.autocast": "bf16", "dataset.train_size": 200})
    rt = TaskRuntime(task)
    model = rt.network(None)
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append((m.training, torch.is_autocast_enabled("cpu"), out.dtype)))
    out = train_and_test(rt, model)
    assert 0 <= out.accuracy <= 100 and out.steps > 0
    assert (True, True, torch.bfloat16) in seen and (False, True, torch.bfloat16) in seen  # training steps and the test
