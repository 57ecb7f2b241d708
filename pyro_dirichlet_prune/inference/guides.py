"""The Dirichlet guide: one learnable concentration vector per switched layer.

    q(s_l) = Dirichlet(phi_l),   phi_l > floor (elementwise).

Samples are drawn with ``Dirichlet.rsample``, whose gradient with respect to phi is
torch's implicit reparameterisation gradient of the Gamma sampler. Concentrations are
float64 (see ``models.switched.SWITCH_DTYPE``) and are constrained above ``floor`` so that
sampling and log-densities stay sound: a float64 Gamma(a) sample underflows with
probability about exp(-709·a), i.e. never for a ≥ 0.03 (float32 underflows at
exp(-87·a), 7% of the time for a = 0.03).
"""
from __future__ import annotations

from typing import Mapping

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from ..models.switched import SAMPLINGS, SWITCH_DTYPE, switch_draws, switch_site

DEFAULT_FLOOR = 0.05


def concentration_param(layer: str) -> str:
    """Name of the param-store entry holding a layer's concentrations phi_l."""
    return f"concentration.{layer}"


class DirichletSwitchGuide:
    """Pyro guide ``guide(x, y=None, idx=None)`` with sites ``switch.<layer> ~ Dirichlet(phi_l)``.

    Args:
        widths: units per switched layer, in the order of the model's sites.
        init_concentration: initial value of every phi_lj (the initial mean is uniform, so the
            initial switched network is the pre-trained one).
        floor: lower bound of every phi_lj.
        sampling: ``"shared"`` or ``"per-example"``, as the model's (``models.switched``).
    """

    def __init__(
        self, widths: Mapping[str, int], init_concentration: float = 10.0, floor: float = DEFAULT_FLOOR,
        sampling: str = "shared",
    ) -> None:
        if sampling not in SAMPLINGS:
            raise ValueError(f"unknown switch sampling {sampling!r}; choose one of {', '.join(SAMPLINGS)}")
        self.sampling = sampling
        if not floor > 0:
            raise ValueError(f"concentration floor must be positive, got {floor}")
        if not init_concentration > floor:
            raise ValueError(f"initial concentration {init_concentration} must exceed the floor {floor}")
        self.widths = dict(widths)
        self.init_concentration = float(init_concentration)
        self.floor = float(floor)
        self._constraint = constraints.greater_than(self.floor)

    def concentration(self, layer: str) -> torch.Tensor:
        """phi_l as a (constrained) param of the param store, created on first use."""
        return pyro.param(
            concentration_param(layer),
            lambda: torch.full((self.widths[layer],), self.init_concentration, dtype=SWITCH_DTYPE),
            constraint=self._constraint,
        )

    def __call__(self, x=None, y=None, idx=None) -> dict[str, torch.Tensor]:
        if self.sampling == "per-example" and x is None:
            raise ValueError("per-example switch sampling needs the minibatch x")
        with switch_draws(self.sampling, x.shape[0] if x is not None else 1):
            return {
                layer: pyro.sample(switch_site(layer), dist.Dirichlet(self.concentration(layer), validate_args=False))
                for layer in self.widths
            }

    def concentrations(self) -> dict[str, torch.Tensor]:
        """Current phi_l of every layer, detached."""
        return {layer: self.concentration(layer).detach().clone() for layer in self.widths}
