"""The public library API: independent fits, the ELBO by hand, loaders, resume, JSON round trip."""
from __future__ import annotations

import json
import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.distributions import Dirichlet
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal, init_to_mean
from torch.utils.data import DataLoader, TensorDataset

from helpers import lenet5_forward
from pyro_dirichlet_prune import (DirichletGuide, LayerwiseGuide, SwitchModel, SwitchPosterior, estimate_elbo, fit,
                                  posterior_of)
from pyro_dirichlet_prune.inference.posterior import dirichlet_posterior
from pyro_dirichlet_prune.models import build_model

N = 96


def _net_and_data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    net = build_model("lenet5", widths=(3, 4, 5, 2)).eval()
    with torch.no_grad():
        net.fc3.weight.mul_(20.0)  # confident logits: the switches change the likelihood
    x = torch.randn(N, 1, 28, 28, generator=g)
    y = net(x).argmax(1)
    return net, TensorDataset(x, y)


def _loader(ds, seed=0):
    return DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))


def test_two_fits_in_one_process_are_independent():
    """Fit A, fit B, then A's posterior and ELBO are what they were: the fitted state lives in
    each guide (with global param names, B's fit would overwrite A's concentrations)."""
    net, ds = _net_and_data()
    model = SwitchModel(net, num_data=N)
    guide_a = DirichletGuide(model)
    fit(model, guide_a, _loader(ds), seed=0, progress=False)
    phi_a = guide_a.concentrations()
    elbo_a = estimate_elbo(model, guide_a, _loader(ds), num_particles=4, seed=0)

    guide_b = DirichletGuide(model, init_concentration=2.0)
    fit(model, guide_b, _loader(ds, 1), lr=0.2, epochs=3, seed=1, progress=False)
    assert any(not torch.allclose(guide_b.concentrations()[k], v) for k, v in phi_a.items())

    for layer, phi in guide_a.concentrations().items():
        assert torch.equal(phi, phi_a[layer])
    pyro.set_rng_seed(0)
    again = estimate_elbo(model, guide_a, _loader(ds), num_particles=4, seed=0)
    pyro.set_rng_seed(0)
    assert estimate_elbo(model, guide_a, _loader(ds), num_particles=4, seed=0) == again
    assert again[0] == pytest.approx(elbo_a[0], abs=6 * elbo_a[1] + 1e-6)
    torch.testing.assert_close(posterior_of(model, guide_a).means["conv1"], phi_a["conv1"] / phi_a["conv1"].sum())
    assert not list(pyro.get_param_store().keys())


@pytest.mark.parametrize("gain", [1.0, 3.0])
def test_elbo_of_the_simplex_scale_with_a_gain_by_hand(gain):
    """One particle of Trace_ELBO on a minibatch of B from N examples, output times gain·s:
    (N/B) sum_i log p(y_i | x_i, gain·s) + sum_l [log Dir(s_l; alpha0) - log Dir(s_l; phi_l)]."""
    net, ds = _net_and_data()
    x, y = ds.tensors[0][:8], ds.tensors[1][:8]
    model = SwitchModel(net, num_data=N, gain=gain, alpha0=0.7)
    guide = DirichletGuide(model)
    g = torch.Generator().manual_seed(3)
    phis = {k: torch.rand(d, generator=g, dtype=torch.float64) * 3 + 0.2 for k, d in model.widths.items()}
    guide.set_concentrations(phis)
    tr = poutine.trace(guide).get_trace(x, y)
    s = {k: tr.nodes[f"switch.{k}"]["value"] for k in phis}
    loss = Trace_ELBO().loss(model, poutine.replay(guide, trace=tr), x, y)
    loglik = -F.cross_entropy(lenet5_forward(net, x, {k: gain * v for k, v in s.items()}).double(), y,
                              reduction="sum")
    log_ratio = sum(Dirichlet(torch.full_like(p, 0.7)).log_prob(s[k]) - Dirichlet(p).log_prob(s[k])
                    for k, p in phis.items())
    expected = -(N / 8 * loglik + log_ratio)
    assert loss == pytest.approx(float(expected), rel=1e-5)


def test_the_plate_scale_comes_from_the_batch():
    net, ds = _net_and_data()
    model = SwitchModel(net, num_data=N)
    for b in (5, 32):
        tr = poutine.trace(model).get_trace(ds.tensors[0][:b], ds.tensors[1][:b])
        assert tr.nodes["obs"]["scale"] == pytest.approx(N / b)


def test_fit_on_a_dataloader_moves_the_posterior_and_keeps_the_network():
    net, ds = _net_and_data()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model = SwitchModel(net, num_data=N)
    guide = DirichletGuide(model)
    result = fit(model, guide, _loader(ds), epochs=2, schedule="sequential", seed=0, progress=False)
    assert len(result.losses) == 4 * 2 * 3 and [st["layers"] for st in result.stages] == [[k] for k in model.layers]
    for layer, phi in guide.concentrations().items():
        assert not torch.allclose(phi, torch.full_like(phi, 10.0)), layer
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_sequential_schedule_refuses_a_whole_model_autoguide():
    net, ds = _net_and_data()
    model = SwitchModel(net, num_data=N)
    with pytest.raises(ValueError, match="LayerwiseGuide"):
        fit(model, AutoNormal(model), _loader(ds), schedule="sequential")


