"""Per-example switch sampling: the hand-computed one-draw ELBO, unbiasedness against one
shared draw (same expectation of the loss and of its gradient), and its validation.

With B independent draws s^(i) ~ Dir(phi), one per example of the minibatch,

    loss = -( N/B sum_i log softmax(f(x_i; D*s^(i)))[y_i] + 1/B sum_i sum_l [log p(s_l^(i)) - log q(s_l^(i))] ).
"""
from __future__ import annotations

import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import Dirichlet, kl_divergence

from helpers import lenet5_forward, tiny_lenet
from pyro_dirichlet_prune.inference.guides import DirichletGuide
from pyro_dirichlet_prune.inference.svi import SwitchConfig
from pyro_dirichlet_prune.models import SwitchedNetwork, build_model
from pyro_dirichlet_prune.models.switched import SwitchModel, switch_site

ALPHA0, N, B = 0.5, 60, 6


@pytest.fixture
def setup():
    net, x, y = tiny_lenet(B)
    idx = torch.arange(B) * 7
    return net, SwitchedNetwork(net), x, y, idx


def _pair(sw, sampling):
    model = SwitchModel(sw, num_data=N, alpha0=ALPHA0, sampling=sampling, scale="dim")
    guide = DirichletGuide(model, 10.0, 0.05)
    g = torch.Generator().manual_seed(1)
    phis = {}
    for layer, d in model.widths.items():
        phis[layer] = torch.rand(d, generator=g, dtype=torch.float64) * 3 + 0.3
    guide.set_concentrations(phis)
    return model, guide, phis


def test_per_example_loss_matches_hand_computation(setup):
    net, sw, x, y, idx = setup
    model, guide, phis = _pair(sw, "per-example")
    guide_trace = poutine.trace(guide).get_trace(x, y, idx)
    draws = {layer: guide_trace.nodes[switch_site(layer)]["value"] for layer in phis}
    assert all(v.shape == (B, phis[k].numel()) for k, v in draws.items())
    assert not torch.allclose(draws["conv1"][0], draws["conv1"][1])  # independent draws
    # replay the guide's draws in both programs through a fixed-trace guide
    fixed_guide = poutine.replay(guide, trace=guide_trace)
    loss = Trace_ELBO().loss(model, fixed_guide, x, y, idx)
    loglik = sum(
        F.log_softmax(lenet5_forward(net, x[i : i + 1], {k: v[i] * v.shape[1] for k, v in draws.items()}).double(), -1)[0, y[i]]
        for i in range(B)
    )
    prior_minus_q = sum(
        (Dirichlet(torch.full_like(phis[k], ALPHA0)).log_prob(v) - Dirichlet(phis[k]).log_prob(v)).sum() / B
        for k, v in draws.items()
    )
    expected = -(N / B * loglik + prior_minus_q)
    assert math.isclose(loss, float(expected.detach()), rel_tol=1e-5)
    # closed-form KL: (1/B) * B copies of KL = one KL per layer
    loss_mf = TraceMeanField_ELBO().loss(model, fixed_guide, x, y, idx)
    kl = sum(float(kl_divergence(Dirichlet(p), Dirichlet(torch.full_like(p, ALPHA0)))) for p in phis.values())
    assert math.isclose(loss_mf, float(-(N / B * loglik) + kl), rel_tol=1e-5)


def _grad_samples(model, guide, x, y, idx, n):
    params = list(guide.parameters())  # the unconstrained concentrations, one per layer
    out = []
    for _ in range(n):
        loss = Trace_ELBO().differentiable_loss(model, guide, x, y, idx)
        out.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    return torch.stack(out)


def test_per_example_is_unbiased_for_the_shared_elbo_and_its_gradient(setup):
    """Loss and gradient averaged over 1000 draws agree between the two estimators within 4
    standard errors (the per-example estimator targets the same ELBO)."""
    _, sw, x, y, idx = setup
    pyro.set_rng_seed(0)
    shared = _pair(sw, "shared")[:2]
    gs = _grad_samples(*shared, x, y, idx, 1000)
    ls = torch.tensor([Trace_ELBO().loss(*shared, x, y, idx) for _ in range(1000)])
    per = _pair(sw, "per-example")[:2]
    gp = _grad_samples(*per, x, y, idx, 1000)
    lp = torch.tensor([Trace_ELBO().loss(*per, x, y, idx) for _ in range(1000)])
    se = math.sqrt(ls.var() / len(ls) + lp.var() / len(lp))
    assert abs(float(ls.mean() - lp.mean())) < 4 * se
    se_g = (gs.var(0) / len(gs) + gp.var(0) / len(gp)).sqrt()
    z = (gs.mean(0) - gp.mean(0)).abs() / se_g
    assert float(z.max()) < 4.5, z
    # and the per-example gradient is less noisy in total on this batch
    assert float(gp.var(0).sum()) < float(gs.var(0).sum())


def test_per_example_needs_the_dirichlet_guide():
    with pytest.raises(ValueError, match="per-example"):
        SwitchConfig(guide="normal", sampling="per-example").validate()
    with pytest.raises(ValueError, match="sampling"):
        SwitchConfig(sampling="sometimes").validate()
    SwitchConfig(sampling="per-example").validate()


def test_fit_switches_uses_per_example_sampling_in_model_and_guide():
    """``SwitchConfig(sampling="per-example")`` reaches both programs of SVI: the guide draws one
    switch per example of the minibatch."""
    from pyro_dirichlet_prune.data import Split
    from pyro_dirichlet_prune.inference.svi import fit_switches

    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(60, 1, 28, 28, generator=g), torch.randint(0, 10, (60,), generator=g))
    sw = SwitchedNetwork(build_model("lenet5", widths=(2, 3, 4, 2)).eval())
    fit = fit_switches(sw, split, SwitchConfig(sampling="per-example", batch_size=20, epochs=1, schedule="joint"))
    assert fit.model.sampling == "per-example" and fit.guide.sampling == "per-example"
    x = split.x[:20]
    trace = poutine.trace(fit.guide).get_trace(x, None, None)
    assert trace.nodes[switch_site("conv2")]["value"].shape == (20, 3)
