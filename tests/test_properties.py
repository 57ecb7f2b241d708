"""Property-based tests (hypothesis): random architecture strings, random small CNNs and
random keep-masks. Surgery either raises a clear error or yields a network whose outputs
equal the masked network's."""
from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pyro_dirichlet_prune.errors import UserError
from pyro_dirichlet_prune.models import SwitchedNetwork
from pyro_dirichlet_prune.models.switch_points import SwitchPoint
from pyro_dirichlet_prune.pruning.cutoff import parse_arch
from pyro_dirichlet_prune.pruning.surgery import mask_scales, prune_units

WIDTHS = {"conv1": 10, "conv2": 20, "fc1": 100, "fc2": 25}


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(max_size=20),
    st.lists(st.integers(-5, 130), min_size=0, max_size=6).map(lambda v: "-".join(map(str, v))),
))
def test_random_architecture_strings(arch):
    """Accepted exactly when the string is one count per layer, each ASCII digits within 1..D_l;
    every other string is refused with the message that names what is wrong."""
    parts = arch.strip().split("-")
    well_formed = all(p and all(c in "0123456789" for c in p) for p in parts)
    fits = well_formed and len(parts) == len(WIDTHS) and all(1 <= int(p) <= d for p, d in zip(parts, WIDTHS.values()))
    if not fits:
        why = ("is not a dash-separated list of integers" if not well_formed
               else f"has {len(parts)} widths but the network has 4" if len(parts) != len(WIDTHS) else "cannot keep")
        with pytest.raises(UserError, match=re.escape(why)):
            parse_arch(arch, WIDTHS)
        return
    kept = parse_arch(arch, WIDTHS)
    assert kept == {n: int(p) for n, p in zip(WIDTHS, parts)}


class RandomCNN(nn.Module):
    """conv blocks (conv3x3 → [batch-norm] → ReLU → [maxpool]) → flatten → hidden linears → classifier."""

    def __init__(self, convs, bn, pools, hidden, size=12, classes=3):
        super().__init__()
        self.blocks = nn.ModuleList()
        points, c_in = [], 2
        for i, (c, use_bn, pool) in enumerate(zip(convs, bn, pools)):
            conv = nn.Conv2d(c_in, c, 3, padding=1)
            norm = nn.BatchNorm2d(c) if use_bn else nn.Identity()
            self.blocks.append(nn.Sequential(conv, norm, nn.ReLU(), nn.MaxPool2d(2) if pool else nn.Identity()))
            points.append(SwitchPoint(f"conv{i}", conv, norm if use_bn else None))
            size = size // 2 if pool else size
            c_in = c
        self.linears = nn.ModuleList()
        f_in = c_in * size * size
        for j, h in enumerate(hidden):
            lin = nn.Linear(f_in, h)
            self.linears.append(lin)
            points.append(SwitchPoint(f"fc{j}", lin))
            f_in = h
        self.head = nn.Linear(f_in, classes)
        self._points = points

    def switch_points(self):
        return list(self._points)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        x = torch.flatten(x, 1)
        for lin in self.linears:
            x = torch.relu(lin(x))
        return self.head(x)


@st.composite
def cnn_and_keep(draw):
    n_conv = draw(st.integers(1, 3))
    convs = draw(st.lists(st.integers(1, 6), min_size=n_conv, max_size=n_conv))
    bn = draw(st.lists(st.booleans(), min_size=n_conv, max_size=n_conv))
    pools = draw(st.lists(st.booleans(), min_size=n_conv, max_size=n_conv))
    hidden = draw(st.lists(st.integers(1, 8), min_size=0, max_size=2))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    net = RandomCNN(convs, bn, pools, hidden)
    for m in net.modules():  # non-trivial batch-norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    net.eval()
    keep = {}
    for p in net.switch_points():
        if draw(st.booleans()):
            keep[p.name] = draw(st.lists(st.integers(0, p.width - 1), min_size=0, max_size=p.width, unique=True))
    return net, keep


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cnn_and_keep())
def test_surgery_on_random_cnns_equals_masked_network(case):
    net, keep = case
    shape = (2, 12, 12)
    try:
        pruned = prune_units(net, keep, shape)
    except ValueError as exc:  # a keep-set that empties a layer
        assert any(len(v) == 0 for v in keep.values()) and "is empty: a layer keeps at least one" in str(exc)
        return
    assert all(len(v) > 0 for v in keep.values())
    widths = {p.name: p.width for p in pruned.switch_points()}
    for name, kept in keep.items():
        assert widths[name] == len(kept)
    x = torch.randn(5, *shape)
    switched = SwitchedNetwork(net)
    with torch.no_grad(), switched.scaled(mask_scales(switched.points, keep)):
        expected = switched(x)
    with torch.no_grad():
        got = pruned(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
