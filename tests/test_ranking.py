"""The rankings behind one interface (``pruning.ranking``): every registered ranking scores every
unit of the shipped LeNet-5 with a finite number and leaves the network as it was; L1 equals a
hand computation; the posterior-mean ranking equals the normalised concentrations of a switch fit
made independently with the same settings and seed, and ``prob-below`` the Beta tail of those
concentrations; a fitted posterior is used only by the rankings of its guide; unknown names and
options are refused naming them."""
from __future__ import annotations

import argparse
import copy
import dataclasses

import pytest
import torch
from scipy.stats import beta as beta_dist

from pyro_dirichlet_prune import search
from pyro_dirichlet_prune.data import Split
from pyro_dirichlet_prune.errors import UserError
from pyro_dirichlet_prune.inference.svi import SwitchConfig, fit_switches
from pyro_dirichlet_prune.models import SwitchedNetwork, load_pretrained
from pyro_dirichlet_prune.pruning.cutoff import keep_top
from pyro_dirichlet_prune.pruning.ranking import RANKINGS, FittedSwitches, Ranking, get_ranking

SWITCH = SwitchConfig(batch_size=32, epochs=1)  # 2 steps per layer on 64 examples


@pytest.fixture(scope="module")
def lenet():
    return load_pretrained("lenet5", "mnist")


@pytest.fixture(scope="module")
def train():
    g = torch.Generator().manual_seed(0)
    return Split(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))


def test_every_registered_ranking_scores_every_unit_and_leaves_the_network(lenet, train):
    net = lenet
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    widths = {p.name: p.width for p in net.switch_points()}
    for name in RANKINGS:
        ranking = get_ranking(name, switch=SWITCH, fisher_batches=2, fisher_batch_size=16)
        assert isinstance(ranking, Ranking)
        scores = ranking(net, None, train, seed=1)
        assert {k: v.numel() for k, v in scores.items()} == widths, name
        assert all(v.dtype == torch.float64 and v.dim() == 1 and bool(torch.isfinite(v).all())
                   for v in scores.values()), name
        keep_top(scores, {k: 1 for k in widths})
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert {n: p.requires_grad for n, p in net.named_parameters()} == flags
    assert not any(m._forward_hooks for m in net.modules())


def test_l1_and_l2_equal_a_hand_computation(lenet):
    l1, l2 = get_ranking("l1")(lenet), get_ranking("l2")(lenet)
    for p in lenet.switch_points():
        w = p.module.weight.detach().double()
        for j in range(p.width):
            row = w[j].flatten().tolist()
            assert float(l1[p.name][j]) == pytest.approx(sum(abs(v) for v in row), rel=1e-12)
            assert float(l2[p.name][j]) == pytest.approx(sum(v * v for v in row) ** 0.5, rel=1e-12)


def test_posterior_rankings_equal_the_formulas_of_an_independent_fit(lenet, train):
    ranking = get_ranking("dirichlet", switch=dataclasses.replace(SWITCH, guide="normal"))
    scores = ranking(lenet, None, train, seed=3)
    assert ranking.details["switch_config"]["guide"] == "dirichlet" and ranking.details["steps"] == 8
    switched = SwitchedNetwork(copy.deepcopy(lenet))
    fit = fit_switches(switched, train, dataclasses.replace(SWITCH, seed=3))
    phi = fit.concentrations
    for layer, a in phi.items():
        assert torch.equal(scores[layer], (a / a.sum()).double()), layer  # E[s_lj] = phi_lj / phi_l0
        assert not torch.allclose(scores[layer], torch.full_like(scores[layer], 1 / a.numel()))
    tau = 0.7
    prob = get_ranking("prob-below", switch=SWITCH, tau=tau)(lenet, None, train, seed=3)
    for layer, a in phi.items():
        a = a.double().numpy()
        want = 1 - beta_dist.cdf(tau / a.size, a, a.sum() - a)  # 1 - P(D_l s_lj < tau), s_lj ~ Beta
        assert prob[layer].numpy() == pytest.approx(want, abs=1e-6), layer


