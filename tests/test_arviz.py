"""The switch posterior as ArviZ's InferenceData: the draws of a Dirichlet guide against its exact
moments, an autoguide's draws against ``posterior_of``, NUTS with the same names, and the errors."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import AutoNormal

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # ArviZ 0.x announces its 1.0 refactor on import
    import arviz as az

from pyro_dirichlet_prune import DirichletGuide, ModuleLocal, SwitchModel, posterior_of
from pyro_dirichlet_prune.inference.arviz_data import mcmc_inference_data, to_inference_data
from pyro_dirichlet_prune.models import build_model


def _model(n: int = 32) -> tuple[SwitchModel, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    net = build_model("lenet5", widths=(3, 4, 5, 2)).eval()
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = net(x).argmax(1)
    return SwitchModel(net, input_shape=(1, 28, 28), num_data=n), x, y


def test_dirichlet_draws_match_the_exact_moments_and_arviz_reads_them():
    model, _, _ = _model()
    guide = DirichletGuide(model)
    phi = {"conv1": torch.tensor([1.0, 4.0, 15.0]), "conv2": torch.tensor([2.0, 2.0, 6.0, 30.0]),
           "fc1": torch.tensor([5.0, 1.0, 1.0, 1.0, 12.0]), "fc2": torch.tensor([3.0, 9.0])}
    guide.set_concentrations(phi)
    idata = to_inference_data(model, guide, num_samples=8000, chains=4, schedule="sequential")
    assert idata.posterior["switch.conv2"].shape == (4, 2000, 4)
    assert list(idata.posterior["switch.fc1"].coords["fc1_unit"].values) == [0, 1, 2, 3, 4]
    assert idata.posterior.attrs["structure"].startswith("per-stage conditional")
    summary = az.summary(idata, kind="stats", hdi_prob=0.95)
    for layer, a in phi.items():
        a = a.double()
        a0 = a.sum()
        mean, sd = a / a0, torch.sqrt(a * (a0 - a) / (a0 ** 2 * (a0 + 1)))
        for j in range(len(a)):
            row = summary.loc[f"switch.{layer}[{j}]"]
            assert abs(row["mean"] - float(mean[j])) < 4 * float(sd[j]) / math.sqrt(8000) + 1e-3, (layer, j)
            assert row["sd"] == pytest.approx(float(sd[j]), rel=0.06, abs=2e-3), (layer, j)
    again = to_inference_data(model, guide, num_samples=8000, chains=4)
    assert (again.posterior["switch.fc2"].values == idata.posterior["switch.fc2"].values).all()  # seeded
    other = to_inference_data(model, guide, num_samples=8000, chains=4, seed=1)
    assert not (other.posterior["switch.fc2"].values == idata.posterior["switch.fc2"].values).all()


def test_an_autoguide_gives_the_draws_posterior_of_summarises():
    model, x, y = _model()
    guide = ModuleLocal(AutoNormal(model))
    guide(x, y)  # builds its parameters
    idata = to_inference_data(model, guide, num_samples=2000, chains=2, schedule="joint")
    post = posterior_of(model, guide, num_samples=2000)
    for layer in model.layers:
        draws = torch.from_numpy(idata.posterior[f"switch.{layer}"].values.reshape(2000, -1))
        assert torch.allclose(draws.sum(-1), torch.ones(2000, dtype=torch.float64), atol=1e-5)
        assert torch.allclose(draws.mean(0), post.means[layer], atol=0.02), layer


def test_nuts_on_the_same_sites_sits_beside_a_guide():
    model, x, y = _model(16)
    torch.manual_seed(0)
    mcmc = MCMC(NUTS(model, max_tree_depth=4), num_samples=20, warmup_steps=20, num_chains=1, disable_progbar=True)
    mcmc.run(x, y)
    reference = mcmc_inference_data(mcmc, model)
    assert reference.posterior["switch.conv1"].dims == ("chain", "draw", "conv1_unit")
    assert reference.posterior["switch.fc1"].shape == (1, 20, 5)
    guide = DirichletGuide(model)
    forest = az.plot_forest([reference, to_inference_data(model, guide, 40, chains=1)], model_names=["NUTS", "q"],
                            var_names=["switch.conv1"])
    assert len(forest) == 1


def test_errors_name_the_argument():
    model, _, _ = _model()
    guide = DirichletGuide(model)
    with pytest.raises(ValueError, match=r"num_samples \(10\) must be a multiple of chains \(4\)"):
        to_inference_data(model, guide, num_samples=10)
    with pytest.raises(ValueError, match="schedule must be"):
        to_inference_data(model, guide, num_samples=8, schedule="layerwise")
    other, _, _ = _model()
    with pytest.raises(ValueError, match="guide was built for another SwitchModel"):
        to_inference_data(other, guide, num_samples=8)
    with pytest.raises(ValueError, match="guide has no parameters yet"):
        to_inference_data(model, ModuleLocal(AutoNormal(model)), num_samples=8)
