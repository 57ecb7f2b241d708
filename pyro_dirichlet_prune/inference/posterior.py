"""The switch posterior of a fitted guide: means, marginal credible intervals, parameters, ELBO.

For the Dirichlet guide the marginals are exact: if s_l ~ Dirichlet(phi_l) then

    s_lj ~ Beta(phi_lj, phi_l0 - phi_lj),   phi_l0 = sum_j phi_lj,

so the equal-tailed interval at level 1 - a is [Beta⁻¹(a/2), Beta⁻¹(1 - a/2)] (scipy's
``special.betaincinv``), and the posterior probability that unit j carries less than a fraction tau of
its uniform share is exact too:

    P(D_l · s_lj < tau) = I_{tau / D_l}(phi_lj, phi_l0 - phi_lj)   (regularised incomplete beta).

For the autoguides the intervals and probabilities are Monte-Carlo estimates from the guide's draws.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyro
import pyro.util
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from scipy.special import betainc, betaincinv

from ..data import Split, SplitLoader
from ..models.switched import SwitchModel, switch_site
from .guides import DirichletGuide, all_layers, guide_model


CREDIBLE_LEVEL = 0.95


@dataclass
class SwitchPosterior:
    """Per layer: posterior means E_q[s_l] and equal-tailed marginal credible intervals."""

    guide: str
    level: float
    means: dict[str, torch.Tensor]
    lower: dict[str, torch.Tensor]
    upper: dict[str, torch.Tensor]
    elbo: float | None = None
    elbo_se: float | None = None
    exact: bool = True
    extra: dict = field(default_factory=dict)
    concentrations: dict[str, torch.Tensor] | None = None
    samples: dict[str, torch.Tensor] | None = None
    stage_elbos: dict[str, tuple[float, float]] | None = None  # layer-by-layer fits: (ELBO_l, standard error)

    @property
    def widths(self) -> dict[str, int]:
        return {layer: int(m.numel()) for layer, m in self.means.items()}

    def prob_below(self, tau: float) -> dict[str, torch.Tensor]:
        """P(D_l · s_lj < tau) for every unit: exact for a Dirichlet posterior (module docstring),
        the fraction of the stored draws otherwise."""
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau}")
        out = {}
        for layer, d in self.widths.items():
            if self.concentrations is not None and layer in self.concentrations:
                a = self.concentrations[layer].detach().double().numpy()
                out[layer] = torch.from_numpy(np.asarray(betainc(a, a.sum() - a, min(tau / d, 1.0)), dtype=np.float64))
            elif self.samples is not None and layer in self.samples:
                out[layer] = (d * self.samples[layer] < tau).double().mean(0)
            else:
                raise ValueError(f"posterior of layer {layer} has neither concentrations nor draws")
        return out

    def stage_elbos_json(self) -> dict[str, dict[str, float]] | None:
        """``stage_elbos`` as ``{layer: {"elbo": ..., "standard_error": ...}}``, or None."""
        if self.stage_elbos is None:
            return None
        return {layer: {"elbo": e, "standard_error": se} for layer, (e, se) in self.stage_elbos.items()}

    def to_json(self) -> dict:
        """A JSON-able dict that ``from_json`` turns back into an equal posterior: per layer the
        means, interval ends and, where present, the concentrations or the stored draws."""
        layers = {}
        for layer in self.means:
            entry = {"mean": self.means[layer].tolist(), "lower": self.lower[layer].tolist(),
                     "upper": self.upper[layer].tolist()}
            if self.concentrations is not None and layer in self.concentrations:
                entry["concentration"] = self.concentrations[layer].tolist()
            if self.samples is not None and layer in self.samples:
                entry["samples"] = self.samples[layer].tolist()
            layers[layer] = entry
        return {
            "guide": self.guide,
            "level": self.level,
            "exact_marginals": self.exact,
            "elbo": self.elbo,
            "elbo_standard_error": self.elbo_se,
            "stage_elbos": self.stage_elbos_json(),
            "layers": layers,
        }

    @classmethod
    def from_json(cls, obj: dict) -> "SwitchPosterior":
        """The posterior that ``to_json`` wrote."""
        layers = obj["layers"]

        def tensors(key: str) -> dict[str, torch.Tensor] | None:
            found = {k: torch.tensor(v[key], dtype=torch.float64) for k, v in layers.items() if key in v}
            return found or None

        stage = obj.get("stage_elbos")
        return cls(obj["guide"], obj["level"], tensors("mean"), tensors("lower"), tensors("upper"),
                   elbo=obj.get("elbo"), elbo_se=obj.get("elbo_standard_error"), exact=obj["exact_marginals"],
                   concentrations=tensors("concentration"), samples=tensors("samples"),
                   stage_elbos={k: (v["elbo"], v["standard_error"]) for k, v in stage.items()} if stage else None)


def dirichlet_posterior(concentrations: dict[str, torch.Tensor], level: float = 0.95, guide: str = "dirichlet") -> SwitchPosterior:
    """Exact Beta marginals of Dirichlet(phi_l) for every layer (module docstring)."""
    if not 0 < level < 1:
        raise ValueError(f"credible level must be in (0, 1), got {level}")
    tail = (1 - level) / 2
    means, lower, upper = {}, {}, {}
    for layer, phi in concentrations.items():
        a = phi.detach().double().numpy()
        b = a.sum() - a
        means[layer] = torch.from_numpy(a / a.sum())
        lower[layer] = torch.from_numpy(np.asarray(betaincinv(a, b, tail), dtype=np.float64))
        upper[layer] = torch.from_numpy(np.asarray(betaincinv(a, b, 1 - tail), dtype=np.float64))
    return SwitchPosterior(guide, level, means, lower, upper, exact=True,
                           concentrations={k: v.detach().double().clone() for k, v in concentrations.items()})


@torch.no_grad()
def monte_carlo_posterior(guide, widths: dict[str, int], *args, level: float = 0.95, num_samples: int = 1000,
                          name: str = "autoguide") -> SwitchPosterior:
    """Means and equal-tailed quantile intervals from ``num_samples`` draws of the guide."""
    draws = {layer: [] for layer in widths}
    for _ in range(num_samples):
        trace = poutine.trace(guide).get_trace(*args)
        missing = [switch_site(layer) for layer in widths if switch_site(layer) not in trace.nodes]
        if missing:
            found = sorted(n for n, site in trace.nodes.items() if site["type"] == "sample")
            raise ValueError(f"guide samples no site {', '.join(missing)} (its sites: {', '.join(found) or 'none'}): "
                             f"it was built for another model, or for some layers only")
        for layer in widths:
            draws[layer].append(trace.nodes[switch_site(layer)]["value"].double())
    tail = (1 - level) / 2
    means, lower, upper = {}, {}, {}
    for layer, values in draws.items():
        v = torch.stack(values)
        means[layer] = v.mean(0)
        lower[layer] = torch.quantile(v, tail, dim=0)
        upper[layer] = torch.quantile(v, 1 - tail, dim=0)
    return SwitchPosterior(name, level, means, lower, upper, exact=False,
                           samples={k: torch.stack(v) for k, v in draws.items()})


STRUCTURES = {"sequential": "per-stage conditional posteriors (layer by layer, the others pre-trained)",
              "joint": "one joint variational posterior"}
"""What the posterior of a fit is, by its schedule (the report's and ArviZ's ``structure``)."""


def posterior_of(model: SwitchModel, guide, level: float = CREDIBLE_LEVEL, num_samples: int = 1000,
                 name: str | None = None) -> SwitchPosterior:
    """The switch posterior that ``guide`` holds for every switched layer of ``model``.

    Returns a ``SwitchPosterior``: per layer the posterior means ``means[l]`` (a ``(D_l,)``
    tensor), the ends ``lower[l]``/``upper[l]`` of the equal-tailed marginal credible intervals at
    ``level``, and ``prob_below(tau)``. For a ``DirichletGuide`` these are exact (the Beta
    marginals of the module docstring; ``concentrations`` holds phi); for any other guide they
    are Monte-Carlo estimates from ``num_samples`` draws (``samples`` holds them, ``exact`` is
    False). After a layer-by-layer fit (``fit(schedule="sequential")``) layer l's marginal is
    the one fitted while the other layers were the pre-trained network: a per-stage conditional
    posterior, not the marginal of one joint posterior.

    The guide must have been built for ``model`` (a ``ValueError`` otherwise) and run once (an
    autoguide builds its parameters on its first call)."""
    if not isinstance(model, SwitchModel):
        raise TypeError(f"model must be a SwitchModel, got {type(model).__name__}")
    built_for = guide_model(guide)
    if built_for is not None and built_for is not model:
        raise ValueError(f"guide was built for another SwitchModel (layers {', '.join(built_for.layers)}) than "
                         f"model (layers {', '.join(model.layers)}): pass the model the guide was made with")
    if isinstance(guide, DirichletGuide):
        return dirichlet_posterior(guide.concentrations(), level, name or "dirichlet")
    if getattr(guide, "prototype_trace", True) is None:
        raise ValueError("guide has no parameters yet: fit it (or run it once on a minibatch) first")
    with all_layers(model):
        return monte_carlo_posterior(guide, model.widths, level=level, num_samples=num_samples,
                                     name=name or type(guide).__name__)


@torch.no_grad()
def estimate_elbo(model, guide, data, batch_size: int = 256, num_particles: int = 8,
                  max_batches: int | None = 20, seed: int = 0) -> tuple[float, float]:
    """The ELBO (eq. 7) with ``num_particles`` particles on each of up to ``max_batches``
    minibatches of ``data`` (a ``Split``, shuffled with ``seed`` into batches of ``batch_size``,
    or any iterable of ``(x, y[, idx])`` minibatches); each minibatch estimate is unbiased for
    the full-data ELBO, thanks to the plate's N/B scaling. Returns the mean and its standard
    error over the minibatches. Only the model's active layers are switched.

    ``seed`` also seeds the switch draws, so the same call gives the same number every time;
    the caller's random generators are left as they were (a ``DataLoader`` that shuffles from
    torch's global generator is the one exception: its order depends on that generator, so
    seed it, or pass a ``Split``, for a repeatable number)."""
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=False)
    values = []
    if isinstance(data, Split):
        data = SplitLoader(data, batch_size, True, torch.Generator().manual_seed(seed))
    before = pyro.util.get_rng_state()
    try:
        for i, batch in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            if i == 0:  # after the loader has drawn its order, so that the order is not changed
                pyro.set_rng_seed(seed)
            values.append(-elbo.loss(model, guide, *batch))
    finally:
        pyro.util.set_rng_state(before)
    t = torch.tensor(values, dtype=torch.float64)
    se = float(t.std() / math.sqrt(len(t))) if len(t) > 1 else float("nan")
    return float(t.mean()), se
