"""Weights that adapt while the switches are learned: a Gaussian prior centred on the
pre-trained weights, for the switch model with learned weights.

The frozen-network model of the paper gives the posterior of the switches of *that* network: it
says which units the pre-trained network uses, not which units a network that goes on learning
can do without. Bayesian pruning methods that reach the best LeNet-5 sizes learn the sparsity
posterior while the weights adapt. Here every parameter tensor W_k of the network gets the prior

    W_k ~ Normal(W0_k, sigma^2 I),

centred on its pre-trained value W0_k, and the guide holds a point estimate of it (a ``Delta``),
so that the ELBO of eq. 7 gains the weights' log-prior,

    L(phi, W) = sum_n E_q[log p(y_n | x_n, s, W)] - sum_l KL(q(s_l) || p(s_l)) + log p(W),

whose maximum over W is the MAP estimate: Adam on the mean cross-entropy with weight decay
1 / (N sigma^2) *towards W0*, not towards zero.

Why the prior is centred on W0, and why the switch stays meaningful. With trainable weights a
unit's switch and the weights that read its output trade scale: a ReLU unit whose switch shrinks
by a factor k keeps its contribution if its outgoing weights grow by 1/k. Without a prior the
switch magnitude would say nothing. Under N(W0, sigma^2) that compensation costs
(1/k - 1)^2 ||w_out||^2 / (2 sigma^2) nats, so a unit the network can do without lets its switch
fall (the Dirichlet prior with alpha0 < 1 rewards this), while a unit it needs keeps it. Sigma
sets the exchange rate: small sigma is the frozen network; large sigma lets the weights absorb
the switch. With ``scale="dim"`` (the layer's output times D_l s_l) the model at the prior mean
of the switches is exactly the pre-trained network, so sigma measures departures from it.

The network stays a plain ``nn.Module`` (never a ``PyroModule``, whose parameters Pyro would
make trainable in place, Pyro issue #3438): the model runs it with ``torch.func.functional_call``
on the sampled weights, and the module's own tensors never change.
"""
from __future__ import annotations

import math
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn


def weight_site(name: str) -> str:
    """Name of the sample site of a parameter tensor (``fc1.weight`` → ``weights.fc1.weight``)."""
    return f"weights.{name}"


class WeightPrior:
    """p(W) = prod_k Normal(W_k | W0_k, scale^2 I) over the named parameter tensors of ``net``
    (module docstring). ``W0`` is a detached copy taken now; ``net`` itself is never changed.

    Args:
        net: the pre-trained network.
        scale: sigma, the prior standard deviation of every weight (> 0).
        names: the parameter tensors to learn (default: all of ``net.named_parameters()``);
            the others stay at their pre-trained values.
    """

    def __init__(self, net: nn.Module, scale: float, names: Sequence[str] | None = None) -> None:
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale (the weights' prior standard deviation) must be a positive number, got {scale!r}")
        params = dict(net.named_parameters())
        names = list(params) if names is None else list(names)
        unknown = [n for n in names if n not in params]
        if unknown or not names or len(set(names)) != len(names):
            raise ValueError(f"names must be distinct parameters of the network, got {names}")
        self.scale = float(scale)
        self.names = names
        self.initial = {n: params[n].detach().clone() for n in names}

    def distribution(self, name: str) -> dist.TorchDistribution:
        """Normal(W0_k, scale^2 I) of one parameter tensor, as one event."""
        w0 = self.initial[name]
        return dist.Normal(w0, torch.full_like(w0, self.scale), validate_args=False).to_event(w0.dim())

    def sample(self) -> dict[str, torch.Tensor]:
        """The weights' sample sites (Pyro statements), by parameter name."""
        return {n: pyro.sample(weight_site(n), self.distribution(n)) for n in self.names}

    def log_prob(self, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """log p(W) of the given tensors."""
        return sum(self.distribution(n).log_prob(weights[n]) for n in self.names)
