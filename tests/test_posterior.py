"""The posterior object: exact Beta marginals of the Dirichlet guide against Monte Carlo,
Monte-Carlo intervals of an autoguide, the ELBO estimate, and the per-run figure."""
from __future__ import annotations

import pyro
import pytest
import torch
from torch.distributions import Dirichlet

from pyro_dirichlet_prune.data import Split
from pyro_dirichlet_prune.inference.guides import DirichletGuide
from pyro_dirichlet_prune.inference.posterior import dirichlet_posterior, estimate_elbo, monte_carlo_posterior
from pyro_dirichlet_prune.models import SwitchModel, SwitchedNetwork, build_model
from pyro_dirichlet_prune.plots import plot_posterior


def test_beta_marginal_intervals_match_dirichlet_samples():
    """s_j of Dirichlet(phi) is Beta(phi_j, phi0 - phi_j): the exact 2.5% / 97.5% quantiles
    agree with the empirical quantiles of 200k Dirichlet draws."""
    phi = {"a": torch.tensor([0.3, 2.0, 7.5, 40.0], dtype=torch.float64), "b": torch.tensor([0.06, 0.06, 5.0], dtype=torch.float64)}
    post = dirichlet_posterior(phi, level=0.95)
    torch.manual_seed(0)
    for layer, p in phi.items():
        s = Dirichlet(p).sample((200_000,))
        torch.testing.assert_close(post.means[layer], p / p.sum())
        emp_lo, emp_hi = torch.quantile(s, 0.025, dim=0), torch.quantile(s, 0.975, dim=0)
        torch.testing.assert_close(post.lower[layer], emp_lo, rtol=0.05, atol=2e-3)
        torch.testing.assert_close(post.upper[layer], emp_hi, rtol=0.02, atol=2e-3)
        assert torch.all(post.lower[layer] <= post.means[layer]) and torch.all(post.means[layer] <= post.upper[layer])
    with pytest.raises(ValueError):
        dirichlet_posterior(phi, level=1.0)


def _model_and_guide():
    torch.manual_seed(0)
    sw = SwitchedNetwork(build_model("lenet5", widths=(3, 4, 5, 2)).eval())
    model = SwitchModel(sw, num_data=400, alpha0=0.5, scale="dim")
    guide = DirichletGuide(model, init_concentration=20.0)
    return model, guide


def test_monte_carlo_posterior_of_the_dirichlet_guide_matches_the_exact_one():
    model, guide = _model_and_guide()
    x = torch.randn(4, 1, 28, 28)
    torch.manual_seed(1)
    mc = monte_carlo_posterior(guide, model.widths, x, num_samples=4000)
    exact = dirichlet_posterior(guide.concentrations())
    for layer in model.widths:
        torch.testing.assert_close(mc.means[layer], exact.means[layer], rtol=0.03, atol=3e-3)
        torch.testing.assert_close(mc.lower[layer], exact.lower[layer], rtol=0.1, atol=5e-3)
        torch.testing.assert_close(mc.upper[layer], exact.upper[layer], rtol=0.05, atol=5e-3)


def test_elbo_estimate_averages_unbiased_minibatch_estimates():
    """Each minibatch's N/B-scaled loss estimates the full-data ELBO; with every example in one
    batch and many particles the estimate matches Trace_ELBO on the whole set."""
    model, guide = _model_and_guide()
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(400, 1, 28, 28, generator=g), torch.randint(0, 10, (400,), generator=g))
    torch.manual_seed(2)
    mean, se = estimate_elbo(model, guide, split, batch_size=50, num_particles=20, max_batches=None)
    torch.manual_seed(3)
    full = -pyro.infer.Trace_ELBO(num_particles=200).loss(model, guide, split.x, split.y, torch.arange(400))
    assert se > 0 and abs(mean - full) < 4 * se + 0.02 * abs(full)


def test_posterior_figure_is_written(tmp_path):
    phi = {"conv1": torch.tensor([0.5, 3.0, 9.0], dtype=torch.float64), "fc1": torch.rand(12, dtype=torch.float64) * 10 + 0.1}
    post = dirichlet_posterior(phi)
    plot_posterior(post, tmp_path / "p.png", {"conv1": [1, 2], "fc1": list(range(6))})
    data = (tmp_path / "p.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_stage_elbos_of_a_layer_by_layer_fit_are_each_stages_objective():
    """With q(s_l) = Dirichlet(1e6 · m_l), nearly a point mass at m_l, stage l's ELBO is

        sum_n log p(y_n | x_n, s_l = m_l, other layers unswitched) - KL(Dir(1e6 m_l) || Dir(alpha0 · 1)),

    a closed form. Pairing a stage with the wrong model (every layer switched) or the wrong KL
    (every layer's) would be off by far more than the tolerance."""
    from pyro_dirichlet_prune.inference.elbo import dirichlet_kl
    from pyro_dirichlet_prune.inference.svi import SwitchConfig, fit_switches, switch_posterior
    from helpers import lenet5_forward

    g = torch.Generator().manual_seed(0)
    net = build_model("lenet5", widths=(3, 4, 5, 2)).eval()
    with torch.no_grad():
        net.fc3.weight.mul_(30.0)  # confident logits: shrinking a layer changes the likelihood
    x = torch.randn(64, 1, 28, 28, generator=g)
    y = net(x).argmax(1)
    split = Split(x, y)
    sw = SwitchedNetwork(net)
    cfg = SwitchConfig(schedule="sequential", batch_size=64, epochs=1)
    fit = fit_switches(sw, split, cfg)
    means = {}
    for layer, d in sw.widths.items():
        m = torch.rand(d, generator=g, dtype=torch.float64) + 0.2
        means[layer] = m / m.sum()
    fit.guide.set_concentrations({layer: 1e6 * m for layer, m in means.items()})
    pyro.set_rng_seed(0)
    post = switch_posterior(fit, cfg, split, elbo_particles=16, elbo_batches=1)
    assert set(post.stage_elbos) == set(sw.widths)
    alone = []
    for layer, m in means.items():
        logits = lenet5_forward(net, x, {layer: m.float()})
        loglik = -float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        kl = float(dirichlet_kl(1e6 * m, torch.full_like(m, cfg.alpha0)))
        alone.append(loglik - kl)
        assert post.stage_elbos[layer][0] == pytest.approx(loglik - kl, abs=2.0), layer
    every = lenet5_forward(net, x, {k: v.float() for k, v in means.items()})
    whole = -float(torch.nn.functional.cross_entropy(every, y, reduction="sum")) - sum(
        float(dirichlet_kl(1e6 * m, torch.full_like(m, cfg.alpha0))) for m in means.values())
    assert post.elbo == pytest.approx(whole, abs=4.0)
    assert min(abs(a - whole) for a in alone) > 20.0
