"""The Pyro model of Dirichlet pruning.

For every prunable layer l with D_l units the model draws an importance switch

    s_l ~ Dirichlet(alpha0 · 1_{D_l})

and multiplies the layer's pre-activation channel-wise by D_l · s_l (the prior mean
1/D_l then leaves the pre-trained network unchanged). The labels are

    y_n | x_n, s ~ Categorical(logits = f(x_n; W, s)),   n = 1..N,

inside ``pyro.plate("data", N, subsample=idx)`` so that a minibatch of size B is scaled
by N/B and the ELBO is eq. 7 of Adamczewski & Park (2021):

    L(phi) = sum_n E_q[log p(y_n | x_n, s)] - sum_l KL(Dir(phi_l) || Dir(alpha0 · 1)).

The network's weights W are frozen and never enter Pyro's param store.

Per-example sampling (``sampling="per-example"``) draws an independent switch s^(i) ~ q for
every example i of a minibatch of size B and scores the prior and guide densities of the B
draws with weight 1/B (``pyro.plate("switch_draws", B)`` under ``poutine.scale(1/B)``):

    (N/B) sum_i log p(y_i | x_i, s^(i)) + (1/B) sum_i [log p(s^(i)) - log q(s^(i))],

whose expectation is the same ELBO as one shared draw, since the expected log-likelihood is
linear in the examples; the B draws decorrelate the examples' terms and lower the variance.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Mapping, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from .switch_points import SwitchPoint, switch_points

SWITCH_DTYPE = torch.float64
"""Switches are sampled and scored in float64: in float32, Dirichlet samples of small
concentrations underflow to the smallest float and their log-density is badly biased."""


SCALES = ("dim", "simplex")
SAMPLINGS = ("shared", "per-example")


@contextlib.contextmanager
def switch_draws(sampling: str, batch: int):
    """Context of the switch sites: nothing for one shared draw; for per-example sampling a
    plate of ``batch`` independent draws whose log-densities are averaged (weight 1/batch)."""
    if sampling == "shared":
        yield
    elif sampling == "per-example":
        with pyro.plate("switch_draws", batch), poutine.scale(scale=1.0 / batch):
            yield
    else:
        raise ValueError(f"unknown switch sampling {sampling!r}; choose one of {', '.join(SAMPLINGS)}")


def switch_site(layer: str) -> str:
    """Name of the sample site of a layer's switch."""
    return f"switch.{layer}"


class SwitchedNetwork(nn.Module):
    """A frozen network whose switch points multiply their outputs by given scales.

    ``with net.scaled({"conv1": scale}): net(x)`` multiplies the output of conv1 by
    ``scale`` (shape ``(D,)`` shared by the batch, or ``(B, D)`` per example); layers not
    named are left unchanged. Outside the context the network is the plain network. The
    scales may live on the CPU while the network runs on a GPU (``forward``).
    """

    def __init__(self, net: nn.Module, points: Sequence[SwitchPoint] | None = None) -> None:
        super().__init__()
        self.net = net
        self.points = list(points) if points is not None else switch_points(net)
        names = [p.name for p in self.points]
        if len(set(names)) != len(names):
            raise ValueError(f"switch point names must be unique, got {names}")
        for p in net.parameters():
            p.requires_grad_(False)
        self._scales: dict[str, torch.Tensor] = {}
        self._handles = [p.hooked.register_forward_hook(self._hook(p.name)) for p in self.points]

    @property
    def widths(self) -> dict[str, int]:
        return {p.name: p.width for p in self.points}

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            scale = self._scales.get(name)
            if scale is None:
                return None
            if scale.dtype != output.dtype or scale.device != output.device:
                scale = scale.to(device=output.device, dtype=output.dtype)
            if scale.dim() == 1:
                scale = scale.view(1, -1, *([1] * (output.dim() - 2)))
            else:
                scale = scale.view(scale.shape[0], -1, *([1] * (output.dim() - 2)))
            return output * scale

        return hook

    @contextlib.contextmanager
    def scaled(self, scales: Mapping[str, torch.Tensor]) -> Iterator["SwitchedNetwork"]:
        unknown = set(scales) - set(self.widths)
        if unknown:
            raise KeyError(f"no switch point named {sorted(unknown)}")
        previous = self._scales
        self._scales = dict(scales)
        try:
            yield self
        finally:
            self._scales = previous

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output on the device of ``x``. A network moved to a GPU runs there
        while the switches, the data and Pyro stay on the CPU: the inputs are moved to the
        network's device and its outputs back."""
        device = next(iter(self.net.parameters()), x).device
        if device == x.device:
            return self.net(x)
        return self.net(x.to(device)).to(x.device)

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def switch_factors(widths: Mapping[str, int], scale: str, gain: float = 1.0) -> dict[str, float]:
    """The constant c_l of each layer's multiplier c_l · s_l: ``gain`` for ``simplex``, D_l for ``dim``."""
    if not (gain > 0 and math.isfinite(gain)):
        raise ValueError(f"switch gain must be positive and finite, got {gain}")
    if scale == "dim" and gain != 1.0:
        raise ValueError("a switch gain other than 1 needs scale 'simplex' (dim multiplies by D_l · s_l)")
    return {n: float(d) if scale == "dim" else float(gain) for n, d in widths.items()}


