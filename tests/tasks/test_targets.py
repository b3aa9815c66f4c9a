"""Networks and datasets named by import path, minimal task files, overrides, layer selection, DataLoader training."""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from kasrl.errors import ConfigError
from kasrl.solver.budget import Placement
from kasrl.tasks import LatencySpec, Recipe, RewardSpec, load_dataset
from kasrl.tasks.task import build_task_network, load_task, task_from_dict, task_placements

U = "tests.tasks.userland"


def _user(**more) -> dict:
    """A task of the user's own network and data."""
    base = {"name": "mine", "network": {"target": f"{U}:tiny_net", "kwargs": {"width": 8}},
            "dataset": {"target": f"{U}:digits_tensors", "train_size": 300, "test_size": 100},
            "recipe": {"epochs": 3.0, "batch_size": 32, "lr": 0.01, "schedule": "onecycle"}}
    for key, value in more.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


# -- minimal files and their defaults ----------------------------------------------------------------------
def test_a_minimal_task_file_names_network_data_and_placeholders_and_takes_the_defaults(tmp_path):
    path = tmp_path / "minimal.yaml"
    path.write_text("network: {target: small_cnn}\ndataset: {target: digits, kwargs: {resize: [28, 28]}}\nplaceholders: {select: all}\n")
    task = load_task(path)
    assert task.name == "minimal" and task.seed == 0 and task.device == "cpu" and task.description == ""
    assert task.recipe == Recipe() and task.latency == LatencySpec() and task.reward == RewardSpec()
    assert (task.dataset.train_size, task.dataset.test_size, task.dataset.seed) == (None, None, 0)
    assert task.network.kwargs == {} and task.fallback is None and not task.fallback_active
    model, names = build_task_network(task)
    assert names == ["stage1.0.conv", "stage2.0.conv"] and task_placements(task, model) == (Placement(32, 14, 14), Placement(64, 7, 7))


def test_the_older_layout_and_the_new_one_give_one_task_and_one_fingerprint():
    old = {"name": "t", "network": {"name": "small_cnn", "width": 16},
           "dataset": {"name": "digits", "resize": [28, 28], "train_size": 100}}
    new = {"name": "t", "network": {"target": "small_cnn", "kwargs": {"width": 16}},
           "dataset": {"target": "digits", "kwargs": {"resize": [28, 28]}, "train_size": 100}}
    path = {"name": "t", "network": {"target": "kasrl.tasks.networks:SmallCNN", "kwargs": {"width": 16, "blocks": 1}},
            "dataset": {"target": "kasrl.tasks.data:digits", "kwargs": {"resize": [28, 28]}, "train_size": 100}}
    assert task_from_dict(old) == task_from_dict(new)
    assert task_from_dict(old).fingerprint == task_from_dict(path).fingerprint  # alias = its path; `blocks: 1` is the default


# -- import-path networks and datasets ----------------------------------------------------------------------
def test_a_users_network_and_data_by_import_path():
    task = task_from_dict(_user())
    assert task.network.name == f"{U}:tiny_net" and task.dataset.name == f"{U}:digits_tensors"
    model, names = build_task_network(task)
    assert names == ["block1.conv", "block2.conv"] and model.head.out_features == 10  # num_classes from the loader
    assert task_placements(task, model) == (Placement(8, 8, 8), Placement(16, 4, 4))
    splits = load_dataset(task.dataset)
    assert type(splits.train) is TensorDataset and len(splits.train) == 300 and len(splits.test) == 100


def test_num_classes_set_in_the_task_wins_over_the_dataset():
    model, _ = build_task_network(task_from_dict(_user(network={"kwargs": {"width": 8, "num_classes": 7}})))
    assert model.head.out_features == 7


