"""ELBO objectives for the switch model besides Pyro's own ``Trace_ELBO``/``TraceMeanField_ELBO``.

``MeanSwitchELBO`` is the "mean" variant of Adamczewski & Park (2021): the likelihood is
evaluated once at the Dirichlet mean of the guide and the KL is in closed form,

    L_mean(phi) = sum_n log p(y_n | x_n, s = phi / sum(phi)) - sum_l KL(Dir(phi_l) || Dir(alpha0 · 1)),

with the Dirichlet KL

    KL(Dir(a) || Dir(b)) = log Γ(a0) - sum_j log Γ(a_j) - log Γ(b0) + sum_j log Γ(b_j)
                           + sum_j (a_j - b_j)(ψ(a_j) - ψ(a0)),   a0 = sum_j a_j, b0 = sum_j b_j.

Point-estimated sites of the guide (``Delta``, e.g. learned weights) contribute their prior
log-density at the point, log p(W_hat), as in MAP.

It is deterministic and not a lower bound in general (Jensen's inequality does not hold
at the mean), but it is the paper's cheap variant.
"""
from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.infer.util import torch_item
from torch.distributions import kl_divergence


def dirichlet_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Closed-form KL(Dir(a) || Dir(b)) over the last dimension (equation in the module docstring)."""
    a0 = a.sum(-1)
    b0 = b.sum(-1)
    return (
        torch.lgamma(a0)
        - torch.lgamma(a).sum(-1)
        - torch.lgamma(b0)
        + torch.lgamma(b).sum(-1)
        + ((a - b) * (torch.digamma(a) - torch.digamma(a0).unsqueeze(-1))).sum(-1)
    )


class MeanSwitchELBO(ELBO):
    """The paper's mean variant (module docstring). Latent sites of the guide must be
    distributions with a ``mean`` and a closed-form KL against the model's prior."""

    def _get_trace(self, model, guide, args, kwargs):  # pragma: no cover - not trace-based
        raise NotImplementedError("MeanSwitchELBO evaluates the model at the guide's mean; it draws no traces")

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        latent = {
            name: site
            for name, site in guide_trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]
        }
        means = {name: site["fn"].mean for name, site in latent.items()}
        model_trace = poutine.trace(poutine.condition(model, data=means)).get_trace(*args, **kwargs)
        elbo = torch.zeros(())
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if name in latent and isinstance(latent[name]["fn"], dist.Delta):
                # a point estimate (learned weights): its term is the prior's log-density, MAP
                elbo = elbo + (site["scale"] * site["fn"].log_prob(site["value"])).sum()
            elif name in latent:
                q, p = latent[name]["fn"], site["fn"]
                if isinstance(q, dist.Dirichlet) and isinstance(p, dist.Dirichlet):  # the closed form above
                    kl = dirichlet_kl(q.concentration, p.concentration).sum()
                else:
                    kl = kl_divergence(q, p).sum()
                elbo = elbo - site["scale"] * kl
            else:
                elbo = elbo + (site["scale"] * site["fn"].log_prob(site["value"])).sum()
        return -elbo

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return torch_item(loss)
