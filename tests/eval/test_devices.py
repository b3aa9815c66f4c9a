"""GPU plumbing checked without a GPU: device pinning, per-device locks, hardware fingerprints.

A fake CUDA module (``torch.cuda``'s functions monkeypatched) stands in for the
GPUs: these tests check what the code asks of CUDA, not what CUDA does. The
real CUDA paths are in ``test_cuda.py`` (skipped without a GPU).
"""

from __future__ import annotations

import multiprocessing as mp
import threading

import pytest
import torch

import kasrl.eval.runtime as runtime
from kasrl.eval.latency import describe_device, device_fingerprint, hardware_key
from kasrl.eval.locks import ComputeSlots, lock_path, physical_gpu, timing_lock
from kasrl.eval.runtime import TaskRuntime, pin_device
from kasrl.tasks import load_task


class FakeCuda:
    """What the tests ask of ``torch.cuda``: ``count`` GPUs named ``Fake GPU <i>``; ``calls`` records ``set_device``."""

    def __init__(self, count: int = 4) -> None:
        self.count = count
        self.current = 0
        self.calls: list = []

    def set_device(self, device) -> None:
        """Record the call and make ``device`` current."""
        index = device if isinstance(device, int) else torch.device(device).index
        self.calls.append(("set_device", index))
        self.current = index

    def install(self, monkeypatch) -> FakeCuda:
        """Put this fake in place of ``torch.cuda``'s functions (undone by ``monkeypatch``)."""
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "set_device", self.set_device)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: f"Fake GPU {0 if i is None else torch.device('cuda', i).index}")
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: (9, 0))
        monkeypatch.setattr(torch.version, "cuda", "12.4")
        return self


@pytest.fixture
def fake_cuda(monkeypatch):
    """Four fake GPUs, no ``CUDA_VISIBLE_DEVICES``, and lock files in a fresh folder."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return FakeCuda(4).install(monkeypatch)


@pytest.fixture
def lock_base(tmp_path, monkeypatch):
    """``KASRL_TIMING_LOCK`` in a fresh folder (the base of every lock file)."""
    base = str(tmp_path / "timing.lock")
    monkeypatch.setenv("KASRL_TIMING_LOCK", base)
    return base


# -- pinning ------------------------------------------------------------------------------------------
def test_pin_device_makes_the_gpu_current_and_names_its_index(fake_cuda):
    """pin_device calls set_device with the index and returns the device with it."""
    assert pin_device("cuda:2") == torch.device("cuda", 2)
    assert fake_cuda.calls == [("set_device", 2)]
    assert pin_device("cuda") == torch.device("cuda", 2)  # "cuda" alone: the current one, now explicit
    assert pin_device("cpu") == torch.device("cpu") and len(fake_cuda.calls) == 2  # a CPU is left alone


def test_the_spawned_child_pins_its_gpu_before_loading_the_task_and_says_which(fake_cuda, monkeypatch):
    """``_child_main`` run in this process (the fake CUDA does not cross a spawn): set_device(1) first, then the data."""
    from kasrl.eval.worker import _child_main

    loaded = runtime.load_dataset
    monkeypatch.setattr(runtime, "load_dataset", lambda spec: (fake_cuda.calls.append(("load", spec.name)), loaded(spec))[1])
    parent, child = mp.Pipe()
    parent.send(("stop", None))  # the child stops after saying it is ready
    _child_main(child, load_task("digits_cnn").to_dict(), None, None, "cuda:1")
    kind, device = parent.recv()
    assert kind == "ready"
    assert fake_cuda.calls == [("set_device", 1), ("load", "digits")]
    assert (device["device"], device["kind"], device["gpu"], device["gpu_id"]) == ("cuda:1", "cuda", "Fake GPU 1", "1")
    assert device["hardware"] == hardware_key(device)


def test_a_child_under_cuda_visible_devices_names_the_physical_gpu(fake_cuda, monkeypatch):
    """Torch's cuda:1 under CUDA_VISIBLE_DEVICES=5,7 is recorded as physical GPU 7."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    rt = TaskRuntime(load_task("digits_cnn"), device="cuda:1")
    assert fake_cuda.calls == [("set_device", 1)] and rt.device == torch.device("cuda", 1)
    assert (rt.hardware["gpu_id"], rt.hardware["cuda_visible_devices"]) == ("7", "5,7")


