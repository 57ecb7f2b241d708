"""Any CNN: VGG-16, wide residual networks, torchvision's ResNet-18, a network with a
concatenation and user networks. Discovery finds the independently prunable layers and puts
their switches after the batch-norm that follows them; surgery on every one equals masking at
the switches; checkpoints of the new models round-trip; a switch before a batch-norm in
training mode is undone by the normalisation."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from helpers import TinyUserCNN, randomise_batchnorms
from pyro_dirichlet_prune.data import Split
from pyro_dirichlet_prune.errors import UserError
from pyro_dirichlet_prune.inference.svi import SwitchConfig, fit_switches
from pyro_dirichlet_prune.metrics import count_macs, count_params
from pyro_dirichlet_prune.models import (VGG16, SwitchedNetwork, WideResNet, build_model, default_widths,
                                         discover_switch_points, switch_points)
from pyro_dirichlet_prune.models.checkpoint import load_checkpoint, save_checkpoint
from pyro_dirichlet_prune.models.discovery import NOT_NAMED, analyse_layers, left_out_layers
from pyro_dirichlet_prune.models.switch_points import SwitchPoint, rebind
from pyro_dirichlet_prune.pruning.surgery import mask_scales, prune_units, verify_surgery

CIFAR = (3, 32, 32)
TINY_VGG = (4, 4, 6, 6, 8, 8, 8, 8, 8, 8, 8, 8, 8, 12)


def _random_keep(points, seed):
    rng = random.Random(seed)
    return {p.name: sorted(rng.sample(range(p.width), rng.randint(1, p.width))) for p in points}


def _masked(net, points, keep, x):
    sw = SwitchedNetwork(net, points)
    with torch.no_grad(), sw.scaled(mask_scales(points, keep)):
        out = sw(x)
    return out


def _check_surgery(net, shape, points, seeds=(0, 1)):
    """Prune random keep-sets; the pruned network equals the masked one and its switched layers shrink."""
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(5))
    for seed in seeds:
        keep = _random_keep(points, seed)
        pruned = prune_units(net, keep, shape, points)
        assert verify_surgery(net, pruned, keep, shape, points=points) < 1e-4
        with torch.no_grad():
            torch.testing.assert_close(pruned(x), _masked(net, points, keep, x), rtol=1e-4, atol=1e-5)
        assert [p.width for p in rebind(points, net, pruned)] == [len(keep[p.name]) for p in points]
        assert count_params(pruned) < count_params(net) or all(len(keep[p.name]) == p.width for p in points)
    return pruned, keep


def _ready(net, seed=0):
    """``net`` with non-trivial batch-norms, in eval mode."""
    randomise_batchnorms(net, seed)
    return net.eval()


def _names(net):
    return {m: n for n, m in net.named_modules()}


# --- the registered networks -------------------------------------------------------------------

def test_vgg16_declares_every_conv_and_fc1_with_switches_after_batchnorm():
    net = build_model("vgg16", TINY_VGG)
    assert net.conv1.in_channels == 3 and tuple(net.widths) == TINY_VGG
    points = net.switch_points()
    names = _names(net)
    assert [p.name for p in points] == [f"conv{i}" for i in range(1, 14)] + ["fc1"]
    assert [names[p.hooked] for p in points] == [f"bn{i}" for i in range(1, 14)] + ["fc1"]
    assert default_widths("vgg16") == VGG16.default_widths
    # 13 bias-free 3x3 convs (14,710,464 weights), fc1 512→512 and fc2 512→10 with biases
    assert count_params(build_model("vgg16")) == 14_710_464 + (512 * 512 + 512) + (512 * 10 + 10)
    # discovery finds exactly the declared switch points
    found = discover_switch_points(net, CIFAR)
    assert [(p.name, p.module, p.hooked) for p in found] == [(p.name, p.module, p.hooked) for p in points]


def test_vgg16_surgery_equals_masking():
    torch.manual_seed(0)
    net = _ready(build_model("vgg16", TINY_VGG))
    pruned, keep = _check_surgery(net, CIFAR, net.switch_points())
    assert tuple(pruned.widths) == tuple(len(keep[p.name]) for p in net.switch_points())
    assert pruned.bn3.num_features == len(keep["conv3"]) and pruned.conv4.in_channels == len(keep["conv3"])
    assert pruned.fc1.in_features == len(keep["conv13"]) and pruned.fc2.in_features == len(keep["fc1"])


@pytest.mark.parametrize("name,widths", [("wrn-10-1", None), ("wrn-10-1", (5, 7, 9)), ("wrn-16-1", None)])
def test_wrn_surgery_equals_masking(name, widths):
    torch.manual_seed(1)
    net = _ready(build_model(name, widths), seed=2)
    points = net.switch_points()
    depth = int(name.split("-")[1])
    assert len(points) == 3 * (depth - 4) // 6
    assert all(p.name.endswith(".conv1") for p in points)
    names = _names(net)
    assert [names[p.hooked] for p in points] == [p.name[: -len("conv1")] + "bn2" for p in points]
    pruned, keep = _check_surgery(net, CIFAR, points)
    for p in points:  # conv1's outputs, bn2 and conv2's inputs shrink; the block outputs do not
        block = dict(pruned.named_modules())[p.name[: -len(".conv1")]]
        k = len(keep[p.name])
        assert (block.conv1.out_channels, block.bn2.num_features, block.conv2.in_channels) == (k, k, k)
    assert pruned.fc.in_features == net.fc.in_features


def test_wrn_discovery_agrees_with_its_declared_switch_points():
    net = build_model("wrn-10-1")
    declared = [(p.name, p.module, p.hooked) for p in net.switch_points()]
    assert [(p.name, p.module, p.hooked) for p in discover_switch_points(net, CIFAR)] == declared
    # widen factor 2: the stem's units no longer feed an identity shortcut, only block1.0's bn1, so
    # discovery also offers the stem (switch after block1.0.bn1), which the model does not declare
    net = build_model("wrn-10-2")
    found = discover_switch_points(net, CIFAR)
    assert found[0].name == "conv1" and found[0].hooked is net.block1[0].bn1
    assert [(p.name, p.module, p.hooked) for p in found[1:]] == [(p.name, p.module, p.hooked) for p in net.switch_points()]


def test_wrn_names_and_widths():
    net = build_model("wrn-16-4")
    assert isinstance(net, WideResNet) and (net.depth, net.widen) == (16, 4)
    assert tuple(net.widths) == (64, 64, 128, 128, 256, 256) == default_widths("wrn-16-4")
    assert net.fc.in_features == 256 and net.conv1.in_channels == 3
    assert build_model("wrn-10-1", num_classes=7, in_channels=1)(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
    for bad in ("wrn-15-2", "wrn-16-0", "wrn-4-1", "resnet-18"):
        with pytest.raises(UserError):
            build_model(bad)
    with pytest.raises(ValueError):
        build_model("wrn-10-1", widths=(1, 2))


@pytest.mark.parametrize("model,widths", [("vgg16", TINY_VGG), ("wrn-10-1", (3, 5, 7)), ("wrn-10-2", None)])
def test_checkpoint_round_trip(tmp_path, model, widths):
    torch.manual_seed(3)
    net = _ready(build_model(model, widths, num_classes=10))
    save_checkpoint(tmp_path / "m.pt", net, model, "fake-cifar10", 10, CIFAR)
    loaded, info = load_checkpoint(tmp_path / "m.pt", model)
    assert type(loaded) is type(net) and tuple(loaded.widths) == tuple(net.widths) == tuple(info["widths"])
    x = torch.randn(3, *CIFAR)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
    # a pruned network is rebuilt from its smaller widths
    keep = _random_keep(net.switch_points(), seed=4)
    pruned = prune_units(net, keep, CIFAR)
    save_checkpoint(tmp_path / "p.pt", pruned, model, "fake-cifar10", 10, CIFAR)
    again, _ = load_checkpoint(tmp_path / "p.pt")
    assert tuple(again.widths) == tuple(len(keep[p.name]) for p in net.switch_points())
    with torch.no_grad():
        torch.testing.assert_close(again(x), pruned(x), rtol=0, atol=0)


# --- discovery on other networks ---------------------------------------------------------------

RESNET18_PRUNABLE = [f"layer{s}.{b}.conv1" for s in (1, 2, 3, 4) for b in (0, 1)]


def test_resnet18_discovery_is_the_first_conv_of_every_block_and_surgery_is_exact():
    torch.manual_seed(0)
    net = _ready(torchvision.models.resnet18(num_classes=10))
    points = discover_switch_points(net, CIFAR)
    names = _names(net)
    assert [p.name for p in points] == RESNET18_PRUNABLE
    assert [names[p.hooked] for p in points] == [n.replace("conv1", "bn1") for n in RESNET18_PRUNABLE]
    why = {f.name: f.reason for f in analyse_layers(net, CIFAR)}
    assert why["fc"] == "produces the network output"
    for tied in ("conv1", "layer1.0.conv2", "layer2.0.conv2", "layer2.0.downsample.0", "layer4.1.conv2"):
        assert "tied to" in why[tied], (tied, why[tied])
    assert switch_points(net, CIFAR) == points  # the fallback of a network that declares nothing
    _check_surgery(net, CIFAR, points, seeds=(0,))


class ConcatNet(nn.Module):
    """Two branches concatenated along the channels: a (conv-BN-ReLU) and b (conv-ReLU), then c."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(3, 5, 1)
        self.c = nn.Conv2d(9, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x):
        h = torch.cat([F.relu(self.bn_a(self.a(x))), F.relu(self.b(x))], dim=1)
        h = F.max_pool2d(F.relu(self.c(h)), 2)
        return self.fc(torch.flatten(h, 1))


