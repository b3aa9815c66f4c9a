"""A task loaded once per process: data, networks, placements and training.

Loading data and recording placements take seconds; an evaluation worker keeps
one :class:`TaskRuntime` and evaluates many kernels with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from kasrl.errors import KasrlError
from kasrl.eval.locks import ComputeSlots
from kasrl.placeholders import fill_placeholders, placeholders
from kasrl.solver.budget import Placement
from kasrl.tasks import (
    Task,
    build_task_network,
    check_device_options,
    latency_placements,
    load_dataset,
    resolve_device,
    task_input_shape,
    task_placements,
)

__all__ = ["TaskRuntime", "TrainOutcome", "NumericsError", "StageTimeout", "train_and_test", "pin_device"]


def pin_device(device: str | torch.device) -> torch.device:
    """Make ``device`` this process's current device, and return it with its index.

    On CUDA, ``torch.cuda.set_device``: CUDA events, ``torch.cuda.synchronize()``
    and new streams act on the *current* device, so a worker given ``cuda:1`` that
    did not pin it would time cuda:0's (idle) stream and measure host dispatch.
    ``"cuda"`` alone becomes the current device (the first one visible: under Ray,
    the GPU ``CUDA_VISIBLE_DEVICES`` gave the actor). Other devices are returned as they are.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return device
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


class NumericsError(KasrlError):
    """Raised when a loss, output or gradient stops being finite."""


class StageTimeout(KasrlError):
    """Raised when a stage runs past its time limit (checked between steps)."""


@dataclass(frozen=True)
class TrainOutcome:
    """Result of the proxy training recipe.

    Attributes:
        accuracy: held-out accuracy in percent.
        final_loss: running training loss at the end.
        seconds: wall time of training and testing.
        steps: optimiser steps taken.
        pruned: why training stopped early ("" when it ran to the end).
    """

    accuracy: float
    final_loss: float
    seconds: float
    steps: int
    pruned: str = ""


class TaskRuntime:
    """Everything an evaluation needs from a task, loaded once.

    Attributes:
        task: the task config.
        device: the resolved torch device.
        data: the dataset splits (tensors).
        placements: every placement a kernel must be legal at (search + latency).
        search_placements: where the placeholders are in the network.
        timed_placements: where kernel-level latency is measured.
        placeholder_names: the network's placeholder layers.
        hardware: the device fingerprint every outcome of this worker records
            (:func:`kasrl.eval.latency.device_fingerprint`; computed once).

    Args:
        task: the task, its name, YAML path or plain dict.
        device: run here instead of the task's device (e.g. ``"cuda:1"``: one GPU
            per worker). The device is pinned (:func:`pin_device`) before anything
            else touches it.

    Raises:
        ConfigError: when the device is not available, or lacks an option the
            task asks for (fp16, CUDA graphs: CUDA only).
    """

    def __init__(self, task: Task | str | dict, device: str | torch.device | None = None) -> None:
        from kasrl.eval.latency import device_fingerprint
        from kasrl.tasks import load_task, task_from_dict

        if isinstance(task, str):
            task = load_task(task)
        elif isinstance(task, dict):  # sent by the driver, fallback already decided: use it as given, never switch here
            task = task_from_dict(task, check_paths=False)
        self.task = task
        if device is None:
            device = resolve_device(self.task)
        else:
            check_device_options(self.task, device)
        self.device = pin_device(device)
        self.hardware = device_fingerprint(self.device, self.task.latency.dtype, self.task.latency.threads)
        self.data = load_dataset(self.task.dataset)
        model, self.placeholder_names = build_task_network(self.task)
        self.search_placements = task_placements(self.task, model)
        self.timed_placements = latency_placements(self.task, self.search_placements, model)
        self.placements = tuple(dict.fromkeys(tuple(self.search_placements) + tuple(self.timed_placements)))
        self.budget = self.task.budget
        self.input_shape = task_input_shape(self.task)

    def network(self, build: Callable[[Placement], nn.Module] | None = None, seed: int | None = None) -> nn.Module:
        """A fresh task network with a kernel from ``build`` in every placeholder (the baseline when None).

        The same seed (default the task's) gives the same initial weights.
        """
        task = self.task if seed is None else dataclasses.replace(self.task, seed=seed)
        torch.manual_seed(task.seed)
        model, _ = build_task_network(task)
        if build is not None:
            from kasrl.placeholders import record_placements

            record_placements(model, torch.zeros(1, *self.input_shape))
            fill_placeholders(model, build)
        return model

    def latency_input(self) -> torch.Tensor:
        """The network input at the task's latency batch and resolution."""
        c, h, w = self.input_shape
        if self.task.latency.resolution is not None:
            h, w = self.task.latency.resolution
        g = torch.Generator().manual_seed(0)
        return torch.randn(self.task.latency.batch, c, h, w, generator=g).to(self.device)

    def n_placeholders(self, model: nn.Module) -> int:
        """Number of placeholder layers in ``model``."""
        return len(placeholders(model))


