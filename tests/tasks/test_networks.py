"""Task networks: shapes, replaceable convs, placements, the registry."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn

from kasrl.errors import ConfigError
from kasrl.placeholders import record_placements, replace_convs_with_placeholders
from kasrl.solver.budget import RESNET18_PLACEMENTS, Placement
from kasrl.tasks.networks import NETWORKS, SmallCNN, build_network, network_options

# name -> (input shape, replaceable 3x3 convs). ResNet: every block's conv2, plus
# conv1 of every block that keeps stride 1 and channels (all but the first block of
# stages 2-4): 8 + 5 = 13 for ResNet-18 and 16 + 13 = 29 for ResNet-34.
EXPECTED = {
    "small_cnn": ((1, 28, 28), 2),
    "resnet18_cifar": ((3, 32, 32), 13),
    "resnet34_cifar": ((3, 32, 32), 29),
    "resnet18_imagenet": ((3, 224, 224), 13),
    "resnet34_imagenet": ((3, 224, 224), 29),
}


def test_every_network_has_an_expectation():
    assert set(EXPECTED) == set(NETWORKS)


def test_built_in_names_are_aliases_of_import_paths():
    """A built-in name and its import path build the same network."""
    assert all(path.startswith("kasrl.tasks.networks:") for path in NETWORKS.values())
    torch.manual_seed(0)
    a = build_network("small_cnn", num_classes=10, in_channels=1, width=8)
    torch.manual_seed(0)
    b = build_network(NETWORKS["small_cnn"], num_classes=10, in_channels=1, width=8)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_forward_shape_and_replaceable_count(name):
    shape, count = EXPECTED[name]
    width = {} if name == "small_cnn" else {"width": 8}  # narrow ResNets keep the test fast
    net = build_network(name, num_classes=7, in_channels=shape[0], **width).eval()
    with torch.no_grad():
        assert net(torch.zeros(2, *shape)).shape == (2, 7)
    names = replace_convs_with_placeholders(net)
    assert len(names) == count
    placements = record_placements(net, torch.zeros(1, *shape))
    assert len(placements) == count


def test_small_cnn_placements_and_names():
    net = SmallCNN(num_classes=10, in_channels=1, width=32)
    assert replace_convs_with_placeholders(net) == ["stage1.0.conv", "stage2.0.conv"]
    found = record_placements(net, torch.zeros(1, 1, 28, 28))
    assert found == {"stage1.0.conv": Placement(32, 14, 14), "stage2.0.conv": Placement(64, 7, 7)}


def test_small_cnn_stem_stride_1_keeps_28x28_and_blocks_repeat():
    net = SmallCNN(width=8, blocks=2, stem_stride=1)
    names = replace_convs_with_placeholders(net)
    assert len(names) == 4
    assert set(record_placements(net, torch.zeros(1, 1, 28, 28)).values()) == {Placement(8, 28, 28), Placement(16, 14, 14)}


def test_small_cnn_runs_on_8x8_digits():
    assert SmallCNN()(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_small_cnn_forward_backward_batch_64():
    net = SmallCNN()
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_resnet18_imagenet_placements_are_the_imagenet_stages():
    net = build_network("resnet18_imagenet", num_classes=10, in_channels=3)
    replace_convs_with_placeholders(net)
    assert sorted(set(record_placements(net, torch.zeros(1, 3, 224, 224)).values())) == list(RESNET18_PLACEMENTS)


def test_resnet_uses_torchvision_layer_names():
    net = build_network("resnet18_cifar", num_classes=10, in_channels=3, width=8)
    names = replace_convs_with_placeholders(net)
    assert names[:3] == ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1"]
    assert "layer2.0.conv1" not in names and "layer2.0.conv2" in names


def test_unknown_network_suggests_a_close_name():
    with pytest.raises(ConfigError, match=re.escape("`task.network.target`: 'resnet18_cfar' is neither a built-in network (")) as e:
        build_network("resnet18_cfar", num_classes=10, in_channels=3)
    assert str(e.value).endswith("nor an import path 'package.module:factory'; did you mean 'resnet18_cifar'?")


def test_unknown_network_option_is_named():
    message = "unknown key `task.network.kwargs.widht` for network 'small_cnn'; did you mean `width`?"
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_network("small_cnn", num_classes=10, in_channels=1, widht=8)


def test_bad_width_is_named():
    with pytest.raises(ConfigError, match=re.escape("`task.network.kwargs.width` must be a positive integer, got 0")):
        build_network("small_cnn", num_classes=10, in_channels=1, width=0)


def test_network_options_lists_defaults():
    assert network_options("small_cnn") == {"width": 32, "blocks": 1, "stem_stride": 2}
    assert network_options("resnet18_cifar") == {"width": 64}
