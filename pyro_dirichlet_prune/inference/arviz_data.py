"""The switch posterior as ArviZ's ``InferenceData``: how statisticians read any posterior.

``to_inference_data(model, guide)`` draws every layer's switch from a fitted guide (any guide of
the model: ``DirichletGuide``, an autoguide, yours) into the ``posterior`` group, one variable per
layer named by its Pyro site (``switch.conv1``) with the dimension ``conv1_unit``, so that
``az.summary``, ``az.plot_forest`` and ``az.plot_posterior`` work on the switches as on any
posterior. ``mcmc_inference_data(mcmc, model)`` does the same for Pyro's ``MCMC`` (a NUTS
reference), with the same names and dimensions, so the two sit side by side in one forest plot.

What the draws are, in ``attrs``: a guide's draws are independent draws from q(s), not a Markov
chain; they are split into ``chains`` groups only so that ArviZ's diagnostics run, and R-hat ≈ 1
and ESS ≈ the number of draws hold by construction (they say nothing about convergence of the
fit: ``FitResult`` does). After a layer-by-layer fit (the default schedule) each layer's draws
are from its per-stage conditional posterior, fitted while the other layers were the
pre-trained network, not from one joint posterior; ``attrs["structure"]`` says which.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from pyro import poutine

from ..models.switched import SwitchModel, switch_site
from .guides import DirichletGuide, all_layers, guide_model
from .posterior import STRUCTURES

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # ArviZ 0.x announces its 1.0 refactor on import
    import arviz as az


def unit_dims(model: SwitchModel) -> tuple[dict[str, list[str]], dict[str, list[int]]]:
    """ArviZ's ``dims`` and ``coords`` of the switch sites: ``switch.<layer>`` over ``<layer>_unit``."""
    dims = {switch_site(layer): [f"{layer}_unit"] for layer in model.layers}
    coords = {f"{layer}_unit": list(range(width)) for layer, width in model.widths.items()}
    return dims, coords


@torch.no_grad()
def guide_draws(model: SwitchModel, guide, num_samples: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """``num_samples`` independent draws of every layer's switch from ``guide``, by site name
    (``(num_samples, D_l)`` float64 arrays). A ``DirichletGuide``'s come from Dir(phi_l) itself;
    any other guide is run ``num_samples`` times with every layer switched. Seeded with ``seed``;
    the caller's random generators are left as they were."""
    if not isinstance(model, SwitchModel):
        raise TypeError(f"model must be a SwitchModel, got {type(model).__name__}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    built_for = guide_model(guide)
    if built_for is not None and built_for is not model:
        raise ValueError("guide was built for another SwitchModel than model: pass the model the guide was made with")
    if getattr(guide, "prototype_trace", True) is None:
        raise ValueError("guide has no parameters yet: fit it (or run it once on a minibatch) first")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if isinstance(guide, DirichletGuide):
            return {switch_site(layer): torch.distributions.Dirichlet(phi).sample((num_samples,)).double().numpy()
                    for layer, phi in guide.concentrations().items()}
        args = (torch.zeros(1, *model.input_shape),) if model.input_shape else ()
        draws: dict[str, list[torch.Tensor]] = {switch_site(layer): [] for layer in model.layers}
        with all_layers(model):
            for _ in range(num_samples):
                trace = poutine.trace(guide).get_trace(*args)
                for site, values in draws.items():
                    if site not in trace.nodes:
                        raise ValueError(f"guide samples no site {site}: it was built for another model, or for "
                                         f"some layers only")
                    values.append(trace.nodes[site]["value"].reshape(-1).double())
    return {site: torch.stack(values).numpy() for site, values in draws.items()}


def to_inference_data(model: SwitchModel, guide, num_samples: int = 1000, chains: int = 4, seed: int = 0,
                      schedule: str | None = None) -> az.InferenceData:
    """The guide's switch posterior as ``arviz.InferenceData`` (module docstring): ``num_samples``
    draws split into ``chains`` chains of ``num_samples // chains`` draws (``num_samples`` must be
    a multiple of ``chains``). ``schedule``: how the guide was fitted (``"sequential"`` or
    ``"joint"``; None when unknown), recorded in ``attrs`` as per-stage conditionals or a joint
    posterior."""
    if isinstance(chains, bool) or not isinstance(chains, int) or chains < 1:
        raise ValueError(f"chains must be a positive int, got {chains!r}")
    if isinstance(num_samples, int) and num_samples % chains:
        raise ValueError(f"num_samples ({num_samples}) must be a multiple of chains ({chains})")
    if schedule not in (None, "sequential", "joint"):
        raise ValueError(f"schedule must be 'sequential', 'joint' or None, got {schedule!r}")
    draws = guide_draws(model, guide, num_samples, seed)
    dims, coords = unit_dims(model)
    posterior = {site: v.reshape(chains, num_samples // chains, v.shape[-1]) for site, v in draws.items()}
    structure = STRUCTURES.get(schedule, "not stated")
    attrs = {"inference_library": "pyro", "source": f"variational guide {type(guide).__name__}",
             "draws": "independent draws from the guide, split into chains for ArviZ's diagnostics",
             "structure": structure, "seed": seed}
    idata = az.from_dict(posterior=posterior, dims=dims, coords=coords)
    idata.posterior.attrs.update(attrs)
    return idata


def mcmc_inference_data(mcmc, model: SwitchModel) -> az.InferenceData:
    """A Pyro ``MCMC`` run of ``model`` (e.g. NUTS) as ``arviz.InferenceData``, its switch sites
    with the dimensions of ``to_inference_data`` (``az.from_pyro``)."""
    dims, coords = unit_dims(model)
    samples = mcmc.get_samples(group_by_chain=True)
    dims = {site: d for site, d in dims.items() if site in samples}
    return az.from_pyro(mcmc, dims=dims, coords=coords, log_likelihood=False)
