"""The switch model with learned weights (``SwitchModel(weight_scale=sigma)``) against hand
computations: its ELBO is eq. 7 plus log p(W_hat) with p(W) = Normal(W0, sigma^2), the network
object itself never changes, ``fold_scales`` and ``fitted_network`` compute what the switched
network computes, and the options are refused where they make no sense."""
from __future__ import annotations

import copy
import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch.distributions import Dirichlet, Normal

from helpers import lenet5_forward, tiny_lenet
from pyro_dirichlet_prune.inference.autoguides import make_autoguide
from pyro_dirichlet_prune.inference.elbo import MeanSwitchELBO
from pyro_dirichlet_prune.inference.fit import fit
from pyro_dirichlet_prune.inference.guides import DirichletGuide, ModuleLocal
from pyro_dirichlet_prune.inference.svi import SwitchConfig, SwitchFit, fit_switches
from pyro_dirichlet_prune.data import Split
from pyro_dirichlet_prune.models import SwitchedNetwork, build_model, default_widths
from pyro_dirichlet_prune.models.common import scale_widths
from pyro_dirichlet_prune.models.switched import SwitchModel, switch_site
from pyro_dirichlet_prune.models.weight_prior import WeightPrior, weight_site
from pyro_dirichlet_prune.pruning.surgery import fold_scales

N, B, SIGMA = 50, 8, 0.05


@pytest.fixture
def setup():
    return tiny_lenet(B)