def _optimizer(params, recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def training_threads() -> int:
    """Threads for training: every core when OpenMP waits passively, else one.

    Two spin-waiting OpenMP threads next to a busy neighbour ran 15x slower on
    these 2-core machines (40 s against 2.6 s for one epoch); the evaluation
    worker starts with ``OMP_WAIT_POLICY=PASSIVE`` and may use both cores.
    """
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        return os.cpu_count() or 1
    return 1


def _schedule(opt: torch.optim.Optimizer, recipe, total: int):
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total)
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    return None


def _in_memory(split) -> tuple | None:
    """``(images, labels)`` of an in-memory split (a plain ``TensorDataset``, or a pair of tensors), else None."""
    if type(split) is TensorDataset:
        return split.tensors[0], split.tensors[1]
    if isinstance(split, tuple) and len(split) == 2 and all(isinstance(t, torch.Tensor) for t in split):
        return split
    return None


def _train_batches(split, batch_size: int, gen: torch.Generator, workers: int) -> Iterator[tuple]:
    """Training batches without end, epoch after epoch, in an order drawn from ``gen``.

    In-memory tensors are indexed by a fresh ``randperm`` each epoch (the fast path,
    drawn exactly as before DataLoaders were supported); any other dataset goes
    through a ``DataLoader`` shuffled by the same generator (its workers seeded from it).
    """
    tensors = _in_memory(split)
    if tensors is not None:
        x, y = tensors
        n = len(x)
        while True:
            order = torch.randperm(n, generator=gen)
            for pos in range(math.ceil(n / batch_size)):
                idx = order[pos * batch_size : (pos + 1) * batch_size]
                yield x[idx], y[idx]
    loader = DataLoader(split, batch_size=batch_size, shuffle=True, generator=gen, num_workers=workers)
    while True:
        for batch in loader:
            yield batch[0], batch[1]


def _test_batches(split, batch_size: int, workers: int) -> Iterator[tuple]:
    tensors = _in_memory(split)
    if tensors is not None:
        x, y = tensors
        for i in range(0, len(x), batch_size):
            yield x[i : i + batch_size], y[i : i + batch_size]
        return
    for batch in DataLoader(split, batch_size=batch_size, shuffle=False, num_workers=workers):
        yield batch[0], batch[1]


def _autocast(recipe, device: torch.device):
    """The recipe's autocast context on ``device`` (a no-op without a recipe or its ``autocast``)."""
    if recipe is None or recipe.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[recipe.autocast])


@torch.no_grad()
def _accuracy(model: nn.Module, split, device: torch.device, batch: int, slots: ComputeSlots, recipe=None) -> float:
    model.eval()
    correct = total = 0
    for x, y in _test_batches(split, batch, recipe.num_workers if recipe is not None else 0):
        with slots.step(), _autocast(recipe, device):
            out = model(x.to(device))
        if not torch.isfinite(out).all():
            raise NumericsError("the network's test outputs are not finite")
        correct += (out.argmax(1).cpu() == torch.as_tensor(y)).sum().item()
        total += len(y)
    return 100.0 * correct / max(total, 1)