@pytest.mark.parametrize("field, target, message", [
    ("network", "tests.tasks.no_such_module:net",
     "`task.network.target`: cannot import module 'tests.tasks.no_such_module' (No module named 'tests.tasks.no_such_module')"),
    ("network", f"{U}:tiny_nett", f"`task.network.target`: module '{U}' has no attribute 'tiny_nett'; did you mean 'tiny_net'?"),
    ("network", f"{U}:NOT_CALLABLE", f"`task.network.target`: '{U}:NOT_CALLABLE' is not callable (it is int 3)"),
    ("network", f"{U}:returns_an_int", f"`task.network.target`: {U}:returns_an_int returned int, not a torch.nn.Module"),
    ("network", "tiny_net", "`task.network.target`: 'tiny_net' is neither a built-in network (small_cnn"),
    ("dataset", "tests.tasks.no_such_module:data", "`task.dataset.target`: cannot import module 'tests.tasks.no_such_module'"),
    ("dataset", f"{U}:NOT_CALLABLE", f"`task.dataset.target`: '{U}:NOT_CALLABLE' is not callable"),
])
def test_a_bad_target_fails_at_load_in_one_line_naming_the_field(field, target, message):
    data = _user(**{field: {"target": target, "kwargs": {}}})
    with pytest.raises(ConfigError) as e:
        task_from_dict(data)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize("target, message", [
    ("one_split", f"`task.dataset.target`: {U}:one_split returned TensorDataset; a loader must return (train, test) Datasets"),
    ("not_datasets", f"`task.dataset.target`: {U}:not_datasets returned a train split of type list, not a torch.utils.data.Dataset"),
])
def test_a_loader_that_returns_no_dataset_pair_fails_when_the_data_is_first_loaded(target, message):
    task = task_from_dict(_user(dataset={"target": f"{U}:{target}", "train_size": None, "test_size": None}))  # it loads
    with pytest.raises(ConfigError) as e:
        load_dataset(task.dataset)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_unknown_and_missing_arguments_of_a_target_are_named():
    with pytest.raises(ConfigError, match=re.escape(f"unknown key `task.network.kwargs.widht` for network '{U}:tiny_net'; "
                                                    f"did you mean `width`?")):
        task_from_dict(_user(network={"kwargs": {"widht": 4}}))
    with pytest.raises(ConfigError, match=re.escape("unknown key `task.network.widht`; did you mean `width`?")):
        task_from_dict(_user(network={"widht": 4}))  # the shorthand: arguments beside target
    assert task_from_dict(_user(network={"width": 4})).network.kwargs == {"width": 4}


# -- overrides ---------------------------------------------------------------------------------------------
def test_overrides_take_dotted_keys_and_nested_mappings():
    a = task_from_dict(_user(), overrides={"recipe.lr": 0.05, "task.network.kwargs.width": 4, "dataset": {"train_size": 200}})
    assert (a.recipe.lr, a.network.kwargs, a.dataset.train_size) == (0.05, {"width": 4}, 200)
    b = load_task("digits_cnn", overrides={"dataset.resize": [16, 16], "network.width": 8})  # older keys still reach kwargs
    assert b.dataset.kwargs == {"resize": [16, 16]} and b.network.kwargs == {"width": 8}


@pytest.mark.parametrize("overrides, message", [
    ({"recipe.lr": "fast"}, "`task.recipe.lr` must be a number, got 'fast' (str)"),
    ({"recipe": {"lrate": 0.1}}, "unknown key `task.recipe.lrate`; did you mean `lr`?"),
    ({"latency.resolution": ["a", 28]}, "`task.latency.resolution` must be a list [an integer, an integer] or null, got ['a', 28] (list)"),
    ({"recipe.loss_milestones": [[0.5]]}, "`task.recipe.loss_milestones[0]` must be a list [fraction, max_loss] of numbers, got [0.5]"),
    ({"recipe": 5}, "`task.recipe` must be a mapping, got 5 (int)"),
    ({"recipe.num_workers": -1}, "`task.recipe.num_workers` must be a non-negative integer, got -1"),
    ({"fallback": {"recipe": {"lr": "x"}}}, "`task.fallback`: `task.recipe.lr` must be a number, got 'x' (str)"),
])
def test_errors_name_the_dotted_key_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        task_from_dict(_user(), overrides=overrides)
    assert str(e.value) == message


# -- which layers --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("select, names", [
    (["block*.conv"], ["block1.conv", "block2.conv"]),
    (["block2.conv"], ["block2.conv"]),
    ([{"channels": [16]}], ["block2.conv"]),
    ([{"placements": ["8x8x8"]}], ["block1.conv"]),
    (["block1.*", {"channels": [16], "placements": ["16x4x4"]}], ["block1.conv", "block2.conv"]),
])
def test_select_takes_names_patterns_and_shape_filters(select, names):
    task = task_from_dict(_user(placeholders={"select": select}))
    assert build_task_network(task)[1] == names