def test_a_ray_actor_pins_the_gpu_it_was_given(fake_cuda, monkeypatch):
    """Ray gives an actor one GPU through CUDA_VISIBLE_DEVICES: it is torch's cuda:0, physically GPU 3."""
    from kasrl.eval.ray_executor import _StageActor
    from kasrl.tasks import task_from_dict

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    task = task_from_dict(load_task("digits_cnn").to_dict(), overrides={"device": "cuda"})
    actor = _StageActor(task.to_dict(), (), None)
    info = actor.ready()
    assert not actor.fatal and fake_cuda.calls == [("set_device", 0)]
    assert (info["device"], info["gpu_id"], info["cuda_visible_devices"]) == ("cuda:0", "3", "3")


def test_pool_workers_are_given_one_gpu_each(fake_cuda):
    """make_evaluator's pool gives worker i the GPU i modulo their count."""
    from kasrl.experiment.run import _gpu_for

    assert [_gpu_for(i) for i in range(5)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0"]


# -- per-device locks ---------------------------------------------------------------------------------
def test_each_gpu_has_its_own_lock_file_and_the_cpu_the_machine_wide_one(fake_cuda, lock_base, monkeypatch):
    """Lock files: the base for the CPU, ``.cuda<physical index>`` per GPU."""
    assert lock_path() == lock_path(device="cpu") == lock_path(device=torch.device("cpu")) == lock_base
    assert lock_path(device="cuda:1") == lock_path(device=torch.device("cuda", 1)) == lock_base + ".cuda1"
    assert lock_path("/elsewhere/x.lock", "cuda:2") == "/elsewhere/x.lock.cuda2"  # an explicit base, as before
    fake_cuda.current = 2
    assert lock_path(device="cuda") == lock_base + ".cuda2"  # no index: the current device
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-1a2b/c")
    assert lock_path(device="cuda:0") == lock_base + ".cuda3"  # physical: what another process calls this card
    assert physical_gpu(1) == "GPU-1a2b_c" and physical_gpu(5) == "5"


def _waits(fn, seconds: float = 0.5) -> bool:
    """Whether ``fn`` (which takes a lock) is still waiting after ``seconds``; it is let through afterwards."""
    done = threading.Event()
    t = threading.Thread(target=lambda: (fn(), done.set()), daemon=True)
    t.start()
    waited = not done.wait(seconds)
    return waited


def _step(device) -> None:
    with ComputeSlots(device=device) as slots, slots.step():
        pass


def _time_on(device) -> None:
    with timing_lock(device=device):
        pass


def test_gpus_time_in_parallel_and_only_work_on_the_same_device_waits(fake_cuda, lock_base):
    """A GPU's timing stops only that GPU's work; CPU timing only CPU work."""
    with timing_lock(device="cuda:0"):  # a neighbour times on GPU 0
        assert not _waits(lambda: _time_on("cuda:1"))  # GPU 1 times at the same time
        assert not _waits(lambda: _step("cuda:1"))  # and trains
        assert not _waits(lambda: _step("cpu"))  # CPU-side work has its own lock
        assert not _waits(lambda: _time_on("cpu"))
        blocked_step = threading.Thread(target=_step, args=("cuda:0",), daemon=True)
        blocked_step.start()
        blocked_step.join(0.5)
        assert blocked_step.is_alive()  # a training step on GPU 0 waits for its timing
    blocked_step.join(10)
    assert not blocked_step.is_alive()  # and runs once it is over
    with timing_lock(device="cpu"):  # CPU timings keep the machine-wide lock
        assert _waits(lambda: _step("cpu"))
        assert not _waits(lambda: _step("cuda:0"))


def test_training_on_a_gpu_holds_that_gpus_lock(fake_cuda, lock_base, monkeypatch):
    """train_and_test takes its compute slots on the runtime's device (the fake GPU cannot train: only the slots are read)."""
    seen = []

    class Recording(ComputeSlots):
        def __init__(self, path=None, device=None) -> None:
            super().__init__(path, device)
            seen.append(self.path)

    monkeypatch.setattr(runtime, "ComputeSlots", Recording)
    rt = TaskRuntime(load_task("digits_cnn"))
    rt.device = torch.device("cuda", 2)
    with pytest.raises(Exception):  # noqa: B017 - moving the model to the fake GPU fails; the slots were taken first
        runtime.train_and_test(rt, rt.network(None))
    assert seen == [lock_base + ".cuda2"]


def test_the_latency_stage_times_under_its_devices_lock(monkeypatch, lock_base):
    """The latency stage takes the timing lock of the runtime's device."""
    import contextlib

    import kasrl.eval.stages as stages
    from kasrl.eval.latency import Timing
    from tests.eval.planted import ConvKernel

    devices = []

    @contextlib.contextmanager
    def recording_lock(path=None, device=None):
        devices.append(str(device))
        yield

    monkeypatch.setattr(stages, "timing_lock", recording_lock)
    monkeypatch.setattr(stages, "time_prepared", lambda pair, *a, **k: Timing(1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 5))
    rt = TaskRuntime(load_task("digits_cnn"))
    stages._stage_latency(rt, ConvKernel(), {})
    assert devices == ["cpu"]


# -- the hardware fingerprint -------------------------------------------------------------------------
def test_the_hardware_key_covers_what_changes_timings_and_not_which_index(fake_cuda, monkeypatch):
    """The key changes with model, dtype and threads, not with the GPU's index."""
    cpu = device_fingerprint("cpu", "fp32", 1)
    assert cpu["kind"] == "cpu" and cpu["name"] == cpu["cpu"] and cpu["hardware"] == device_fingerprint("cpu", "fp32", 1)["hardware"]
    assert device_fingerprint("cpu", "bf16", 1)["hardware"] != cpu["hardware"]  # dtype
    assert device_fingerprint("cpu", "fp32", 2)["hardware"] != cpu["hardware"]  # threads
    g0, g1 = device_fingerprint("cuda:0", "bf16", 1), device_fingerprint("cuda:1", "bf16", 1)
    assert g0["kind"] == "cuda" and (g0["gpu"], g0["capability"], g0["cuda"]) == ("Fake GPU 0", "9.0", "12.4")
    assert g0["hardware"] != g1["hardware"]  # the fake GPUs have different names
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "Fake H200")
    same0, same1 = device_fingerprint("cuda:0", "bf16", 1), device_fingerprint("cuda:1", "bf16", 1)
    assert same0["hardware"] == same1["hardware"] and same0["gpu_id"] != same1["gpu_id"]  # two of one model: one key
    assert "Fake H200 (cuda:1, GPU 1, CUDA 12.4" in describe_device(same1) and same1["hardware"] in describe_device(same1)
    assert describe_device({}) == "unknown (not recorded)"
    assert describe_device({"cpu": "Old CPU", "torch": "2.13.0", "threads": 1}).startswith("Old CPU (cpu) | torch 2.13.0")


def test_every_outcome_of_a_worker_records_its_device(digits):
    """Failures record the worker's device too, not only successes."""
    from kasrl.eval.stages import run_job

    rt = TaskRuntime(digits[0])
    failed = run_job(rt, "eval", {"planted": "tests.eval.planted:NaNKernel"})
    assert failed.status.label == "numerics_error" and failed.device == rt.hardware
    bad_load = run_job(rt, "eval", {"planted": "tests.eval.no_such_module:Kernel"})
    assert bad_load.status.label == "build_error" and bad_load.device == rt.hardware