class _Interrupt:
    """A loader that raises after ``stop`` batches in all (as a kill would), else the loader itself."""

    def __init__(self, loader, stop):
        self.loader, self.stop, self.seen = loader, stop, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if self.stop is not None and self.seen >= self.stop:
                raise KeyboardInterrupt
            self.seen += 1
            yield batch


def _layerwise_fit(ds, folder, stop):
    torch.manual_seed(0)
    net = build_model("lenet5", widths=(3, 4, 5, 2)).eval()
    net.load_state_dict(_net_and_data()[0].state_dict())
    model = SwitchModel(net, num_data=N)
    guide = LayerwiseGuide(model, lambda m: AutoNormal(m, init_loc_fn=init_to_mean))
    fit(model, guide, _Interrupt(DataLoader(ds, batch_size=32, shuffle=True), stop), schedule="sequential",
        seed=0, checkpoint=folder, checkpoint_every=2, progress=False)
    return model, guide


def test_resumed_layer_by_layer_autoguide_fit_equals_the_uninterrupted_one(tmp_path):
    """Killed in the second layer's stage and resumed from its checkpoint, the layer-by-layer
    AutoNormal fit ends with the same parameters and whole-model ELBO as an uninterrupted fit."""
    _, ds = _net_and_data()
    model_ref, ref = _layerwise_fit(ds, tmp_path / "ref", None)
    with pytest.raises(KeyboardInterrupt):
        _layerwise_fit(ds, tmp_path / "run", 5)
    model, resumed = _layerwise_fit(ds, tmp_path / "run", None)
    want = dict(ref.named_parameters())
    got = dict(resumed.named_parameters())
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)
    pyro.set_rng_seed(1)
    e_ref = estimate_elbo(model_ref, ref, DataLoader(ds, batch_size=32), num_particles=4)
    pyro.set_rng_seed(1)
    e_res = estimate_elbo(model, resumed, DataLoader(ds, batch_size=32), num_particles=4)
    assert e_res == e_ref and math.isfinite(e_res[0])


def test_switch_posterior_json_round_trip():
    phi = {"conv1": torch.tensor([0.3, 2.0, 7.5], dtype=torch.float64), "fc1": torch.rand(6, dtype=torch.float64) + 0.1}
    post = dirichlet_posterior(phi)
    post.elbo, post.elbo_se, post.stage_elbos = -12.5, 0.25, {"conv1": (-3.0, 0.1), "fc1": (-4.0, 0.2)}
    back = SwitchPosterior.from_json(json.loads(json.dumps(post.to_json())))
    for field in ("means", "lower", "upper", "concentrations"):
        for layer in phi:
            assert torch.equal(getattr(back, field)[layer], getattr(post, field)[layer]), (field, layer)
    assert (back.elbo, back.elbo_se, back.stage_elbos, back.exact) == (-12.5, 0.25, post.stage_elbos, True)
    for layer, p in post.prob_below(0.8).items():
        assert torch.equal(back.prob_below(0.8)[layer], p)
    mc = SwitchPosterior("normal", 0.95, {"a": torch.tensor([0.5, 0.5])}, {"a": torch.tensor([0.1, 0.2])},
                         {"a": torch.tensor([0.9, 0.8])}, exact=False,
                         samples={"a": torch.tensor([[0.1, 0.9], [0.6, 0.4], [0.3, 0.7]], dtype=torch.float64)})
    back = SwitchPosterior.from_json(json.loads(json.dumps(mc.to_json())))
    assert torch.equal(back.prob_below(1.0)["a"], mc.prob_below(1.0)["a"]) and back.concentrations is None


def test_module_local_autoguide_in_your_own_layer_by_layer_loop():
    """README's advice for an autoguide in your own loop, ``ModuleLocal(AutoNormal(model))``, in
    the layer-by-layer loop: the guide is built on every layer, each stage moves the active
    layer's parameters only, Pyro warns of no site missing, and ``posterior_of`` reads every layer."""
    import warnings

    from pyro.infer import SVI

    from pyro_dirichlet_prune import ModuleLocal

    net, ds = _net_and_data()
    model = SwitchModel(net, num_data=N)
    guide = ModuleLocal(AutoNormal(model, init_loc_fn=init_to_mean))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    x, y = ds.tensors
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Found vars in model but not guide" would fail here
        for layer in model.layers:
            with model.switching([layer]):
                if guide.prototype_trace is not None:
                    before = {n: p.detach().clone() for n, p in guide.named_parameters()}
                for _ in range(3):
                    svi.step(x[:32], y[:32])
            if layer == model.layers[0]:
                assert {_layer_of(n) for n, _ in guide.named_parameters()} == set(model.layers)
                continue
            moved = {_layer_of(n) for n, p in guide.named_parameters() if not torch.equal(p, before[n])}
            assert moved == {layer}, (layer, moved)
    post = posterior_of(model, guide, num_samples=20)
    assert set(post.means) == set(model.layers)


def _layer_of(param_name: str) -> str:
    """``guide.locs.switch.conv1_unconstrained`` → ``conv1``."""
    return param_name.split("switch.", 1)[1].removesuffix("_unconstrained")