def _perturb(guide: DirichletGuide, seed: int = 1) -> dict[str, torch.Tensor]:
    """Move the guide's weights away from W0 so the weight term and the network depend on them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in guide.point_weights.names:
            v = guide.point_weights.value(name)
            v.add_(0.1 * torch.randn(v.shape, generator=g))
    return guide.weights()


def test_trace_elbo_is_eq7_plus_the_weights_log_prior(setup):
    net, x, y = setup
    w0 = {k: v.detach().clone() for k, v in net.named_parameters()}
    model = SwitchModel(net, num_data=N, scale="dim", weight_scale=SIGMA)
    guide = DirichletGuide(model, init_concentration=2.0)
    w_hat = _perturb(guide)
    pyro.set_rng_seed(3)
    guide_trace = poutine.trace(guide).get_trace(x, y)
    loss = Trace_ELBO().loss(model, poutine.replay(guide, trace=guide_trace), x, y)

    s = {layer: guide_trace.nodes[switch_site(layer)]["value"] for layer in model.layers}
    hand_net = copy.deepcopy(net)
    hand_net.load_state_dict(w_hat)
    logits = lenet5_forward(hand_net, x, {k: (model.widths[k] * v).float() for k, v in s.items()})
    loglik = N / B * F.log_softmax(logits, 1).gather(1, y[:, None]).sum()
    switches = sum(Dirichlet(torch.full_like(s[k], 0.5)).log_prob(s[k]) - Dirichlet(guide.concentration(k).detach()).log_prob(s[k])
                   for k in model.layers)
    weights = sum(Normal(w0[k], SIGMA).log_prob(w_hat[k]).sum() for k in w0)
    expected = -(loglik + switches + weights).detach()
    assert loss == pytest.approx(float(expected), rel=1e-5)
    # the weight term is not negligible here: dropping it misses by far more than the tolerance
    assert abs(float(weights)) > 1e-3 * abs(float(expected))


def test_mean_elbo_scores_point_weights_by_their_prior(setup):
    """At W_hat = W0 the mean variant with learned weights is the frozen model's value plus
    log N(W0 | W0, sigma^2) = -n/2 log(2 pi sigma^2) over the n weights."""
    net, x, y = setup
    frozen = SwitchModel(SwitchedNetwork(net), num_data=N, scale="dim")
    learned = SwitchModel(frozen.network, num_data=N, scale="dim", weight_scale=SIGMA)
    g_frozen, g_learned = DirichletGuide(frozen, 2.0), DirichletGuide(learned, 2.0)
    n = sum(p.numel() for p in net.parameters())
    a = MeanSwitchELBO().loss(frozen, g_frozen, x, y)
    b = MeanSwitchELBO().loss(learned, g_learned, x, y)
    assert b - a == pytest.approx(0.5 * n * math.log(2 * math.pi * SIGMA ** 2), rel=1e-6)


def test_weight_prior_log_prob_is_the_normal_density(setup):
    net, _, _ = setup
    prior = WeightPrior(net, 0.3, names=["fc1.weight", "conv2.bias"])
    w = {k: v.detach() + 0.2 for k, v in net.named_parameters()}
    hand = sum(float((-0.5 * ((w[k] - v.detach()) / 0.3) ** 2 - math.log(0.3) - 0.5 * math.log(2 * math.pi)).sum())
               for k, v in net.named_parameters() if k in ("fc1.weight", "conv2.bias"))
    assert float(prior.log_prob(w)) == pytest.approx(hand, rel=1e-6)
    assert weight_site("fc1.weight") == "weights.fc1.weight"


def test_fit_learns_weights_and_leaves_the_network_untouched(setup):
    net, x, y = setup
    before = copy.deepcopy(net.state_dict())
    model = SwitchModel(net, num_data=N, scale="dim", weight_scale=SIGMA)
    guide = DirichletGuide(model)
    fit(model, guide, [(x, y)] * 10, epochs=1, schedule="joint", seed=0, progress=False, weight_lr=1e-2)
    w_hat = guide.weights()
    assert all(torch.equal(net.state_dict()[k], before[k]) for k in before)
    flags = [p.requires_grad for p in net.parameters()]
    assert all(flags) and not any(m._forward_hooks for m in net.modules())  # as build_model made it
    moved = [k for k in before if not torch.allclose(w_hat[k], before[k])]
    assert sorted(moved) == sorted(before), f"weights that did not learn: {set(before) - set(moved)}"


def test_weight_lr_sets_the_step_of_the_weights(setup):
    """Adam's first step moves every parameter by about its learning rate: the weights by
    weight_lr, the concentrations by lr."""
    net, x, y = setup
    steps = {}
    for weight_lr in (1e-4, 1e-2):
        model = SwitchModel(copy.deepcopy(net), num_data=N, scale="dim", weight_scale=SIGMA)
        guide = DirichletGuide(model)
        w0 = guide.weights()
        fit(model, guide, [(x, y)], epochs=1, schedule="joint", seed=0, progress=False, lr=0.05,
            weight_lr=weight_lr)
        steps[weight_lr] = max(float((guide.weights()[k] - w0[k]).abs().max()) for k in w0)
    assert steps[1e-4] == pytest.approx(1e-4, rel=0.05)
    assert steps[1e-2] == pytest.approx(1e-2, rel=0.05)


@pytest.mark.parametrize("model_name,shape", [("lenet5", (1, 28, 28)), ("vgg16", (3, 32, 32))])
def test_fold_scales_computes_the_switched_network(model_name, shape):
    torch.manual_seed(0)
    widths = (3, 4, 5, 6) if model_name == "lenet5" else scale_widths(default_widths("vgg16"), 1 / 16)
    net = build_model(model_name, widths=widths)
    net.eval()
    if model_name == "vgg16":  # non-trivial batch-norm statistics, so the fold must get them right
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    switched = SwitchedNetwork(copy.deepcopy(net))
    scales = {p.name: torch.rand(p.width) * 2 for p in switched.points}
    x = torch.randn(4, *shape)
    with switched.scaled(scales):
        expected = switched(x)
    folded = fold_scales(net, scales)
    assert torch.allclose(folded(x), expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(net(x), expected, rtol=1e-2, atol=1e-3)  # the scales mattered


def test_fold_scales_rejects_bad_input(setup):
    net, _, _ = setup
    with pytest.raises(ValueError, match="scales"):
        fold_scales(net, {"conv1": torch.ones(5)})
    with pytest.raises(ValueError, match="scales"):
        fold_scales(net, {"nope": torch.ones(2)})
    with pytest.raises(ValueError, match="weights"):
        fold_scales(net, {}, weights={"conv9.weight": torch.ones(1)})


def test_fitted_network_is_the_model_at_the_posterior_mean(setup):
    net, x, y = setup
    train = Split(x.repeat(4, 1, 1, 1), y.repeat(4))
    cfg = SwitchConfig(scale="dim", schedule="joint", weight_scale=SIGMA, weight_lr=1e-2, batch_size=8, seed=0)
    fitted: SwitchFit = fit_switches(SwitchedNetwork(net), train, cfg)
    means = fitted.posterior_means()
    hand_net = copy.deepcopy(net)
    hand_net.load_state_dict(fitted.guide.weights())
    expected = lenet5_forward(hand_net, x, {k: (fitted.model.widths[k] * v).float() for k, v in means.items()})
    out = fitted.fitted_network()(x)
    assert torch.allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(net(x), expected, rtol=1e-2, atol=1e-3)


def test_frozen_fit_returns_the_network_itself(setup):
    net, x, y = setup
    cfg = SwitchConfig(batch_size=8, seed=0)
    fitted = fit_switches(SwitchedNetwork(net), Split(x, y), cfg)
    assert fitted.fitted_network() is net
    with pytest.raises(ValueError, match="frozen"):
        fitted.guide.weights()


@pytest.mark.parametrize("kw,match", [
    ({"weight_scale": 0.1, "schedule": "sequential"}, "schedule"),
    ({"weight_scale": 0.1, "schedule": "joint", "guide": "normal"}, "guide"),
    ({"weight_scale": -1.0, "schedule": "joint"}, "weight_scale"),
    ({"weight_lr": 0.0}, "weight_lr"),
])
def test_config_refuses_learned_weights_where_they_make_no_sense(kw, match):
    with pytest.raises(ValueError, match=match):
        SwitchConfig(**kw).validate()


def test_fit_refuses_an_autoguide_for_learned_weights(setup):
    net, x, y = setup
    model = SwitchModel(net, num_data=N, scale="dim", weight_scale=SIGMA)
    with pytest.raises(ValueError, match="guide"):
        fit(model, ModuleLocal(make_autoguide("normal", model)), [(x, y)], schedule="joint", progress=False)
    with pytest.raises(ValueError, match="scale"):
        SwitchModel(net, num_data=N, weight_scale=0.0)


def test_cli_prunes_the_network_whose_weights_learned(tmp_path, capsys):
    from pyro_dirichlet_prune import cli
    from pyro_dirichlet_prune.data import load_data
    from pyro_dirichlet_prune.models.checkpoint import load_checkpoint, save_checkpoint
    from pyro_dirichlet_prune.training import evaluate

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "base.pt", build_model("lenet5"), "lenet5", "mnist", 10, (1, 28, 28))
    common = ["prune", "--checkpoint", str(tmp_path / "base.pt"), "--dataset", "fake-mnist", "--val-size", "500",
              "--arch", "6-8-40-20", "--finetune-epochs", "0", "--no-latency", "--threads", "1"]
    assert cli.main([*common, "--learn-weights", "0.05", "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--schedule joint" in err[0] and not (tmp_path / "refused").exists(), err

    out = tmp_path / "run"
    assert cli.main([*common, "--learn-weights", "0.05", "--weight-lr", "0.01", "--schedule", "joint",
                     "--switch-scale", "dim", "--out", str(out)]) == 0
    import json
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["switch"]["weight_scale"] == 0.05
    changes = report["adapted"]["max_abs_weight_change"]
    assert set(changes) == {k for k, _ in build_model("lenet5").named_parameters()} and min(changes.values()) > 0
    pruned, _ = load_checkpoint(out / "pruned.pt", "lenet5")
    data = load_data("fake-mnist", val_size=500)
    assert evaluate(pruned, data.val)["error"] == pytest.approx(report["pruned"]["val"]["error"])
    assert report["architecture"]["pruned"] == "6-8-40-20"
    # the surgery cut the adapted network (W_hat, switch means folded in), not the pre-trained one
    base, _ = load_checkpoint(tmp_path / "base.pt", "lenet5")
    rows = report["kept"]["conv1"]
    assert not torch.allclose(pruned.conv1.weight, base.conv1.weight[rows], atol=1e-4)
