"""Pyro's autoguides as switch posteriors: they fit through the same interface, start at the
pre-trained network, and must use Trace_ELBO, because TraceMeanField_ELBO (Pyro 1.9)
optimises another objective for the autoguides' Delta sites."""
from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_dirichlet_prune.data import Split
from pyro_dirichlet_prune.inference.autoguides import make_autoguide
from pyro_dirichlet_prune.inference.posterior import monte_carlo_posterior
from pyro_dirichlet_prune.inference.svi import SwitchConfig, fit_switches
from pyro_dirichlet_prune.models import SwitchModel, SwitchedNetwork, build_model


def _setup():
    torch.manual_seed(0)
    net = build_model("lenet5", widths=(3, 4, 5, 2)).eval()
    sw = SwitchedNetwork(net)
    model = SwitchModel(sw, num_data=100, alpha0=0.5, scale="dim")
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    return model, x, y, torch.arange(8)


def test_lowrank_autoguide_trace_and_meanfield_elbos_disagree():
    """AutoLowRankMultivariateNormal draws one joint latent and exposes each switch as a Delta
    site carrying the log-density; Trace_ELBO counts it, TraceMeanField_ELBO's KL path does not,
    so the two estimates of the same ELBO differ by far more than their Monte-Carlo error."""
    model, x, y, idx = _setup()
    pyro.clear_param_store()
    guide = make_autoguide("lowrank", model)
    guide(x, y, idx)
    n = 400
    torch.manual_seed(1)
    trace = [Trace_ELBO().loss(model, guide, x, y, idx) for _ in range(n)]
    torch.manual_seed(1)
    meanfield = [TraceMeanField_ELBO().loss(model, guide, x, y, idx) for _ in range(n)]
    t, m = torch.tensor(trace), torch.tensor(meanfield)
    se = ((t.var() + m.var()) / n).sqrt()
    assert abs(float(t.mean() - m.mean())) > 6 * float(se)


def test_delta_guide_elbo_is_the_map_objective():
    """AutoDelta: the Trace_ELBO loss is -(log p(y | s) + log p(s)) at the point, no entropy."""
    model, x, y, idx = _setup()
    pyro.clear_param_store()
    guide = make_autoguide("delta", model)
    from pyro import poutine

    tr = poutine.trace(guide).get_trace(x, y, idx)
    mt = poutine.trace(poutine.replay(model, trace=tr)).get_trace(x, y, idx)
    mt.compute_log_prob()
    expected = -float(sum(site["log_prob_sum"].detach() for site in mt.nodes.values() if site["type"] == "sample"))
    assert Trace_ELBO().loss(model, guide, x, y, idx) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("name", ["normal", "delta", "lowrank"])