def test_a_fitted_posterior_serves_only_the_rankings_of_its_guide(lenet, train):
    widths = {p.name: p.width for p in lenet.switch_points()}
    means = {k: torch.linspace(1, 2, d) / torch.linspace(1, 2, d).sum() for k, d in widths.items()}
    fitted = FittedSwitches(dataclasses.replace(SWITCH, guide="dirichlet"), means)
    for name in ("posterior-mean", "dirichlet"):
        scores = get_ranking(name, fitted=fitted)(lenet, None, train)
        assert all(torch.equal(scores[k], means[k].double()) for k in widths), name
    other = get_ranking("dirichlet-mean", fitted=fitted)
    scores = other(lenet, None, train)
    assert other.details["switch_config"]["guide"] == "dirichlet-mean"
    assert not any(torch.equal(scores[k], means[k].double()) for k in widths)
    with pytest.raises(ValueError, match="fitted"):
        get_ranking("prob-below", fitted=fitted)  # no posterior to read P(D s < tau) from


def test_the_learned_weights_ranking_reads_a_fit_whose_weights_learned(lenet, train):
    ranking = get_ranking("dirichlet-weights", switch=SWITCH)
    scores = ranking(lenet, None, train, seed=2)
    cfg = ranking.details["switch_config"]
    assert (cfg["weight_scale"], cfg["scale"], cfg["schedule"], cfg["guide"]) == (0.05, "dim", "joint", "dirichlet")
    want = dataclasses.replace(SWITCH, seed=2, weight_scale=0.05, scale="dim", schedule="joint")
    fit = fit_switches(SwitchedNetwork(copy.deepcopy(lenet)), train, want)
    for layer, a in fit.concentrations.items():
        assert torch.equal(scores[layer], (a / a.sum()).double()), layer
    frozen = get_ranking("dirichlet", switch=dataclasses.replace(want, weight_scale=None))(lenet, None, train, seed=2)
    assert not all(torch.equal(frozen[k], scores[k]) for k in scores)  # the weights' learning moved the means
    # a switch setting that learns weights is kept; a posterior of frozen weights is not reused
    own = get_ranking("dirichlet-weights", switch=dataclasses.replace(want, weight_scale=0.2))
    assert own.switch.weight_scale == 0.2
    widths = {p.name: p.width for p in lenet.switch_points()}
    fitted = FittedSwitches(dataclasses.replace(SWITCH, guide="dirichlet"), {k: torch.ones(d) / d for k, d in widths.items()})
    assert get_ranking("dirichlet-weights", fitted=fitted).fitted is None


def test_unknown_names_and_options_are_refused():
    with pytest.raises(ValueError, match="'taylor'.*posterior-mean.*random"):
        get_ranking("taylor")
    with pytest.raises(TypeError, match="bogus"):
        get_ranking("l1", bogus=1)
    with pytest.raises(ValueError, match="tau"):
        get_ranking("prob-below", tau=0)
    with pytest.raises(ValueError, match="train"):
        get_ranking("fisher")(load_pretrained("lenet5", "mnist"))
    with pytest.raises(ValueError, match="seed"):
        get_ranking("random")(load_pretrained("lenet5", "mnist"), seed=-1)


def test_the_search_builds_its_rankings_from_the_registry():
    cfg = search.SearchConfig(methods=["dirichlet-mean", "prob-below", "l1"], switch={"scale": "simplex"})
    cfg.validate()
    assert [type(cfg.ranking(m)).__name__ for m in cfg.methods] == ["PosteriorMean", "ProbBelow", "WeightNorm"]
    assert cfg.ranking("dirichlet-mean").switch.guide == "dirichlet-mean"
    with pytest.raises(UserError, match="dirichlet-mean: per-example"):
        search.SearchConfig(methods=["dirichlet-mean"], switch={"sampling": "per-example"}).validate()
    # ... and so does its command line: any registered name, as a search method
    from pyro_dirichlet_prune.cli import parse_methods

    assert parse_methods("prob-below,l1,posterior-mean") == ["prob-below", "l1", "posterior-mean"]
    with pytest.raises(argparse.ArgumentTypeError, match="taylor"):
        parse_methods("l1,taylor")
