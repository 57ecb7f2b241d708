"""The two switch scalings of the model: ``dim`` multiplies a layer's output by D·s (the
prior mean 1/D leaves the network unchanged), ``simplex`` multiplies it by s itself."""
from __future__ import annotations

import pytest
import torch
from pyro import poutine

from pyro_dirichlet_prune.models import SwitchModel, SwitchedNetwork, build_model
from pyro_dirichlet_prune.models.switched import switch_site


def _conv1_output(scale: str, s: torch.Tensor, gain: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = build_model("lenet5", widths=(4, 3, 5, 2)).eval()
    sw = SwitchedNetwork(net)
    seen = {}
    net.conv1.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    x = torch.randn(3, 1, 28, 28)
    model = SwitchModel(sw, num_data=10, alpha0=0.5, layers=["conv1"], scale=scale, gain=gain)
    poutine.condition(model, data={switch_site("conv1"): s})(x)
    with torch.no_grad():
        raw = torch.nn.functional.conv2d(x, net.conv1.weight, net.conv1.bias)
    return seen["out"], raw


@pytest.mark.parametrize("scale,factor", [("dim", 4.0), ("simplex", 1.0)])
def test_switch_multiplies_layer_output(scale, factor):
    s = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    out, raw = _conv1_output(scale, s)
    expected = raw * (factor * s).float().view(1, -1, 1, 1)
    torch.testing.assert_close(out, expected)


def test_dim_scale_at_prior_mean_is_the_pretrained_network():
    out, raw = _conv1_output("dim", torch.full((4,), 0.25, dtype=torch.float64))
    torch.testing.assert_close(out, raw)


def test_unknown_scale_is_refused():
    net = build_model("lenet5")
    with pytest.raises(ValueError, match="scale must be one of"):
        SwitchModel(SwitchedNetwork(net), num_data=10, alpha0=0.5, scale="log")


@pytest.mark.parametrize("gain", [0.5, 8.0])
def test_simplex_gain_multiplies_layer_output_by_gain_times_switch(gain):
    s = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    out, raw = _conv1_output("simplex", s, gain)
    torch.testing.assert_close(out, raw * (gain * s).float().view(1, -1, 1, 1))


def test_bad_gains_are_refused():
    from pyro_dirichlet_prune.inference.svi import SwitchConfig

    net = SwitchedNetwork(build_model("lenet5"))
    for gain in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="gain must be positive"):
            SwitchModel(net, num_data=10, alpha0=0.5, gain=gain)
    with pytest.raises(ValueError, match="needs scale 'simplex'"):
        SwitchConfig(scale="dim", gain=2.0).validate()
    SwitchConfig(scale="dim", gain=1.0).validate()


def test_switch_gain_reaches_the_model_from_the_command_line():
    from pyro_dirichlet_prune import cli
    from pyro_dirichlet_prune.cli.options import switch_config

    args = cli.build_parser().parse_args(["prune", "--switch-gain", "4", "--out", "x"])
    assert switch_config(args).gain == 4.0
