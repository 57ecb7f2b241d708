"""Baseline unit scores: weight norms equal a hand computation, Fisher scores equal a direct
per-example computation of activations × gradients, a unit cut from the logits scores zero,
random scores follow their seed, and no scorer changes the network."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_dirichlet_prune.data import Split
from pyro_dirichlet_prune.models import build_model
from pyro_dirichlet_prune.models.switch_points import SwitchPoint
from pyro_dirichlet_prune.pruning.baselines import BASELINES, fisher_scores
from pyro_dirichlet_prune.pruning.cutoff import keep_top
from pyro_dirichlet_prune.pruning.ranking import get_ranking


def unit_scores(method: str, net: nn.Module, split: Split | None = None, seed: int = 0, **options) -> dict:
    """A baseline's scores through the registry of rankings (``pruning.ranking``)."""
    return get_ranking(method, **options)(net, None, split, seed=seed)


class TinyNet(nn.Module):
    """conv3x3(1→3) → ReLU → flatten (3·4·4) → fc1(48→4) → ReLU → fc2(4→3)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc1 = nn.Linear(48, 4)
        self.fc2 = nn.Linear(4, 3)

    def switch_points(self) -> list[SwitchPoint]:
        return [SwitchPoint("conv", self.conv), SwitchPoint("fc1", self.fc1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(F.relu(self.conv(x)).flatten(1))))


def _tiny(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet().eval()


def _split(n: int = 12, seed: int = 1) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def _direct_fisher(net: TinyNet, split: Split) -> dict[str, torch.Tensor]:
    """0.5 · mean_n (sum_p a_njp · dL_n/da_njp)^2, one example at a time with explicit activations."""
    terms = {"conv": [], "fc1": []}
    for n in range(len(split)):
        x, y = split.x[n : n + 1], split.y[n : n + 1]
        a1 = F.conv2d(x, net.conv.weight, net.conv.bias)
        a2 = F.linear(F.relu(a1).flatten(1), net.fc1.weight, net.fc1.bias)
        loss = F.cross_entropy(F.linear(F.relu(a2), net.fc2.weight, net.fc2.bias), y)
        g1, g2 = torch.autograd.grad(loss, [a1, a2])
        terms["conv"].append((a1 * g1).sum((2, 3))[0].double())
        terms["fc1"].append((a2 * g2)[0].double())
    return {k: 0.5 * torch.stack(v).pow(2).mean(0) for k, v in terms.items()}


def test_weight_norms_equal_hand_computation():
    net = _tiny()
    l1, l2 = unit_scores("l1", net), unit_scores("l2", net)
    for name, module in (("conv", net.conv), ("fc1", net.fc1)):
        w = module.weight.detach().tolist()
        rows = [w[j] for j in range(len(w))]
        flat = [list(_flatten(r)) for r in rows]
        assert l1[name].tolist() == pytest.approx([sum(abs(v) for v in r) for r in flat], rel=1e-12)
        assert l2[name].tolist() == pytest.approx([math.sqrt(sum(v * v for v in r)) for r in flat], rel=1e-12)
        assert l1[name].shape == (module.weight.shape[0],)


def _flatten(x):
    if isinstance(x, list):
        for item in x:
            yield from _flatten(item)
    else:
        yield x


def test_bias_is_not_included():
    net = _tiny()
    before = unit_scores("l1", net)
    with torch.no_grad():
        net.conv.bias.add_(5.0)
    assert torch.equal(before["conv"], unit_scores("l1", net)["conv"])


def test_fisher_equals_direct_per_example_computation():
    net, split = _tiny(), _split(12)
    # 3 batches of 5 cover all 12 examples: the sampled set is the whole split, in any order
    got = fisher_scores(net, split, num_batches=3, batch_size=5, seed=3)
    want = _direct_fisher(net, split)
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-4, atol=1e-10), name
        assert bool((want[name] > 0).any())


def test_fisher_scores_zero_for_units_cut_from_the_logits():
    net, split = _tiny(), _split(12)
    before = unit_scores("fisher", net, split, seed=0, fisher_batches=2, fisher_batch_size=6)
    j, k = int(before["fc1"].argmax()), int(before["conv"].argmax())  # the most important units
    assert float(before["fc1"][j]) > 0 and float(before["conv"][k]) > 0
    with torch.no_grad():
        net.fc2.weight[:, j] = 0.0  # fc1 unit j feeds nothing
        net.fc1.weight[:, k * 16 : (k + 1) * 16] = 0.0  # conv channel k feeds nothing
    s = unit_scores("fisher", net, split, seed=0, fisher_batches=2, fisher_batch_size=6)
    assert float(s["fc1"][j]) == 0.0 and float(s["conv"][k]) == 0.0
    assert float(s["fc1"].sum()) > 0 and float(s["conv"].sum()) > 0


def test_fisher_draws_its_batches_by_seed():
    net, split = _tiny(), _split(40)
    a = fisher_scores(net, split, num_batches=1, batch_size=8, seed=0)
    b = fisher_scores(net, split, num_batches=1, batch_size=8, seed=0)
    c = fisher_scores(net, split, num_batches=1, batch_size=8, seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_random_is_reproducible_by_seed():
    net = build_model("lenet5")
    a, b, c = (unit_scores("random", net, seed=s) for s in (7, 7, 8))
    for name, d in zip(a, net.widths):
        assert a[name].shape == (d,) and bool(((a[name] >= 0) & (a[name] < 1)).all())
        assert torch.equal(a[name], b[name])
        assert not torch.equal(a[name], c[name])


def test_no_scorer_changes_the_network():
    torch.manual_seed(0)
    net = build_model("lenet5").train()
    net.fc2.weight.requires_grad_(False)  # a mix of flags must survive
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(30, 1, 28, 28, generator=g), torch.randint(0, 10, (30,), generator=g))
    for method in BASELINES:
        scores = unit_scores(method, net, split, seed=1, fisher_batches=2, fisher_batch_size=16)
        assert {k: v.numel() for k, v in scores.items()} == dict(zip(["conv1", "conv2", "fc1", "fc2"], net.widths))
        keep_top(scores, {"conv1": 3, "conv2": 4, "fc1": 5, "fc2": 6})  # the posterior means' interface
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert {n: p.requires_grad for n, p in net.named_parameters()} == flags
    assert all(p.grad is None for p in net.parameters())
    assert net.training
    assert not any(m._forward_hooks for m in net.modules())


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match="l1, l2, fisher, greedy, random"):
        unit_scores("taylor", _tiny())
    with pytest.raises(ValueError, match="training split"):
        unit_scores("fisher", _tiny())
