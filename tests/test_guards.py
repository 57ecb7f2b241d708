"""Numerical guards, each triggered by an input built to cause it: a non-finite ELBO, a layer
whose concentrations all collapse to the floor, a cut-off that would empty a layer, and a
pruned network that no longer runs or computes another function."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_dirichlet_prune import cli
from pyro_dirichlet_prune.data import Split
from pyro_dirichlet_prune.errors import NumericalError
from pyro_dirichlet_prune.inference.svi import SwitchConfig, fit_switches
from pyro_dirichlet_prune.models import SwitchedNetwork, build_model
from pyro_dirichlet_prune.models.switch_points import SwitchPoint
from pyro_dirichlet_prune.pruning.surgery import prune_units, verify_surgery

SHAPE = (1, 28, 28)


def _split(n=64, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return Split(x, (x[:, 0] > 0).long())


class TwoLayer(nn.Module):
    """hidden (switched) → out; ``dead=True`` cuts the hidden layer off the output."""

    def __init__(self, dead: bool = False, blow_up: bool = False) -> None:
        super().__init__()
        self.hidden = nn.Linear(6, 4)
        self.out = nn.Linear(4, 2)
        if dead:
            with torch.no_grad():
                self.out.weight.zero_()
        if blow_up:
            with torch.no_grad():
                self.hidden.weight.fill_(float("inf"))

    def switch_points(self):
        return [SwitchPoint("hidden", self.hidden)]

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x)))


def test_nonfinite_elbo_names_the_layer_and_step():
    net = TwoLayer(blow_up=True)  # inf weights → nan logits on the first step
    with pytest.raises(NumericalError, match=r"step 1 of switch learning \(hidden\).*logits are not finite on this batch"):
        fit_switches(SwitchedNetwork(net), _split(), SwitchConfig(batch_size=16))


def test_layer_collapsing_to_the_floor_is_detected():
    # The output ignores the layer, so only the KL acts on it; with alpha0 below the floor its
    # minimum lies below the floor and every concentration is driven onto it.
    net = TwoLayer(dead=True)
    cfg = SwitchConfig(batch_size=64, epochs=200, lr=0.5, alpha0=0.01, floor=0.05, init_concentration=0.2)
    with pytest.raises(NumericalError, match=r"all 4 concentrations of layer hidden collapsed to the floor 0.05 by step \d+"):
        fit_switches(SwitchedNetwork(net), _split(), cfg)


def test_healthy_layer_is_not_reported_collapsed():
    fit = fit_switches(SwitchedNetwork(TwoLayer()), _split(), SwitchConfig(batch_size=16, epochs=2))
    assert set(fit.concentrations) == {"hidden"}


def test_cutoff_that_empties_a_layer_is_refused():
    with pytest.raises(ValueError, match=r"keep\['conv2'\] is empty: a layer keeps at least one of its 20 units"):
        prune_units(build_model("lenet5"), {"conv2": []}, SHAPE)


def test_a_nonfinite_step_is_not_applied_and_the_last_good_state_survives():
    """Two good minibatches, then one whose inputs are NaN: ``fit`` raises, and the guide and its
    posterior are exactly those of a fit on the two good minibatches alone (the bad step was not
    applied), so a later ``evaluate`` of the posterior is finite."""
    import math

    from pyro_dirichlet_prune import DirichletGuide, SwitchModel, evaluate, fit, posterior_of

    split = _split()
    good = [(split.x[:16], split.y[:16]), (split.x[16:32], split.y[16:32])]
    bad = (torch.full_like(split.x[32:48], float("nan")), split.y[32:48])
    net = TwoLayer()
    guides = []
    for data in (good, good + [bad]):
        model = SwitchModel(net, num_data=64)
        guide = DirichletGuide(model)
        guides.append(guide)
        if len(data) == 2:
            fit(model, guide, data, seed=0, progress=False)
        else:
            with pytest.raises(NumericalError, match=r"the ELBO became non-finite \(loss nan\) at step 3 of switch "
                                                     r"learning \(hidden\); that step was not applied, the guide "
                                                     r"keeps the state of step 2"):
                fit(model, guide, data, seed=0, progress=False)
    reference, survived = (g.concentrations()["hidden"] for g in guides)
    assert torch.isfinite(survived).all() and not torch.equal(survived, torch.full((4,), 10.0, dtype=torch.float64))
    assert torch.equal(survived, reference)
    means = posterior_of(model, guides[1]).means["hidden"]
    assert math.isfinite(evaluate(net, split)["nll"]) and torch.isfinite(means).all()


class HardCodedView(nn.Module):
    """LeNet-like, but ``forward`` hard-codes the flattened size: surgery of conv2 breaks it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 5)
        self.conv2 = nn.Conv2d(4, 6, 5)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def switch_points(self):
        return [SwitchPoint("conv1", self.conv1), SwitchPoint("conv2", self.conv2)]

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.reshape(-1, 96))


def test_pruned_network_that_no_longer_runs_is_detected():
    net = HardCodedView()
    keep = {"conv2": [0, 2, 3]}
    pruned = prune_units(net, keep, SHAPE)  # the dependency graph cannot see the hard-coded 96
    with pytest.raises(NumericalError, match="no longer runs on inputs of shape"):
        verify_surgery(net, pruned, keep, SHAPE)


def test_surgery_that_computes_another_function_is_detected():
    net = build_model("lenet5").eval()
    keep = {"conv1": [0, 1, 2, 3, 4, 5], "fc1": list(range(40))}
    pruned = prune_units(net, keep, SHAPE)
    assert verify_surgery(net, pruned, keep, SHAPE) < 1e-5
    with torch.no_grad():
        pruned.fc2.bias.add_(0.5)  # a wrong network of the right shape
    with pytest.raises(NumericalError, match="differs from the masked network"):
        verify_surgery(net, pruned, keep, SHAPE)


def test_numerical_error_exits_3_with_one_line(tmp_path, capsys, monkeypatch):
    def boom(*a, **k):
        raise NumericalError("ELBO became nan at step 3 of switch learning (conv1): test")

    monkeypatch.setattr("pyro_dirichlet_prune.pipeline.fit_switches", boom)
    ckpt = tmp_path / "m.pt"
    from pyro_dirichlet_prune.models.checkpoint import save_checkpoint

    save_checkpoint(ckpt, build_model("lenet5"), "lenet5", "fake-mnist", 10, SHAPE)
    rc = cli.main(["prune", "--checkpoint", str(ckpt), "--dataset", "fake-mnist", "--val-size", "500",
                   "--arch", "6-8-40-20", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and len(err) == 1 and err[0].startswith("dirichlet-prune: numerical error:")
    assert not (tmp_path / "run").exists() and not (tmp_path / ".run.partial").exists()
