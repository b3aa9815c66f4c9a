"""Task configs: loading, strict validation, fingerprints, networks and placements."""

from __future__ import annotations

import re

import pytest
import torch
import yaml

from kasrl.errors import ConfigError, DatasetError
from kasrl.placeholders import Placeholder
from kasrl.solver.budget import RESNET18_PLACEMENTS, Budget, Placement
from kasrl.tasks.task import (
    TASKS_DIR,
    Task,
    build_task_network,
    latency_placements,
    list_tasks,
    load_task,
    resolve_device,
    task_from_dict,
    task_input_shape,
    task_placements,
)


def _digits() -> dict:
    return load_task("digits_cnn").to_dict()


def _with(d: dict, dotted: str, value) -> dict:
    node = d
    *parents, last = dotted.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    return d


def test_shipped_configs_are_listed():
    assert {"fashion_mnist_cnn", "digits_cnn", "cifar10_resnet18", "resnet18_imagenet_latency", "cifar10_resnet18_gpu"} <= set(list_tasks())


def test_every_shipped_config_starts_with_a_comment():
    for path in TASKS_DIR.glob("*.yaml"):
        assert path.read_text().startswith("# "), path


def test_default_task_loads():
    task = load_task("fashion_mnist_cnn")
    assert task.name == "fashion_mnist_cnn"
    assert task.network.name == "small_cnn" and task.dataset.name == "fashion_mnist"
    assert task.recipe.optimizer == "adam" and task.latency.batch == 8
    assert isinstance(task.budget, Budget)
    assert task_input_shape(task) == (1, 28, 28)


def test_load_by_path_equals_load_by_name():
    assert load_task(TASKS_DIR / "digits_cnn.yaml") == load_task("digits_cnn")


def test_to_dict_round_trips():
    task = load_task("fashion_mnist_cnn")
    again = task_from_dict(yaml.safe_load(yaml.safe_dump(task.to_dict())))
    assert again == task and again.fingerprint == task.fingerprint


def test_fingerprint_is_stable_and_ignores_name_and_description():
    d = _digits()
    fp = task_from_dict(d).fingerprint
    assert re.fullmatch(r"[0-9a-f]{64}", fp)
    assert task_from_dict(d).fingerprint == fp
    assert task_from_dict(_with(_digits(), "name", "other")).fingerprint == fp
    assert task_from_dict(_with(_digits(), "description", "words")).fingerprint == fp


@pytest.mark.parametrize(
    "dotted, value",
    [("recipe.lr", 0.5), ("dataset.train_size", 999), ("dataset.seed", 7), ("seed", 3), ("budget.flops", 2.0), ("network.width", 8),
     ("latency.dtype", "bf16"), ("latency.channels_last", True), ("latency.compile", True), ("recipe.autocast", "bf16"),
     ("timeouts.compile_s", 30.0)],
)
def test_fingerprint_changes_with_what_changes_results(dotted, value):
    assert task_from_dict(_with(_digits(), dotted, value)).fingerprint != task_from_dict(_digits()).fingerprint


def test_int_and_float_spellings_give_one_fingerprint():
    a = task_from_dict(_with(_with(_digits(), "recipe.epochs", 2), "budget.flops", 1))
    b = task_from_dict(_with(_with(_digits(), "recipe.epochs", 2.0), "budget.flops", 1.0))
    assert a.fingerprint == b.fingerprint


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=re.escape("unknown key `task.recipe.lrate`; did you mean `lr`?")):
        task_from_dict(_with(_digits(), "recipe.lrate", 0.1))


