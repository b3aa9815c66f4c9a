"""The task layer: typed task configs, the networks kernels go into, and their data.

>>> task = load_task("digits_cnn")
>>> task.network.name, task.dataset.name
('small_cnn', 'digits')
"""

from kasrl.tasks.data import DATASETS, DatasetInfo, DatasetSpec, DatasetSplits, dataset_info, load_dataset, read_idx, subset_indices
from kasrl.tasks.networks import NETWORKS, BasicBlock, ResNet, SmallCNN, build_network, network_options
from kasrl.tasks.targets import ALIASES, loader_hooks, resolve
from kasrl.tasks.task import (
    LadderSpec,
    LatencySpec,
    NetworkSpec,
    Penalties,
    PlaceholderSpec,
    Recipe,
    RewardSpec,
    Task,
    TimeoutSpec,
    build_task_network,
    check_device_options,
    latency_placements,
    list_tasks,
    load_task,
    resolve_device,
    task_from_dict,
    task_input_shape,
    task_placements,
)

__all__ = [
    "Task",
    "NetworkSpec",
    "PlaceholderSpec",
    "DatasetSpec",
    "Recipe",
    "LatencySpec",
    "Penalties",
    "RewardSpec",
    "TimeoutSpec",
    "LadderSpec",
    "load_task",
    "task_from_dict",
    "list_tasks",
    "build_task_network",
    "task_input_shape",
    "task_placements",
    "latency_placements",
    "resolve_device",
    "check_device_options",
    "DATASETS",
    "DatasetInfo",
    "DatasetSplits",
    "dataset_info",
    "load_dataset",
    "read_idx",
    "subset_indices",
    "NETWORKS",
    "SmallCNN",
    "BasicBlock",
    "ResNet",
    "build_network",
    "network_options",
    "ALIASES",
    "loader_hooks",
    "resolve",
]