def test_concatenation_model_discovery_and_surgery():
    torch.manual_seed(2)
    net = _ready(ConcatNet())
    shape = (3, 8, 8)
    points = discover_switch_points(net, shape)
    assert [(p.name, p.hooked) for p in points] == [("a", net.bn_a), ("b", net.b), ("c", net.c)]
    pruned, keep = _check_surgery(net, shape, points, seeds=(0, 1, 2))
    assert pruned.c.in_channels == len(keep["a"]) + len(keep["b"])


class OddNet(nn.Module):
    """Layers whose units cannot be zeroed exactly, and one whose switch sits on a later batch-norm."""

    def __init__(self) -> None:
        super().__init__()
        self.sig = nn.Conv2d(3, 4, 3, padding=1)  # → sigmoid: a removed unit would give 0.5, not 0
        self.late = nn.Conv2d(4, 4, 3, padding=1)  # → ReLU → BN: switch after the BN
        self.bn_late = nn.BatchNorm2d(4)
        self.two = nn.Conv2d(4, 4, 3, padding=1)  # → BN → ReLU → BN: two batch-norms
        self.bn_two1, self.bn_two2 = nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.out = nn.Conv2d(4, 10, 1)

    def forward(self, x):
        h = torch.sigmoid(self.sig(x))
        h = self.bn_late(F.relu(self.late(h)))
        h = self.bn_two2(F.relu(self.bn_two1(self.two(h))))
        return self.out(h).mean((2, 3))