class DirichletSwitchModel:
    """Pyro model ``model(x, y=None, idx=None)`` of Dirichlet pruning (see module docstring).

    Args:
        network: the frozen switched network.
        alpha0: concentration of the symmetric Dirichlet prior on every switch.
        num_data: N, the size of the training set that minibatches are scaled to.
        layers: the switch points that get a switch (default all); the others are left
            unswitched, which is how per-layer sequential learning fits one layer at a time.
        scale: ``"simplex"`` (default) multiplies by s_l itself, as written in the paper (the layer's total
            output is then shrunk by 1/D_l and the likelihood rewards putting the switch mass on
            the units that matter); ``"dim"`` multiplies by D_l · s_l (the prior mean is then the
            pre-trained network, and the posterior mean ranks units about as well as chance:
            docs/experiments.md).
        sampling: ``"shared"`` (one switch draw per layer for the whole minibatch) or
            ``"per-example"`` (one draw per example; module docstring). The guide must match.
        gain: with ``scale="simplex"``, the output is multiplied by ``gain · s_l`` (default 1, the
            paper's). The likelihood buys back the 1/k shrink of k units sharing the mass by
            concentrating it, so the gain sets how many units carry the mass
            (``benchmarks/switch_gain.py``). Must be 1 with ``scale="dim"``.
    """

    def __init__(
        self,
        network: SwitchedNetwork,
        alpha0: float,
        num_data: int,
        layers: Sequence[str] | None = None,
        scale: str = "simplex",
        sampling: str = "shared",
        gain: float = 1.0,
    ) -> None:
        if sampling not in SAMPLINGS:
            raise ValueError(f"unknown switch sampling {sampling!r}; choose one of {', '.join(SAMPLINGS)}")
        self.sampling = sampling
        if scale not in SCALES:
            raise ValueError(f"unknown switch scale {scale!r}; choose one of {', '.join(SCALES)}")
        if not alpha0 > 0:
            raise ValueError(f"alpha0 must be positive, got {alpha0}")
        if num_data < 1:
            raise ValueError(f"num_data must be positive, got {num_data}")
        self.network = network
        self.alpha0 = float(alpha0)
        self.num_data = int(num_data)
        widths = network.widths
        self.layers = list(layers) if layers is not None else list(widths)
        unknown = [n for n in self.layers if n not in widths]
        if unknown:
            raise KeyError(f"no switch point named {unknown}")
        self.widths = {n: widths[n] for n in self.layers}
        self.scale = scale
        self._factor = switch_factors(self.widths, scale, gain)
        self._prior = {
            n: torch.full((d,), self.alpha0, dtype=SWITCH_DTYPE) for n, d in self.widths.items()
        }

    def prior(self, layer: str) -> dist.Dirichlet:
        """p(s_l) = Dirichlet(alpha0 · 1_{D_l})."""
        return dist.Dirichlet(self._prior[layer], validate_args=False)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor | None = None, idx: torch.Tensor | None = None
    ) -> torch.Tensor:
        scales = {}
        with switch_draws(self.sampling, x.shape[0]):
            for name, d in self.widths.items():
                s = pyro.sample(switch_site(name), self.prior(name))
                scales[name] = (self._factor[name] * s).to(torch.get_default_dtype())
        with self.network.scaled(scales):
            logits = self.network(x)
        if idx is None:
            idx = torch.arange(x.shape[0])
        with pyro.plate("data", self.num_data, subsample=idx):
            pyro.sample("obs", dist.Categorical(logits=logits, validate_args=False), obs=y)
        return logits