@pytest.mark.parametrize("select, message", [
    (["stem"], "`task.placeholders.select`: 'stem' is not a shape-preserving 3x3 conv of "
               f"'{U}:tiny_net' (C in 1 != C out 8); replaceable: block1.conv, block2.conv"),
    (["down"], f"`task.placeholders.select`: 'down' is not a shape-preserving 3x3 conv of '{U}:tiny_net' (stride 2)"),
    (["head*"], f"`task.placeholders.select`: 'head*' matches no shape-preserving 3x3 conv of '{U}:tiny_net' (head: a Linear, not a "
                f"Conv2d)"),
    (["blok1.conv"], f"`task.placeholders.select`: 'blok1.conv' is not a layer of '{U}:tiny_net'; did you mean 'block1.conv'?"),
    ([{"channels": [64]}], f"`task.placeholders.select[0]`: {{channels: [64]}} matches no shape-preserving 3x3 conv of "
                           f"'{U}:tiny_net'; they have channels 8, 16"),
    ([{"sizes": [64]}], "`task.placeholders.select[0]` must be a layer name such as 'layer1.0.conv2'"),
    ([], "`task.placeholders.select` must be 'all' or a non-empty list"),
])
def test_select_errors_name_the_layer_or_the_entry(select, message):
    """At load when the data's shape is known without loading them (kasrl's loaders), else when the network is built."""
    with pytest.raises(ConfigError) as e:
        build_task_network(task_from_dict(_user(placeholders={"select": select})))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_with_kasrls_own_data_layer_errors_come_at_load():
    digits = {"target": "digits", "kwargs": {"resize": [16, 16]}, "train_size": None, "test_size": None}
    with pytest.raises(ConfigError, match=re.escape(f"`task.placeholders.select`: 'stem' is not a shape-preserving 3x3 conv of "
                                                    f"'{U}:tiny_net' (C in 1 != C out 8)")):
        task_from_dict(_user(dataset=digits, placeholders={"select": ["stem"]}))
    with pytest.raises(ConfigError, match=re.escape(f"`task.network.target`: '{U}:no_conv' has no shape-preserving 3x3 conv to replace")):
        task_from_dict(_user(dataset=digits, network={"target": f"{U}:no_conv", "kwargs": {}}))


def test_a_placements_filter_that_matches_nothing_is_named_when_the_network_is_built():
    task = task_from_dict(_user(placeholders={"select": [{"placements": ["8x4x4"]}]}))  # shapes are known once data are
    with pytest.raises(ConfigError, match=re.escape("`task.placeholders.select[0]`: {placements: [8x4x4]} matches no shape-preserving "
                                                    "3x3 conv of 'tests.tasks.userland:tiny_net'; they have channels 8, 16 and "
                                                    "placements 16x4x4, 8x8x8")):
        build_task_network(task)


# -- training through a DataLoader ----------------------------------------------------------------------------
def test_any_dataset_trains_through_a_seeded_dataloader_and_subsets_work_on_it():
    from kasrl.eval.runtime import TaskRuntime, train_and_test

    task = task_from_dict(_user(dataset={"target": f"{U}:digits_items"}))
    rt = TaskRuntime(task)
    assert isinstance(rt.data.train, Subset) and len(rt.data.train) == 300 and rt.data.num_classes == 10
    assert rt.search_placements == (Placement(8, 8, 8), Placement(16, 4, 4))  # the shape read from the first item
    a = train_and_test(rt, rt.network(), threads=1)
    b = train_and_test(rt, rt.network(), threads=1)
    assert a.accuracy == b.accuracy and a.final_loss == b.final_loss and a.steps == 30  # seeded: the same run twice
    assert a.accuracy > 30  # it learns (chance is 10%)
    with_workers = TaskRuntime(task_from_dict(_user(dataset={"target": f"{U}:digits_items"}, recipe={"num_workers": 1})))
    c = train_and_test(with_workers, with_workers.network(), threads=1)
    assert c.final_loss == pytest.approx(a.final_loss, rel=1e-5)  # the same batches from a worker process


def test_the_same_items_as_tensors_take_the_fast_path_and_train_alike():
    from kasrl.eval.runtime import TaskRuntime, train_and_test

    rt = TaskRuntime(task_from_dict(_user()))
    assert type(rt.data.train) is TensorDataset
    out = train_and_test(rt, rt.network(), threads=1)
    assert out.steps == 30 and out.accuracy > 30
    assert torch.equal(rt.data.train_indices, load_dataset(rt.task.dataset).train_indices)
