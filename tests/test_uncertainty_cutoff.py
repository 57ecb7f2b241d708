"""The uncertainty and budget cut-offs: P(D·s < tau) from the posterior (exact Beta CDF against
Monte Carlo), the keep rule P >= 1 - delta with its never-empty guard, and the budget search
against an exhaustive greedy reference on LeNet-5's hand-counted MACs and params."""
from __future__ import annotations


import pytest
import torch
from torch.distributions import Dirichlet

from pyro_dirichlet_prune.errors import UserError
from pyro_dirichlet_prune.inference.posterior import SwitchPosterior, dirichlet_posterior
from pyro_dirichlet_prune.models import build_model
from pyro_dirichlet_prune.pruning.budget import budget_keep, size_function
from pyro_dirichlet_prune.pruning.cutoff import removal_order, uncertainty_keep

from helpers import lenet5_macs, lenet5_params


def test_prob_below_exact_matches_dirichlet_draws():
    """P(D·s_j < tau) from the Beta CDF equals the fraction of 200k Dirichlet draws below tau/D."""
    phi = {"a": torch.tensor([0.2, 1.5, 6.0, 30.0], dtype=torch.float64), "b": torch.tensor([0.07, 3.0, 3.0], dtype=torch.float64)}
    post = dirichlet_posterior(phi)
    torch.manual_seed(1)
    for tau in (0.1, 0.5, 1.0, 2.5):
        exact = post.prob_below(tau)
        for layer, p in phi.items():
            s = Dirichlet(p).sample((200_000,))
            empirical = (p.numel() * s < tau).double().mean(0)
            torch.testing.assert_close(exact[layer], empirical, rtol=0, atol=4e-3)
    with pytest.raises(ValueError):
        post.prob_below(0.0)


def test_prob_below_monte_carlo_uses_stored_draws():
    draws = {"a": torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.45, 0.05], [0.2, 0.3, 0.5], [0.9, 0.05, 0.05]], dtype=torch.float64)}
    post = SwitchPosterior("normal", 0.95, {"a": draws["a"].mean(0)}, {}, {}, exact=False, samples=draws)
    # D·s < 0.5 means s < 1/6: column 0 never, column 1 in 1 of 4 draws, column 2 in 3 of 4
    torch.testing.assert_close(post.prob_below(0.5)["a"], torch.tensor([0.0, 0.25, 0.75], dtype=torch.float64))


def test_uncertainty_keep_rule_and_empty_layer_guard():
    p = {"x": torch.tensor([0.99, 0.2, 0.96, 0.5]), "y": torch.tensor([0.97, 0.999, 0.98])}
    means = {"x": torch.tensor([0.1, 0.4, 0.1, 0.4]), "y": torch.tensor([0.2, 0.1, 0.7])}
    keep, guarded = uncertainty_keep(p, means, delta=0.05)
    assert keep == {"x": [1, 3], "y": [2]}  # y: every unit qualified; its highest mean stays
    assert guarded == ["y"]
    keep, guarded = uncertainty_keep(p, means, delta=0.01)
    assert keep == {"x": [1, 2, 3], "y": [0, 2]} and guarded == []
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(UserError):
            uncertainty_keep(p, means, bad)


def test_uncertainty_cutoff_grows_with_tau_and_delta():
    """More units go as tau grows (a looser notion of unimportant) and as delta grows (less
    confidence required): the kept sets are nested."""
    g = torch.Generator().manual_seed(0)
    phi = {"a": torch.rand(12, generator=g, dtype=torch.float64) * 30 + 0.05}
    post = dirichlet_posterior(phi)
    kept = [set(uncertainty_keep(post.prob_below(t), post.means, d)[0]["a"]) for t, d in [(0.2, 0.05), (0.5, 0.05), (0.5, 0.3), (1.0, 0.3)]]
    for small, big in zip(kept[1:], kept[:-1]):
        assert small <= big


def test_removal_order_by_evidence_then_mean():
    p = {"x": torch.tensor([0.9, 1.0, 0.1]), "y": torch.tensor([1.0, 0.5])}
    means = {"x": torch.tensor([0.3, 0.2, 0.5]), "y": torch.tensor([0.05, 0.95])}
    # P desc; ties (x1, y0 at P=1) broken by D·mean: x1 0.6, y0 0.1 → y0 first
    assert removal_order(p, means) == [("y", 0), ("x", 1), ("x", 0), ("y", 1), ("x", 2)]


def _lenet_size(counts):
    c = [counts[k] for k in ("conv1", "conv2", "fc1", "fc2")]
    return {"macs": lenet5_macs(*c), "params": lenet5_params(*c)}


def test_size_function_counts_lenet_by_hand():
    size = size_function(build_model("lenet5").eval(), (1, 28, 28))
    for arch in [(10, 20, 100, 25), (6, 8, 40, 20), (1, 1, 1, 1)]:
        counts = dict(zip(("conv1", "conv2", "fc1", "fc2"), arch))
        assert size(counts) == _lenet_size(counts)


@pytest.mark.parametrize("target", [{"macs": 169_320}, {"params": 7_554}, {"macs": 300_000, "params": 5_000}, {"macs": 498_750}])
def test_budget_keep_is_the_shortest_prefix_that_fits(target):
    """Against a linear scan of the same removal order: the bisection stops at the first prefix
    that fits every budget, never empties a layer, and reports that prefix's size."""
    widths = {"conv1": 10, "conv2": 20, "fc1": 100, "fc2": 25}
    g = torch.Generator().manual_seed(3)
    p = {k: torch.rand(d, generator=g) for k, d in widths.items()}
    means = {k: torch.full((d,), 1.0 / d) for k, d in widths.items()}
    order = removal_order(p, means)
    keep, size = budget_keep(order, widths, _lenet_size, target)
    assert all(len(v) >= 1 for v in keep.values())
    assert all(size[k] <= v for k, v in target.items()) and size == _lenet_size({k: len(v) for k, v in keep.items()})
    # linear reference
    counts, removed = dict(widths), 0
    for layer, _ in order:
        if all(_lenet_size(counts)[k] <= v for k, v in target.items()):
            break
        if counts[layer] > 1:
            counts[layer] -= 1
            removed += 1
    assert {k: len(v) for k, v in keep.items()} == counts
    assert sum(widths.values()) - sum(len(v) for v in keep.values()) == removed


def test_budget_keep_refuses_unreachable_and_bad_budgets():
    widths = {"conv1": 10, "conv2": 20, "fc1": 100, "fc2": 25}
    order = [(k, j) for k, d in widths.items() for j in range(d)]
    with pytest.raises(UserError, match="cannot be met"):
        budget_keep(order, widths, _lenet_size, {"macs": 1000})
    for bad in ({}, {"flops": 10}, {"macs": 0}, {"params": 2.5}):
        with pytest.raises(UserError):
            budget_keep(order, widths, _lenet_size, bad)