def test_discovery_leaves_out_what_cannot_be_zeroed_and_names_the_reason():
    torch.manual_seed(3)
    net = _ready(OddNet())
    shape = (3, 6, 6)
    why = {f.name: f.reason for f in analyse_layers(net, shape)}
    assert "SigmoidBackward" in why["sig"]
    assert why["late"] is None
    assert "two batch-norms" in why["two"]
    assert "network output" in why["out"]
    points = discover_switch_points(net, shape)
    assert [(p.name, p.hooked) for p in points] == [("late", net.bn_late)]
    _check_surgery(net, shape, points)


def test_left_out_layers_name_every_unswitched_layer_with_its_reason():
    net = OddNet()
    shape = (3, 6, 6)
    left = left_out_layers(net, shape, discover_switch_points(net, shape))
    assert list(left) == ["sig", "two", "out"]  # call order; "late" is switched
    assert "SigmoidBackward" in left["sig"] and "two batch-norms" in left["two"] and "network output" in left["out"]
    lenet = build_model("lenet5")
    chosen = [p for p in switch_points(lenet) if p.name in ("conv2", "fc1")]
    assert left_out_layers(lenet, (1, 28, 28), chosen) == {"conv1": NOT_NAMED, "fc2": NOT_NAMED,
                                                           "fc3": "produces the network output"}