def train_and_test(runtime: TaskRuntime, model: nn.Module, time_limit: float | None = None, threads: int | None = None,
                   fraction: float = 1.0, seed: int | None = None) -> TrainOutcome:
    """Train ``model`` with the task's recipe, then test it.

    ``fraction`` < 1 trains for that fraction of the recipe's steps (the learning-rate
    schedule compressed to fit: a short run of the same recipe, the ladder's short
    rung); ``seed`` orders the data (default the task's seed). In-memory tensors are
    indexed directly; any other dataset (augmenting, larger than memory) is read
    through a ``DataLoader`` shuffled by the same seeded generator, with
    ``recipe.num_workers`` worker processes.

    Runs under ``torch.autocast`` when the recipe asks (``recipe.autocast``; fp16
    with a gradient scaler). Each step holds the device's timing lock shared
    (:class:`~kasrl.eval.locks.ComputeSlots`): on a GPU that GPU's lock, on the CPU
    the machine-wide one. Stops early (``pruned``) when the running loss is above a milestone
    ``(fraction of training, max loss)``.

    Raises:
        NumericsError: on a non-finite loss.
        StageTimeout: past ``time_limit`` seconds (or the recipe's own limit).
    """
    task = runtime.task
    recipe = task.recipe
    device = runtime.device
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads or training_threads())
    limit = min(x for x in (time_limit, recipe.max_train_seconds, math.inf) if x is not None)
    start = time.perf_counter()
    slots = ComputeSlots(device=device)  # each step holds the device's timing lock shared: a neighbour's timing never overlaps it
    batches = None
    try:
        model.to(device).train()
        opt = _optimizer(model.parameters(), recipe)
        scaler = torch.amp.GradScaler(device.type) if recipe.autocast == "fp16" else None  # fp16 gradients underflow unscaled
        n = len(runtime.data.train[0]) if isinstance(runtime.data.train, tuple) else len(runtime.data.train)
        per_epoch = math.ceil(n / recipe.batch_size)
        total = max(1, int(round(recipe.epochs * per_epoch * fraction)))
        milestones = sorted((int(f * total), loss) for f, loss in recipe.loss_milestones)
        schedule = _schedule(opt, recipe, total)
        gen = torch.Generator().manual_seed(task.seed if seed is None else seed)
        batches = _train_batches(runtime.data.train, recipe.batch_size, gen, recipe.num_workers)
        running = None
        pruned = ""
        step = 0
        for step in range(total):
            xb, yb = next(batches)
            xb, yb = xb.to(device), torch.as_tensor(yb).to(device)
            with slots.step():
                with _autocast(recipe, device):
                    loss = F.cross_entropy(model(xb), yb)
                if not torch.isfinite(loss):
                    raise NumericsError(f"the training loss is {loss.item()} at step {step}")
                opt.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    opt.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(opt)  # skipped when a gradient overflowed, then the scale is lowered
                    scaler.update()
                if schedule is not None:
                    schedule.step()
                v = loss.item()
            running = v if running is None else 0.9 * running + 0.1 * v
            while milestones and step + 1 >= milestones[0][0]:
                at, max_loss = milestones.pop(0)
                if running > max_loss:
                    pruned = f"loss {running:.3f} above the milestone {max_loss} at step {at} of {total}"
            if pruned:
                break
            if time.perf_counter() - start - slots.waited > limit:  # waiting for a neighbour's timing does not count
                raise StageTimeout(f"training passed its limit of {limit:.0f} s at step {step + 1} of {total}")
        batches.close()  # DataLoader workers, if any, end here
        acc = _accuracy(model, runtime.data.test, device, max(recipe.batch_size, 256), slots, recipe)
        return TrainOutcome(acc, float(running or 0.0), time.perf_counter() - start, step + 1, pruned)
    finally:
        if batches is not None:
            batches.close()
        slots.close()
        torch.set_num_threads(old_threads)
