"""CUDA paths (CI has no GPU: these skip cleanly there)."""

from __future__ import annotations

import pytest
import torch

from kasrl.eval.latency import conv3x3, device_fingerprint, time_pair

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@cuda
def test_cuda_event_timing_of_a_kernel_against_the_conv():
    x = torch.randn(8, 64, 56, 56, device="cuda")
    conv = conv3x3(64).cuda()
    t = time_pair(conv3x3(64).cuda(), conv, x, repeats=5, warmup=2, time_s=0.2)
    assert 0.5 < t.speedup < 2.0  # the same layer against itself
    assert "gpu" in device_fingerprint("cuda")


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
