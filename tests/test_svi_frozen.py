"""SVI fits only the guide's concentrations: the frozen network's weights are untouched and
never enter Pyro's param store, which ends up holding exactly ``concentration.<layer>``."""
from __future__ import annotations

import pyro
import pytest
import torch

from pyro_dirichlet_prune.data import Split
from pyro_dirichlet_prune.inference.svi import SwitchConfig, fit_switches
from pyro_dirichlet_prune.models import SwitchedNetwork, build_model

CONFIGS = [
    dict(guide="dirichlet", elbo="trace", schedule="joint"),
    dict(guide="dirichlet", elbo="meanfield", schedule="joint", particles=2),
    dict(guide="dirichlet-mean", schedule="joint"),
    dict(guide="dirichlet", elbo="trace", schedule="sequential"),
]
LAYERS = ("conv1", "conv2", "fc1", "fc2")


def _tiny():
    torch.manual_seed(0)
    net = build_model("lenet5", widths=(2, 3, 4, 2))
    split = Split(torch.randn(48, 1, 28, 28), torch.randint(0, 10, (48,)))
    return net, split


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_fit_switches_leaves_weights_and_store_alone(kw):
    net, split = _tiny()
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    sw = SwitchedNetwork(net)
    cfg = SwitchConfig(batch_size=16, epochs=1, lr=0.1, **kw)
    fit = fit_switches(sw, split, cfg)

    after = net.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"network tensor {k} changed"
    assert all(p.requires_grad for p in net.parameters())  # the flags as they were: frozen only inside a forward
    assert all(p.grad is None for p in net.parameters())  # and no gradient ever reached the weights

    assert not list(pyro.get_param_store().keys())  # the fitted state lives in the guide, not the global store
    weight_ptrs = {p.data_ptr() for p in net.parameters()}
    assert not any(p.data_ptr() in weight_ptrs for p in fit.guide.parameters())

    stages = 1 if kw["schedule"] == "joint" else 4
    assert len(fit.losses) == stages * 3  # 48 examples / batch 16
    assert [s["steps"] for s in fit.stages] == [3] * stages
    assert set(fit.concentrations) == set(LAYERS)
    for layer, phi in fit.concentrations.items():
        assert phi.dtype == torch.float64 and phi.shape == (sw.widths[layer],)
        assert (phi > cfg.floor).all()
        assert not torch.allclose(phi, torch.full_like(phi, cfg.init_concentration)), f"{layer} did not move"
        torch.testing.assert_close(phi, fit.guide.concentration(layer).detach())
    for layer, m in fit.posterior_means().items():
        torch.testing.assert_close(m, fit.concentrations[layer] / fit.concentrations[layer].sum())


def test_fit_switches_is_deterministic_given_seed():
    net, split = _tiny()
    sw = SwitchedNetwork(net)
    cfg = SwitchConfig(batch_size=16, epochs=1, lr=0.1, seed=3)
    a = fit_switches(sw, split, cfg)
    torch.manual_seed(12345)  # global state must not matter
    b = fit_switches(sw, split, cfg)
    assert a.losses == b.losses
    for l in LAYERS:
        assert torch.equal(a.concentrations[l], b.concentrations[l])


def test_invalid_switch_config_is_rejected():
    net, split = _tiny()
    sw = SwitchedNetwork(net)
    for bad in (dict(guide="nope"), dict(elbo="x"), dict(schedule="y"), dict(batch_size=0),
                dict(alpha0=0.0), dict(floor=2.0, init_concentration=1.0)):
        with pytest.raises(ValueError):
            fit_switches(sw, split, SwitchConfig(**bad))