class ResidualIntoDepthwise(nn.Module):
    """stem and a tied by a residual addition whose sum feeds a depthwise (grouped) convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.dw, self.mid = nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Linear(6, 10)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        z = torch.relu(self.dw(h + self.a(h)))
        return self.head(torch.relu(self.mid(z)).mean((2, 3)))


def test_a_layer_left_out_for_two_reasons_is_told_both():
    from pyro_dirichlet_prune import SwitchModel

    model = SwitchModel(ResidualIntoDepthwise(), (1, 8, 8), num_data=4)
    assert model.layers == ["mid"]
    left = model.left_out_layers()
    assert left["a"] == ("its units are tied to those of stem (a residual addition or another shared use); "
                         "its units feed the grouped convolution dw")
    assert left["stem"].startswith("its units are tied to those of a ") and left["stem"].endswith("grouped convolution dw")
    assert left["dw"] == "it is a grouped convolution" and left["head"] == "produces the network output"


def test_named_layers_are_checked():
    net = torchvision.models.resnet18(num_classes=10)
    points = discover_switch_points(net, CIFAR, layers=["layer2.1.conv1", "layer1.0.conv1"])
    assert [p.name for p in points] == ["layer1.0.conv1", "layer2.1.conv1"]  # in forward order
    for layers, match in ((["layer9.conv1"], "no layer named"), (["layer1.0.bn1"], "not a Conv2d or Linear"),
                          (["layer1.0.conv2"], "cannot be pruned on its own: its units are tied"),
                          (["fc"], "cannot be pruned on its own: produces the network output"),
                          (["layer1.0.conv1", "layer1.0.conv1"], "more than once")):
        with pytest.raises(UserError, match=match):
            discover_switch_points(net, CIFAR, layers=layers)


def test_discovery_leaves_the_network_as_it_was():
    net = TinyUserCNN()
    net.train()
    for p in net.features[0].parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    points = discover_switch_points(net, CIFAR)
    assert [p.name for p in points] == ["features.0", "features.4", "head.1"]
    assert points[0].hooked is net.features[1]
    assert net.training and not any(p.requires_grad for p in net.features[0].parameters())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    with pytest.raises(UserError, match="could not trace"):
        discover_switch_points(net, (1, 28, 28))
    with pytest.raises(TypeError, match="input_shape was not given"):
        switch_points(net)


def test_lenet_discovery_matches_its_declared_points():
    net = build_model("lenet5")
    assert [(p.name, p.module, p.hooked) for p in discover_switch_points(net, (1, 28, 28))] == \
        [(p.name, p.module, p.hooked) for p in net.switch_points()]


# --- sizes -------------------------------------------------------------------------------------

def test_macs_of_one_conv_and_one_linear_layer_match_hand_counts():
    conv = nn.Conv2d(3, 5, 3, stride=2)  # 9x9 input → 4x4 outputs, each 3·3·3 taps, 5 channels
    assert count_macs(conv, (3, 9, 9)) == 4 * 4 * 5 * 27 == 2160
    padded = nn.Conv2d(3, 5, 3, padding=1, bias=False)  # 8x8 outputs
    assert count_macs(padded, (3, 8, 8)) == 8 * 8 * 5 * 27
    lin = nn.Linear(7, 4)
    assert count_macs(lin, (7,)) == 28
    seq = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 4))
    assert count_macs(seq, (3, 9, 9)) == 2160 + 80 * 4
    assert count_params(seq) == (5 * 27 + 5) + (80 * 4 + 4)


# --- batch-norm and switches -------------------------------------------------------------------

def test_a_switch_before_batchnorm_in_training_mode_is_undone_and_after_it_in_eval_mode_is_not():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
    net = nn.Sequential(conv, bn, nn.ReLU(), nn.Flatten(), nn.Linear(6 * 5 * 5, 4))
    randomise_batchnorms(net)
    x = torch.randn(16, 3, 5, 5)
    scale = torch.rand(6, generator=torch.Generator().manual_seed(1)) * 1.5 + 0.5  # in [0.5, 2]

    # (a) on the conv, in training mode: the normalisation divides the switch out again
    before = SwitchedNetwork(net, [SwitchPoint("conv", conv)])
    net.train()
    with torch.no_grad():
        plain = before(x)
        with before.scaled({"conv": scale}):
            switched = before(x)
    torch.testing.assert_close(switched, plain, rtol=1e-4, atol=1e-4)

    # (b) after the batch-norm, in eval mode (as during switch learning): the switch counts
    after = SwitchedNetwork(net, [SwitchPoint("conv", conv, bn)])
    net.eval()
    with torch.no_grad():
        plain = after(x)
        with after.scaled({"conv": scale}):
            switched = after(x)
        with after.scaled({"conv": torch.zeros(6)}):
            zeroed = after(x)
    assert (switched - plain).abs().max() > 0.1
    expected = net[4](torch.flatten(torch.zeros(16, 6, 5, 5), 1))  # every unit zeroed: only fc's bias
    torch.testing.assert_close(zeroed, expected)


def test_switch_learning_keeps_batchnorms_in_eval_mode():
    torch.manual_seed(0)
    net = build_model("vgg16", TINY_VGG)
    randomise_batchnorms(net)
    net.train()
    stats = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    g = torch.Generator().manual_seed(0)
    train = Split(torch.randn(32, *CIFAR, generator=g), torch.randint(0, 10, (32,), generator=g))
    switched = SwitchedNetwork(net)
    fit = fit_switches(switched, train, SwitchConfig(epochs=1, batch_size=16, schedule="joint"))
    assert len(fit.losses) == 2 and not net.training
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in stats.items())
