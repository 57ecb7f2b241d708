"""Physical pruning equals masking: the network with units removed computes what the full
network computes with those units' pre-activations multiplied by 0, its tensors really
shrink, and its size is the hand count for the smaller architecture."""
from __future__ import annotations

import random

import pytest
import torch

from helpers import caffe_macs, caffe_params, lenet5_macs, lenet5_params
from pyro_dirichlet_prune.metrics import count_macs, count_params
from pyro_dirichlet_prune.models import SwitchedNetwork, build_model
from pyro_dirichlet_prune.pruning.surgery import mask_scales, prune_units

SHAPE = (1, 28, 28)


def _keep_sets(widths: dict[str, int], seed: int) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)
    sets = [
        {n: list(range(d)) for n, d in widths.items()},  # keep all
        {n: [rng.randrange(d)] for n, d in widths.items()},  # keep one unit per layer
    ]
    for _ in range(3):
        sets.append({n: sorted(rng.sample(range(d), rng.randint(1, d))) for n, d in widths.items()})
    sets.append({n: sorted(rng.sample(range(d), rng.randint(1, d))) for n, d in list(widths.items())[1:2]})  # one layer only
    return sets


@pytest.mark.parametrize("model", ["lenet5", "lenet5-caffe"])
def test_pruned_equals_masked(model):
    torch.manual_seed(0)
    net = build_model(model).eval()
    points = net.switch_points()
    widths = {p.name: p.width for p in points}
    x = torch.randn(16, *SHAPE)
    for keep in _keep_sets(widths, seed=len(model)):
        pruned = prune_units(net, keep, SHAPE)
        sw = SwitchedNetwork(net)
        with torch.no_grad(), sw.scaled(mask_scales(points, keep)):
            masked = sw(x)
        with torch.no_grad():
            out = pruned(x)
        torch.testing.assert_close(out, masked, atol=1e-5, rtol=1e-5)

        new_widths = tuple(len(keep.get(n, range(d))) for n, d in widths.items())
        assert tuple(pruned.widths) == new_widths
        # shapes and values: the kept rows/columns of the original tensors
        k1 = keep.get("conv1", list(range(widths["conv1"])))
        k2 = keep.get("conv2", list(range(widths["conv2"])))
        kf = keep.get("fc1", list(range(widths["fc1"])))
        assert pruned.conv1.weight.shape == (len(k1), 1, 5, 5)
        assert torch.equal(pruned.conv1.weight, net.conv1.weight[k1])
        assert torch.equal(pruned.conv2.weight, net.conv2.weight[k2][:, k1])
        assert torch.equal(pruned.conv2.bias, net.conv2.bias[k2])
        cols = [c * 16 + p for c in k2 for p in range(16)]  # flatten order: channel-major
        assert torch.equal(pruned.fc1.weight, net.fc1.weight[kf][:, cols])
        if model == "lenet5":
            assert count_params(pruned) == lenet5_params(*new_widths)
            assert count_macs(pruned, SHAPE) == lenet5_macs(*new_widths)
        else:
            assert count_params(pruned) == caffe_params(*new_widths)
            assert count_macs(pruned, SHAPE) == caffe_macs(*new_widths)
    # the original network is untouched
    assert tuple(net.widths) == tuple(widths.values())


def test_base_sizes_match_paper_counts():
    net = build_model("lenet5")
    assert count_params(net) == 40165 == lenet5_params(10, 20, 100, 25)
    assert count_macs(net, SHAPE) == 498750 == lenet5_macs(10, 20, 100, 25)
    caffe = build_model("lenet5-caffe")
    assert count_params(caffe) == caffe_params(20, 50, 500) == 431080  # 520 + 25050 + 400500 + 5010
    assert count_macs(caffe, SHAPE) == caffe_macs(20, 50, 500)


def test_pruning_a_frozen_network_as_the_pipeline_does():
    """A network whose weights the user froze (requires_grad False) prunes to the same network,
    which keeps the frozen flags; a switched view leaves the flags alone outside a forward."""
    torch.manual_seed(1)
    net = build_model("lenet5").eval()
    for p in net.parameters():
        p.requires_grad_(False)
    keep = {"conv1": [0, 2, 5], "conv2": list(range(0, 20, 3)), "fc1": list(range(40)), "fc2": [1, 4, 9, 20]}
    pruned = prune_units(net, keep, SHAPE)
    assert tuple(pruned.widths) == (3, 7, 40, 4)
    assert not any(p.requires_grad for p in pruned.parameters())
    x = torch.randn(4, *SHAPE)
    sw2 = SwitchedNetwork(net)
    with torch.no_grad(), sw2.scaled(mask_scales(net.switch_points(), keep)):
        masked = sw2(x)
    torch.testing.assert_close(pruned(x), masked, atol=1e-5, rtol=1e-5)


def test_prune_units_rejects_bad_keep_sets():
    net = build_model("lenet5", widths=(2, 3, 4, 2))
    with pytest.raises(ValueError, match="keep: no prunable layer named 'fc3'"):
        prune_units(net, {"fc3": [0]}, SHAPE)
    for bad in ([5], [-1]):
        with pytest.raises(ValueError):
            prune_units(net, {"conv2": bad}, SHAPE)


def test_mask_scales_are_zero_one_indicators():
    net = build_model("lenet5")
    scales = mask_scales(net.switch_points(), {"conv1": [1, 3], "fc2": [0]})
    assert set(scales) == {"conv1", "fc2"}
    assert scales["conv1"].tolist() == [0, 1, 0, 1, 0, 0, 0, 0, 0, 0]
    assert scales["fc2"].tolist() == [1] + [0] * 24
