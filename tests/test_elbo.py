"""The ELBOs the code computes against hand computations on a tiny frozen LeNet5.

With N training examples and a minibatch of B, one-particle estimates are

    Trace_ELBO:           -( N/B sum_n log softmax(f(x_n; D*s))[y_n] + sum_l [log p(s_l) - log q(s_l)] )
    TraceMeanField_ELBO:  -( N/B sum_n log softmax(f(x_n; D*s))[y_n] - sum_l KL(Dir(phi_l) || Dir(alpha0)) )
    MeanSwitchELBO:       -( N/B sum_n log softmax(f(x_n; D*E_q[s]))[y_n] - sum_l KL(Dir(phi_l) || Dir(alpha0)) )

where s_l is one fixed draw from q(s_l) = Dir(phi_l) (the guide's trace, replayed).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import Dirichlet, kl_divergence

from helpers import lenet5_forward
from pyro_dirichlet_prune.inference.elbo import MeanSwitchELBO
from pyro_dirichlet_prune.inference.guides import DirichletGuide
from pyro_dirichlet_prune.models import SwitchedNetwork, build_model
from pyro_dirichlet_prune.models.switched import SwitchModel, switch_site

ALPHA0 = 0.5
N, B = 50, 8
LAYER_SETS = [None, ["conv2"], ["conv1", "fc2"]]


class _MeanELBO(MeanSwitchELBO):
    """MeanSwitchELBO with pyro's abstract ``_get_trace`` filled in, so that its math is
    checked even while the class itself cannot be instantiated (see
    ``test_mean_switch_elbo_is_instantiable``)."""

    def _get_trace(self, model, guide, args, kwargs):  # pragma: no cover - never called
        raise NotImplementedError


def test_mean_switch_elbo_is_instantiable():
    """``--guide dirichlet-mean`` builds ``MeanSwitchELBO()``; pyro's ELBO base class declares
    ``_get_trace`` abstract, so the subclass must define it."""
    elbo = MeanSwitchELBO()
    assert hasattr(elbo, "loss")


@pytest.fixture
def setup():
    torch.manual_seed(0)
    net = build_model("lenet5", widths=(2, 3, 4, 2))
    for p in net.parameters():  # larger weights so the switches matter
        p.data.mul_(3.0)
    net.eval()
    x = torch.randn(B, 1, 28, 28)
    y = torch.randint(0, 10, (B,))
    idx = torch.tensor([3, 7, 11, 19, 23, 31, 40, 49])
    sw = SwitchedNetwork(net)
    return net, sw, x, y, idx


def _model_guide(sw, layers, num_data=N, seed=1):
    model = SwitchModel(sw, num_data=num_data, alpha0=ALPHA0, layers=layers, scale="dim")
    guide = DirichletGuide(model, init_concentration=10.0, floor=0.05)
    g = torch.Generator().manual_seed(seed)
    phis = {}
    for layer, d in model.widths.items():  # distinct, non-uniform concentrations, some small
        phis[layer] = (torch.rand(d, generator=g, dtype=torch.float64) * 3 + 0.1)
    guide.set_concentrations(phis)
    return model, guide, phis


def _loglik(net, x, y, scales) -> torch.Tensor:
    logits = lenet5_forward(net, x, scales)
    return F.log_softmax(logits.double(), -1).gather(1, y.view(-1, 1)).sum()


@pytest.mark.parametrize("layers", LAYER_SETS)
def test_trace_elbo_matches_hand_computation(setup, layers):
    net, sw, x, y, idx = setup
    model, guide, phis = _model_guide(sw, layers)
    tr = poutine.trace(guide).get_trace(x, y, idx)
    s = {layer: tr.nodes[switch_site(layer)]["value"].detach() for layer in model.widths}
    loss = Trace_ELBO().loss(model, poutine.replay(guide, trace=tr), x, y, idx)

    scales = {layer: model.widths[layer] * s[layer] for layer in s}
    lik = (N / B) * _loglik(net, x, y, scales)
    log_ratio = sum(
        Dirichlet(torch.full_like(phis[l], ALPHA0)).log_prob(s[l]) - Dirichlet(phis[l]).log_prob(s[l]) for l in s
    )
    expected = -(lik + log_ratio)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("layers", LAYER_SETS)
def test_meanfield_elbo_matches_hand_computation(setup, layers):
    net, sw, x, y, idx = setup
    model, guide, phis = _model_guide(sw, layers)
    tr = poutine.trace(guide).get_trace(x, y, idx)
    s = {layer: tr.nodes[switch_site(layer)]["value"].detach() for layer in model.widths}
    loss = TraceMeanField_ELBO().loss(model, poutine.replay(guide, trace=tr), x, y, idx)

    scales = {layer: model.widths[layer] * s[layer] for layer in s}
    kl = sum(kl_divergence(Dirichlet(phis[l]), Dirichlet(torch.full_like(phis[l], ALPHA0))) for l in s)
    expected = -((N / B) * _loglik(net, x, y, scales) - kl)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("layers", LAYER_SETS)
def test_mean_switch_elbo_matches_hand_computation(setup, layers):
    net, sw, x, y, idx = setup
    model, guide, phis = _model_guide(sw, layers)
    loss = _MeanELBO().loss(model, guide, x, y, idx)

    scales = {l: model.widths[l] * phis[l] / phis[l].sum() for l in phis}
    kl = sum(kl_divergence(Dirichlet(phis[l]), Dirichlet(torch.full_like(phis[l], ALPHA0))) for l in phis)
    expected = -((N / B) * _loglik(net, x, y, scales) - kl)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5, abs=1e-4)


def test_minibatch_scaling_is_n_over_b(setup):
    """loss(N1) - loss(N2) = -(N1 - N2)/B * sum_n log p(y_n | s) for a fixed switch draw."""
    net, sw, x, y, idx = setup
    values = {}
    for n_data in (60, 600):
        model, guide, phis = _model_guide(sw, None, num_data=n_data)
        values[n_data, "mean"] = _MeanELBO().loss(model, guide, x, y, idx)
        scales_mean = {l: model.widths[l] * phis[l] / phis[l].sum() for l in phis}
        if n_data == 60:
            tr = poutine.trace(guide).get_trace(x, y, idx)
        values[n_data, "trace"] = Trace_ELBO().loss(model, poutine.replay(guide, trace=tr), x, y, idx)
        s = {l: tr.nodes[switch_site(l)]["value"].detach() for l in model.widths}
        scales_s = {l: model.widths[l] * s[l] for l in s}
    lik_mean = float(_loglik(net, x, y, scales_mean))
    lik_s = float(_loglik(net, x, y, scales_s))
    assert values[60, "mean"] - values[600, "mean"] == pytest.approx(-(60 - 600) / B * lik_mean, rel=1e-5)
    assert values[60, "trace"] - values[600, "trace"] == pytest.approx(-(60 - 600) / B * lik_s, rel=1e-5)


def test_uniform_mean_switch_leaves_network_unchanged(setup):
    """At the prior mean s = 1/D the scale D*s is 1: the switched network is the plain one."""
    net, sw, x, y, idx = setup
    with sw.scaled({l: torch.full((d,), 1.0 / d, dtype=torch.float64) * d for l, d in sw.widths.items()}):
        out = sw(x)
    torch.testing.assert_close(out, net(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sw(x), lenet5_forward(net, x), rtol=1e-6, atol=1e-6)


def test_model_returns_logits_of_scaled_network(setup):
    """The model's logits are f(x; D*s) for the sampled s, per-example scales also work."""
    net, sw, x, y, idx = setup
    model = SwitchModel(sw, num_data=N, alpha0=ALPHA0, scale="dim")
    tr = poutine.trace(model).get_trace(x, y, idx)
    s = {l: tr.nodes[switch_site(l)]["value"] for l in model.widths}
    expected = lenet5_forward(net, x, {l: model.widths[l] * s[l] for l in s})
    torch.testing.assert_close(tr.nodes["_RETURN"]["value"], expected, rtol=1e-5, atol=1e-5)
    assert tr.nodes["obs"]["scale"] == pytest.approx(N / B)
    per_example = torch.rand(B, 3)
    with sw.scaled({"conv2": per_example}):
        out = sw(x)
    rows = [lenet5_forward(net, x[i : i + 1], {"conv2": per_example[i]}) for i in range(B)]
    torch.testing.assert_close(out, torch.cat(rows), rtol=1e-5, atol=1e-5)