def test_autoguides_start_at_the_prior_mean_and_fit(name):
    model, x, y, idx = _setup()
    pyro.clear_param_store()
    guide = make_autoguide(name, model)
    if name == "delta":  # init_to_mean: the point is the uniform switch, i.e. the pre-trained network
        means = monte_carlo_posterior(guide, model.widths, x, y, idx, num_samples=2).means
        for layer, d in model.widths.items():
            torch.testing.assert_close(means[layer], torch.full((d,), 1.0 / d, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(200, 1, 28, 28, generator=g)
    split = Split(xs, torch.randint(0, 10, (200,), generator=g))
    fit = fit_switches(SwitchedNetwork(build_model("lenet5", widths=(3, 4, 5, 2)).eval()), split,
                       SwitchConfig(guide=name, batch_size=50, epochs=2, lr=0.05, schedule="joint"))
    means = fit.posterior_means()
    assert not fit.concentrations and set(means) == {"conv1", "conv2", "fc1", "fc2"}
    for v in means.values():
        assert torch.all(v > 0) and float(v.sum()) == pytest.approx(1.0, abs=1e-9)
    assert len(fit.losses) == 8


def test_autoguides_refuse_the_meanfield_elbo():
    with pytest.raises(ValueError, match="needs elbo='trace'"):
        SwitchConfig(guide="normal", elbo="meanfield").validate()


@pytest.mark.parametrize("name", ["normal", "lowrank"])
def test_prune_command_with_an_autoguide(tmp_path, name):
    import json

    from pyro_dirichlet_prune import cli

    data = ["--dataset", "fake-mnist", "--val-size", "500", "--threads", "1"]
    assert cli.main(["pretrain", "--epochs", "1", *data, "--out", str(tmp_path / "base")]) == 0
    assert cli.main(["prune", "--checkpoint", str(tmp_path / "base" / "model.pt"), "--guide", name,
                     "--arch", "6-8-40-20", "--finetune-epochs", "1", *data, "--out", str(tmp_path / "run")]) == 0
    post = json.loads((tmp_path / "run" / "posterior.json").read_text())
    params = json.loads((tmp_path / "run" / "guide_params.json").read_text())
    for layer in ("conv1", "conv2", "fc1", "fc2"):  # one guide per layer (layer by layer), its params saved
        assert any(n.startswith(f"guide_{layer}.") for n in params), params
    for layer, k in zip(("conv1", "conv2", "fc1", "fc2"), (6, 8, 40, 20)):
        mean = torch.tensor(post[layer]["mean"])
        assert "concentration" not in post[layer]
        assert post[layer]["kept"] == sorted(torch.argsort(-mean, stable=True)[:k].tolist())  # the k highest means
    assert json.loads((tmp_path / "run" / "report.json").read_text())["config"]["switch"]["guide"] == name


@pytest.mark.parametrize("name", ["normal", "delta", "lowrank"])
def test_sequential_autoguide_fit_has_a_whole_model_elbo(name):
    """Fitted one layer at a time, the stages' autoguides together are a guide of the whole
    model: the posterior gets a finite ELBO estimate and Monte-Carlo P(D·s < tau) per unit.
    Each stage has its own parameters (AutoLowRankMultivariateNormal's one flat ``loc`` would
    otherwise be taken over, with the wrong size, by the next layer's guide)."""
    from pyro_dirichlet_prune.inference.guides import LayerwiseGuide
    from pyro_dirichlet_prune.inference.svi import switch_posterior

    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(120, 1, 28, 28, generator=g), torch.randint(0, 10, (120,), generator=g))
    sw = SwitchedNetwork(build_model("lenet5", widths=(3, 4, 5, 2)).eval())
    cfg = SwitchConfig(guide=name, schedule="sequential", batch_size=40, epochs=1)
    fit = fit_switches(sw, split, cfg)
    assert isinstance(fit.guide, LayerwiseGuide)
    post = switch_posterior(fit, cfg, split, elbo_particles=2, elbo_batches=2)
    assert post.elbo is not None and post.elbo == post.elbo and abs(post.elbo) < float("inf")
    assert set(post.stage_elbos) == set(sw.widths)  # each stage's own objective, under its own guide
    assert all(abs(e) < float("inf") for e, _ in post.stage_elbos.values())
    assert set(post.prob_below(1.0)) == {"conv1", "conv2", "fc1", "fc2"}
    trace = pyro.poutine.trace(fit.guide).get_trace(split.x[:4], None, None)
    sites = {n for n, site in trace.nodes.items()
             if site["type"] == "sample" and not site["infer"].get("is_auxiliary")}
    assert sites == {"switch.conv1", "switch.conv2", "switch.fc1", "switch.fc2"}
    assert {n: trace.nodes[f"switch.{n}"]["value"].shape[-1] for n in sw.widths} == sw.widths
    names = [n for n, _ in fit.guide.named_parameters()]
    for layer in sw.widths:  # every stage's guide has its own parameters, named after its layer
        assert any(n.startswith(f"guide_{layer}.") for n in names), names
    assert not list(pyro.get_param_store().keys())  # module-local: nothing in the global store
