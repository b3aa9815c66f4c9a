"""The default task's fallback: loaded when Debian's Fashion-MNIST is absent, announced, visible, never mixed."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from kasrl.errors import DatasetError
from kasrl.tasks import data
from kasrl.tasks.task import TASKS_DIR, load_task, task_from_dict

#: The floor fashion_mnist_cnn.yaml documents for its fallback's baseline (92.5-97.8% over task seeds 0-9 when measured).
FALLBACK_FLOOR = 85.0


@pytest.fixture
def no_fashion(tmp_path, monkeypatch):
    """A machine without Debian's dataset-fashion-mnist."""
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    return tmp_path / "absent"


def test_without_the_files_the_default_task_is_its_fallback_and_says_so(no_fashion):
    task = load_task("fashion_mnist_cnn")
    assert task.fallback_active and task.name == "fashion_mnist_cnn"
    assert task.dataset.name == "digits" and task.dataset.kwargs == {"resize": [28, 28]}
    assert (task.dataset.train_size, task.dataset.test_size) == (None, None) and task.recipe.epochs == 2.0
    assert task.recipe.lr == 0.01 and task.network.kwargs == {"width": 32}  # what the fallback does not name stays
    real = load_task("fashion_mnist_cnn", check_paths=False)  # what the task is where the files are
    assert not real.fallback_active and real.dataset.name == "fashion_mnist"
    assert task.fingerprint != real.fingerprint  # results never mix


def test_the_fallback_task_round_trips_and_workers_use_it_as_given(no_fashion):
    from kasrl.eval.runtime import TaskRuntime

    task = load_task("fashion_mnist_cnn")
    again = task_from_dict(task.to_dict())
    assert again == task and again.fingerprint == task.fingerprint
    rt = TaskRuntime(task.to_dict())  # as a pool worker or a Ray actor receives it
    assert rt.task == task and rt.data.name == "digits" and len(rt.data.train) == 1438 and len(rt.data.test) == 359
    real = load_task("fashion_mnist_cnn", check_paths=False)
    with pytest.raises(DatasetError, match=re.escape("Fashion-MNIST not found")):
        TaskRuntime(real.to_dict())  # a worker never switches on its own: the driver decides


def test_a_wrong_explicit_path_is_an_error_not_a_fallback(no_fashion, tmp_path):
    with pytest.raises(DatasetError, match=re.escape(f"`task.dataset.kwargs.path`: folder {tmp_path / 'typo'} does not exist")):
        load_task("fashion_mnist_cnn", overrides={"dataset.kwargs.path": str(tmp_path / "typo")})


def test_a_task_file_in_the_older_layout_keeps_its_automatic_fallback(no_fashion, tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("network: {name: small_cnn, width: 8}\ndataset: {name: fashion_mnist, train_size: 4000, test_size: 100}\n")
    task = load_task(path)
    assert task.fallback_active and task.dataset.name == "digits"
    assert (task.dataset.train_size, task.dataset.test_size) == (1438, 100)  # capped at what digits has, as before


def test_with_the_files_the_fallback_is_only_carried_along():
    if data.dataset_missing(load_task("fashion_mnist_cnn", check_paths=False).dataset):
        pytest.skip("Debian's dataset-fashion-mnist is not installed here")
    task = load_task("fashion_mnist_cnn")
    assert not task.fallback_active and task.dataset.name == "fashion_mnist" and task.fallback["dataset"]["target"] == "digits"
    without = task_from_dict({**task.to_dict(), "fallback": None})
    assert without.fingerprint == task.fingerprint  # what would be loaded instead changes no result of this task


def test_the_fallback_is_announced_in_one_stderr_line(tmp_path):
    script = textwrap.dedent(f"""
        from pathlib import Path
        from kasrl.tasks import data, load_task
        data.DEBIAN_FASHION_MNIST = Path({str(tmp_path / "absent")!r})
        for _ in range(2):
            task = load_task("fashion_mnist_cnn")
        print(task.fallback_active, task.dataset.name)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "digits"]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr  # once per process
    assert "task fashion_mnist_cnn: Fashion-MNIST not found" in lines[0] and "loading its fallback instead" in lines[0]
    assert "digits resized to 28x28" in lines[0]


def test_the_fallback_baseline_reaches_its_documented_floor(no_fashion):
    """One training of the fallback's baseline network (task seed 0): a few seconds."""
    from kasrl.eval.runtime import TaskRuntime, train_and_test

    assert f"at or above {FALLBACK_FLOOR:.0f}%" in (TASKS_DIR / "fashion_mnist_cnn.yaml").read_text().replace("\n# ", " ")
    rt = TaskRuntime(load_task("fashion_mnist_cnn"))
    out = train_and_test(rt, rt.network())
    assert out.accuracy >= FALLBACK_FLOOR, out