def test_unknown_top_level_key_is_named(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("name: t\nrecipie: {}\n")
    with pytest.raises(ConfigError, match=re.escape("unknown key `task.recipie`; did you mean `recipe`?")):
        load_task(path)


def test_unknown_network_option_is_named():
    with pytest.raises(ConfigError, match=re.escape("unknown key `task.network.widht`; did you mean `width`?")):
        task_from_dict(_with(_digits(), "network.widht", 8))


def test_wrong_type_names_key_expected_type_and_value():
    with pytest.raises(ConfigError, match=re.escape("`task.recipe.lr` must be a number, got 'fast' (str)")):
        task_from_dict(_with(_digits(), "recipe.lr", "fast"))
    with pytest.raises(ConfigError, match=re.escape("`task.dataset.train_size` must be an integer or null, got 1.5 (float)")):
        task_from_dict(_with(_digits(), "dataset.train_size", 1.5))
    with pytest.raises(ConfigError, match=re.escape("`task.recipe.batch_size` must be an integer, got True (bool)")):
        task_from_dict(_with(_digits(), "recipe.batch_size", True))


def test_unknown_optimizer_suggests():
    with pytest.raises(
        ConfigError,
        match=re.escape("`task.recipe.optimizer` must be one of 'sgd', 'adam', 'adamw', got 'adamm' (str); did you mean 'adam'?"),
    ):
        task_from_dict(_with(_digits(), "recipe.optimizer", "adamm"))


@pytest.mark.parametrize(
    "dotted, value, message",
    [
        ("recipe.epochs", 0, "`task.recipe.epochs` must be a positive number of epochs, got 0.0"),
        ("dataset.train_size", -5, "`task.dataset.train_size` must be at least 1 (or null for all), got -5"),
        ("latency.batch", 0, "`task.latency.batch` must be a positive integer, got 0"),
        ("reward.penalties.crash", 1.0, "`task.reward.penalties.crash` must be a number <= 0, got 1.0"),
        ("reward.penalties.timeout", -1.0, "`task.reward.penalties.timeout` must be <= `task.reward.floor` (-5.0) so a failed kernel never "
                                           "outranks one that ran, got -1.0"),
        (
            "recipe.loss_milestones",
            [[0.5, 2.0], [0.4, 1.0]],
            "`task.recipe.loss_milestones[1]`: fraction 0.4 must be in (0.5, 1] (ascending)",
        ),
        ("latency.placements", ["64x56"], "`task.latency.placements`: '64x56' is not CxHxW"),
        ("recipe.max_train_seconds", 999, "`task.recipe.max_train_seconds` (999) exceeds `task.timeouts.train_s` (60)"),
        ("device", "gpu", "`task.device` must be one of 'cpu', 'cuda', 'auto', got 'gpu' (str)"),
    ],
)
def test_impossible_values_are_named(dotted, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        task_from_dict(_with(_digits(), dotted, value))


def test_fractional_epochs_are_allowed():
    assert task_from_dict(_with(_digits(), "recipe.epochs", 0.25)).recipe.epochs == 0.25


def test_bad_budget_surfaces_budgets_own_message():
    with pytest.raises(ConfigError, match=re.escape("`budget.flops` must be a positive number, got -1")):
        task_from_dict(_with(_digits(), "budget.flops", -1))
    with pytest.raises(ConfigError, match=re.escape("unknown key `task.budget.flop`; did you mean `flops`?")):
        task_from_dict(_with(_digits(), "budget.flop", 2.0))


def test_missing_dataset_folder_fails_at_load(tmp_path):
    missing = tmp_path / "cifar"
    with pytest.raises(DatasetError, match=re.escape(f"`task.dataset.kwargs.path`: folder {missing} does not exist")):
        load_task("cifar10_resnet18", overrides={"dataset.path": str(missing)})


def test_shipped_cifar_config_loads_with_a_path_override(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (folder / name).write_bytes(bytes(3073))
    task = load_task("cifar10_resnet18", overrides={"task.dataset.path": str(tmp_path)})
    assert task.dataset.kwargs["path"] == str(tmp_path) and task.network.name == "resnet18_cifar"  # the older key, read as kwargs.path


def test_latency_placements_of_the_imagenet_example():
    task = load_task("resnet18_imagenet_latency", check_paths=False)
    search = (Placement(64, 32, 32),)
    assert latency_placements(task, search) == RESNET18_PLACEMENTS


def test_latency_placements_default_to_the_search_placements():
    task = load_task("digits_cnn")
    search = (Placement(16, 14, 14), Placement(32, 7, 7))
    assert latency_placements(task, search) == search


def test_latency_resolution_records_on_a_copy():
    task = task_from_dict(_with(_digits(), "latency.resolution", [56, 56]))
    model, _ = build_task_network(task)
    search = task_placements(task, model)
    assert latency_placements(task, search, model) == (Placement(16, 28, 28), Placement(32, 14, 14))
    assert {p.placement for p in model.modules() if isinstance(p, Placeholder)} == set(search)  # untouched


def test_duplicate_yaml_key_is_named(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: t\nseed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match=re.escape("duplicate key `seed` at line 3")):
        load_task(path)


def test_yaml_reads_exponent_floats(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("name: t\ndataset: {name: digits}\nrecipe: {lr: 1e-3}\n")
    assert load_task(path).recipe.lr == 0.001


def test_unknown_task_name_suggests():
    with pytest.raises(ConfigError, match=re.escape("unknown task 'digit_cnn'; did you mean 'digits_cnn'?")):
        load_task("digit_cnn")


def test_build_task_network_and_placements():
    task = load_task("fashion_mnist_cnn")
    model, names = build_task_network(task)
    assert names == ["stage1.0.conv", "stage2.0.conv"]
    assert task_placements(task, model) == (Placement(32, 14, 14), Placement(64, 7, 7))


def test_build_task_network_is_seeded_and_leaves_the_global_rng_alone():
    task = load_task("digits_cnn")
    state = torch.random.get_rng_state()
    a, _ = build_task_network(task)
    b, _ = build_task_network(task)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_select_a_subset_of_layers():
    task = task_from_dict(_with(_digits(), "placeholders.select", ["stage2.0.conv"]))
    model, names = build_task_network(task)
    assert names == ["stage2.0.conv"]
    assert task_placements(task, model) == (Placement(32, 7, 7),)


def test_select_a_layer_that_is_not_replaceable_is_named_at_load():
    with pytest.raises(
        ConfigError, match=re.escape("`task.placeholders.select`: 'stem.conv' is not a shape-preserving 3x3 conv of 'small_cnn' (stride 2)")
    ):
        task_from_dict(_with(_digits(), "placeholders.select", ["stem.conv"]))


def test_resnet_task_network_counts(tmp_path):
    task = task_from_dict(
        {"name": "r", "network": {"name": "resnet18_cifar", "width": 8}, "dataset": {"name": "cifar10", "path": str(tmp_path)}},
        check_paths=False,
    )
    model, names = build_task_network(task)
    assert len(names) == 13
    assert task_placements(task, model) == (Placement(8, 32, 32), Placement(16, 16, 16), Placement(32, 8, 8), Placement(64, 4, 4))


def test_resolve_device():
    assert resolve_device(load_task("digits_cnn")).type == "cpu"
    auto = task_from_dict(_with(_digits(), "device", "auto"))
    assert resolve_device(auto).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_task_needs_a_name():
    with pytest.raises(ConfigError, match=re.escape("missing key `task.name`")):
        task_from_dict({"dataset": {"name": "digits"}})


def test_task_constructed_directly_is_checked():
    # OmegaConf types a task built in Python as one loaded from a file; it converts the string "1" to the integer 1
    # (the hand-written checks refused it), so the refused value here is one that does not convert.
    assert Task(name="t", seed="1").seed == 1
    with pytest.raises(ConfigError, match=re.escape("`task.seed` must be an integer, got 'one' (str)")):
        Task(name="t", seed="one")


@pytest.mark.parametrize("override, message", [
    ({"latency.min_time_s": 0.1}, "`task.latency.min_time_s` was removed in task fingerprint version 3: use `time_s`"),
    ({"latency.time_s": 3.0, "latency.max_time_s": 1.0},
     "`task.latency.max_time_s` must be null or a finite number of seconds, at least time_s (3 s)"),
    ({"latency.max_time_s": float("inf")}, "`task.latency.max_time_s` must be"),
    ({"latency.time_s": float("nan")}, "`task.latency.time_s` must be a finite"),
    ({"latency.quantile": 0.7}, "`task.latency.quantile` must be a number in [0, 0.5]"),
    ({"latency.target_spread": -0.1}, "`task.latency.target_spread` must be a finite, non-negative fraction"),
])
def test_latency_settings_are_checked_at_load(override, message):
    with pytest.raises(ConfigError) as e:
        task_from_dict(load_task("digits_cnn").to_dict(), overrides=override)
    assert message in str(e.value)


def test_max_time_s_defaults_to_three_times_time_s():
    task = task_from_dict(load_task("digits_cnn").to_dict(), overrides={"latency.time_s": 5.0, "latency.max_time_s": None})
    assert task.latency.longest_s == 15.0


# -- how latency is taken, and what only CUDA has ---------------------------------------------------------
def test_latency_options_default_to_fp32_eager():
    """Without the new keys, tasks time fp32 eager as before."""
    spec = load_task("digits_cnn").latency
    assert (spec.dtype, spec.channels_last, spec.compile, spec.cuda_graphs) == ("fp32", False, False, False)
    assert load_task("digits_cnn").recipe.autocast is None and load_task("digits_cnn").timeouts.compile_s == 600.0


@pytest.mark.parametrize("override, message", [
    ({"latency.dtype": "fp16"}, "`task.latency.dtype` 'fp16' needs CUDA, but `task.device` is 'cpu'; use 'bf16' or 'fp32' on the CPU"),
    ({"latency.cuda_graphs": True}, "`task.latency.cuda_graphs` needs CUDA, but `task.device` is 'cpu'; set it to false on the CPU"),
    ({"recipe.autocast": "fp16"}, "`task.recipe.autocast` 'fp16' needs CUDA, but `task.device` is 'cpu'; use 'bf16' or null on the CPU"),
    ({"device": "cuda", "latency.compile": True, "latency.cuda_graphs": True},
     "`task.latency.cuda_graphs` cannot be combined with `task.latency.compile`"),
    ({"latency.dtype": "fp64"}, "`task.latency.dtype` must be one of 'fp32', 'bf16', 'fp16', got 'fp64' (str)"),
    # OmegaConf reads "yes"/"no" and integers as booleans (the hand-written checks refused them); values it cannot read still fail
    ({"latency.channels_last": "maybe"}, "`task.latency.channels_last` must be true or false, got 'maybe' (str)"),
    ({"latency.compile": 1.5}, "`task.latency.compile` must be true or false, got 1.5 (float)"),
    ({"recipe.autocast": "fp32"}, "`task.recipe.autocast` must be one of 'bf16', 'fp16' or null, got 'fp32' (str)"),
    ({"timeouts.compile_s": 0}, "`task.timeouts.compile_s` must be a positive number of seconds, got 0.0"),
    ({"dataset.image_shape": [3, 32, 32]},
     "unknown key `task.dataset.image_shape`; known: target, kwargs, train_size, test_size, seed, resize"),
    ({"dataset.kwargs.image_shape": [3, 32, 32]}, "unknown key `task.dataset.kwargs.image_shape` for dataset 'digits'; known: resize"),
])
def test_bad_latency_and_device_combinations_fail_at_load_in_one_line(override, message):
    """Impossible option combinations name the field in one line."""
    with pytest.raises(ConfigError) as e:
        task_from_dict(load_task("digits_cnn").to_dict(), overrides=override)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_cuda_only_options_load_for_cuda_and_auto_and_auto_checks_where_it_runs():
    """CUDA-only options load for cuda/auto; auto refuses them on a CPU."""
    for device in ("cuda", "auto"):
        task = task_from_dict(_digits(), overrides={"device": device, "latency.dtype": "fp16", "latency.cuda_graphs": True,
                                                    "recipe.autocast": "fp16"})
        assert task.latency.dtype == "fp16"
    if torch.cuda.is_available():
        assert resolve_device(task).type == "cuda"
    else:
        with pytest.raises(ConfigError, match=re.escape("`task.latency.dtype` 'fp16' needs CUDA, but the task runs on cpu here "
                                                        "(`task.device` is 'auto')")):
            resolve_device(task)


def test_the_gpu_task_times_resnet18_as_gpus_deploy_it_on_synthetic_data():
    """The shipped GPU task: ResNet-18, bf16, channels-last, synthetic data."""
    task = load_task("cifar10_resnet18_gpu")
    assert task.device == "cuda" and task.network.name == "resnet18_cifar" and task.dataset.name == "synthetic"
    assert (task.latency.dtype, task.latency.channels_last, task.recipe.autocast) == ("bf16", True, "bf16")
    assert task_input_shape(task) == (3, 32, 32)
    model, names = build_task_network(task)
    assert len(names) == 13 and task_placements(task, model)[0] == Placement(64, 32, 32)
    text = (TASKS_DIR / "cifar10_resnet18_gpu.yaml").read_text()
    assert "cifar10_resnet18.yaml" in text and "chance" in text  # it points to the measured task and says what its accuracy is
    assert "cifar10_resnet18_gpu.yaml" in (TASKS_DIR / "cifar10_resnet18.yaml").read_text()
    on_cpu = task_from_dict(task.to_dict(), overrides={"device": "cpu"})  # bf16 and channels-last run on a CPU too
    assert on_cpu.latency.dtype == "bf16"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=re.escape("`task.device` is 'cuda' but CUDA is not available here")):
            resolve_device(task)
