"""CUDA paths (CI has no GPU: these skip cleanly there)."""

from __future__ import annotations

import pytest
import torch

from kasrl.eval.latency import TimingOptions, conv3x3, device_fingerprint, prepare_pair, time_pair, time_prepared

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@cuda
def test_cuda_event_timing_of_a_kernel_against_the_conv():
    x = torch.randn(8, 64, 56, 56, device="cuda")
    conv = conv3x3(64).cuda()
    t = time_pair(conv3x3(64).cuda(), conv, x, repeats=5, warmup=2, time_s=0.2)
    assert 0.5 < t.speedup < 2.0  # the same layer against itself
    fp = device_fingerprint("cuda")
    assert "gpu" in fp and fp["kind"] == "cuda" and fp["cuda"] and fp["hardware"]


@cuda
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("graphs", [False, True])
def test_cuda_timing_as_deployed(dtype, graphs):
    """CUDA-event timing in fp32 and bf16, with and without CUDA graphs."""
    x = torch.randn(8, 64, 32, 32, device="cuda")
    t = time_pair(conv3x3(64).cuda(), conv3x3(64).cuda(), x, repeats=5, warmup=3, time_s=0.2,
                  options=TimingOptions(dtype, channels_last=True, cuda_graphs=graphs))
    assert 0.5 < t.speedup < 2.0 and t.kernel_ms > 0


@cuda
def test_torch_compile_on_the_gpu_is_kept_out_of_the_timing():
    """A real torch.compile: its time is reported, not timed."""
    pair = prepare_pair(conv3x3(32), conv3x3(32), torch.randn(8, 32, 16, 16, device="cuda"), TimingOptions("bf16", compile=True))
    t = time_prepared(pair, repeats=5, warmup=3, time_s=0.2)
    assert min(pair.compile_s) > 0 and t.kernel_ms < 1000 * min(pair.compile_s)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_worker_given_the_second_gpu_makes_it_current():
    """A runtime given cuda:1 makes it the current device."""
    from kasrl.eval.runtime import TaskRuntime
    from kasrl.tasks import load_task

    rt = TaskRuntime(load_task("digits_cnn"), device="cuda:1")
    assert torch.cuda.current_device() == 1 and rt.hardware["device"] == "cuda:1"


@cuda
def test_training_on_the_gpu():
    from kasrl.eval.runtime import TaskRuntime, train_and_test
    from kasrl.tasks import load_task, task_from_dict

    task = task_from_dict(load_task("digits_cnn").to_dict(), overrides={"device": "cuda"})
    rt = TaskRuntime(task)
    out = train_and_test(rt, rt.network(None))
    assert out.accuracy > 50


def test_device_auto_falls_back_to_cpu_without_cuda():
    from kasrl.tasks import load_task, resolve_device, task_from_dict

    task = task_from_dict(load_task("digits_cnn").to_dict(), overrides={"device": "auto"})
    assert resolve_device(task).type == ("cuda" if torch.cuda.is_available() else "cpu")
