"""Guides of the switch model, as ``PyroModule``s whose fitted state lives in the object.

``DirichletGuide`` has one learnable concentration vector per switched layer,

    q(s_l) = Dirichlet(phi_l),   phi_l > floor (elementwise),

and draws with ``Dirichlet.rsample``, whose gradient with respect to phi is torch's implicit
reparameterisation gradient of the Gamma sampler. Concentrations are float64 (see
``models.switched.SWITCH_DTYPE``) and are constrained above ``floor`` so that sampling and
log-densities stay sound: a float64 Gamma(a) sample underflows with probability about
exp(-709·a), i.e. never for a ≥ 0.03 (float32 underflows at exp(-87·a), 7% of the time for
a = 0.03).

``LayerwiseGuide`` is the product q(s) = prod_l q_l(s_l) of one guide per layer, each built by a
factory on the model restricted to that layer (e.g. ``AutoNormal``); it is how an autoguide is
fitted one layer at a time.

For a model with learned weights (``SwitchModel(weight_scale=sigma)``) the ``DirichletGuide``
also holds their point estimate, q(W) = Delta(W_hat) (``PointWeights``, initialised at the
pre-trained weights), which makes the ELBO's weight term log p(W_hat): a MAP estimate.

Both guides (and ``ModuleLocal``, which wraps any guide) keep their parameters module-local, as
with ``pyro.settings.set(module_local_params=True)`` but whatever that global setting is: they
never go under shared names in Pyro's global param store, so two guides fitted in one process
are independent, and ``pyro.optim`` and ``SVI`` find them through the trace as usual. Both sample
the switches of the model's active layers only (``SwitchModel.switching``).
"""
from __future__ import annotations

import contextlib
import functools
import re
import weakref
from typing import Callable, Iterator, Mapping

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoContinuous
from pyro.nn import PyroModule, PyroParam
from pyro.poutine.runtime import effectful
from scipy.special import betaincinv
from torch.distributions import constraints, transform_to

from ..models.switched import SWITCH_DTYPE, SwitchModel, switch_draws, switch_site
from ..models.weight_prior import WeightPrior, weight_site

DEFAULT_FLOOR = 0.05
DEFAULT_INIT = 10.0


def _constrained(name: str, *, constraint, event_dim, value: torch.Tensor) -> torch.Tensor:
    return value


_module_local_param = effectful(_constrained, type="param")
"""A module-local ``pyro.param`` statement of an already constrained value (``PyroModule``'s, with
the same message: ``args=(name,)``, ``constraint`` and ``event_dim``), its wrapper built once."""


def local_params() -> contextlib.AbstractContextManager:
    """Pyro's ``module_local_params`` setting switched on inside the context."""
    return pyro.settings.context(module_local_params=True)


class LocalPyroModule(PyroModule):
    """A ``PyroModule`` whose parameters (and those of its sub-``PyroModule``s) are always
    module-local: every call runs with Pyro's ``module_local_params`` setting on."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        if not hasattr(self._pyro_context, "param_state"):  # made while the global setting was off
            self._pyro_context.param_state = {"params": {}, "constraints": {}}

    def __call__(self, *args, **kwargs):
        with local_params():
            return super().__call__(*args, **kwargs)


class ModuleLocal(LocalPyroModule):
    """Any guide (e.g. an autoguide) with module-local parameters: ``ModuleLocal(AutoNormal(model))``
    is the same guide, whose parameters no other guide of the same name can share.

    It also follows the model's active layers, as this package's guides do: an autoguide of a
    ``SwitchModel`` is built on every switched layer (its first call runs with all layers
    switched, whatever ``model.switching`` says then), and each call hides the switch sites of
    the layers that are not active from the ELBO (``poutine.block``), so that in a layer-by-layer
    loop (``with model.switching([layer]): svi.step(...)``) the guide fits the active layer and
    leaves the others alone."""

    def __init__(self, guide) -> None:
        super().__init__()
        self.guide = guide
        self._model = guide_model(guide)  # found once: the guide's model does not change

    @property
    def prototype_trace(self):
        return getattr(self.guide, "prototype_trace", True)

    def forward(self, *args, **kwargs):
        model = self._model
        if model is None:
            return self.guide(*args, **kwargs)
        if getattr(self.guide, "prototype_trace", True) is None:  # build it on every layer, leaving the RNG alone
            with torch.random.fork_rng(), all_layers(model), poutine.block():
                self.guide(*args, **kwargs)
        inactive = [switch_site(layer) for layer in model.layers if layer not in model.active_layers]
        if not inactive:
            return self.guide(*args, **kwargs)
        if isinstance(self.guide, AutoContinuous):
            raise ValueError(f"guide: {type(self.guide).__name__} draws every layer's switch from one joint latent, "
                             f"so it cannot fit some layers while others ({', '.join(inactive)}) sit out; fit it on "
                             f"all layers at once, or one per layer with LayerwiseGuide(model, factory)")
        hidden = {*inactive, *(site + "_unconstrained" for site in inactive)}  # AutoNormal's latent sites too

        def sits_out(msg: dict) -> bool:
            """A sample site of an inactive layer, or a parameter of one (``guide.locs.switch.conv1``):
            hidden, an optimiser stepping what the trace shows never moves it (Adam's momentum would)."""
            name = msg["name"]
            if msg["type"] == "param":
                return any(name == site or name.endswith("." + site) for site in inactive)
            return name in hidden

        with poutine.block(hide_fn=sits_out):
            out = self.guide(*args, **kwargs)
        return {k: v for k, v in out.items() if k not in hidden} if isinstance(out, dict) else out


def guide_model(guide) -> SwitchModel | None:
    """The ``SwitchModel`` a guide was built for, where the guide says (this package's guides,
    ``ModuleLocal`` and Pyro's autoguides keep it), else None."""
    if isinstance(guide, ModuleLocal):
        return guide._model
    return _unwrap_model(getattr(guide, "model", None))


def _unwrap_model(found, depth: int = 0) -> SwitchModel | None:
    """The ``SwitchModel`` behind a model that Pyro may have wrapped (an autoguide keeps its
    model inside ``functools.partial``s of its messengers)."""
    if isinstance(found, SwitchModel):
        return found
    if isinstance(found, functools.partial) and depth < 8:
        for inner in (found.func, *found.args):
            hit = _unwrap_model(inner, depth + 1)
            if hit is not None:
                return hit
    return None


def _attribute_names(layers: list[str], prefix: str) -> dict[str, str]:
    """A distinct Python attribute name for every layer name (``features.0`` → ``phi_features_0``)."""
    names = {layer: f"{prefix}_{re.sub(r'[^0-9a-zA-Z_]', '_', layer)}" for layer in layers}
    if len(set(names.values())) != len(layers):
        names = {layer: f"{prefix}_{i}" for i, layer in enumerate(layers)}
    return names


class PointWeights(LocalPyroModule):
    """q(W) = Delta(W_hat): the point estimate of the weights of a model with learned weights
    (``models.weight_prior``), one parameter per tensor of the ``WeightPrior``, initialised at
    the pre-trained weights W0."""

    def __init__(self, prior: WeightPrior) -> None:
        if not isinstance(prior, WeightPrior):
            raise TypeError(f"prior must be a WeightPrior, got {type(prior).__name__}")
        super().__init__()
        self.names = list(prior.names)
        self._attr = _attribute_names(self.names, "w")
        for name, w0 in prior.initial.items():
            setattr(self, self._attr[name], PyroParam(w0.clone()))

    def value(self, name: str) -> torch.Tensor:
        """W_hat of one tensor (differentiable inside a Pyro run)."""
        return getattr(self, self._attr[name])

    def weights(self) -> dict[str, torch.Tensor]:
        """The current W_hat of every tensor, detached copies, by parameter name."""
        return {name: self.value(name).detach().clone() for name in self.names}

    def forward(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.names:
            w = self.value(name)
            out[name] = pyro.sample(weight_site(name), dist.Delta(w, event_dim=w.dim()))
        return out


class DirichletGuide(LocalPyroModule):
    """q(s) = prod_l Dirichlet(s_l | phi_l) over the switched layers of ``model`` (module docstring).

    Args:
        model: the ``SwitchModel``; the guide samples its active layers and follows its
            ``sampling`` (one shared draw per minibatch, or one per example).
        init_concentration: initial value of every phi_lj (the initial mean is uniform).
        floor: lower bound of every phi_lj.

    The mean variant of the paper is this guide with ``MeanSwitchELBO`` as the loss. For a model
    with learned weights the guide also holds their point estimate (``point_weights``, a
    ``PointWeights``; ``weights()``).
    """

    def __init__(self, model: SwitchModel, init_concentration: float = DEFAULT_INIT,
                 floor: float = DEFAULT_FLOOR) -> None:
        if not isinstance(model, SwitchModel):
            raise TypeError(f"model must be a SwitchModel, got {type(model).__name__}")
        if not floor > 0:
            raise ValueError(f"floor must be positive, got {floor}")
        if not init_concentration > floor:
            raise ValueError(f"init_concentration {init_concentration} must exceed floor {floor}")
        super().__init__()
        self.model = model
        self.floor = float(floor)
        self.init_concentration = float(init_concentration)
        self.widths = dict(model.widths)
        self._attr = _attribute_names(list(self.widths), "phi")
        self._constraint = constraints.greater_than(self.floor)
        for layer, d in self.widths.items():
            init = torch.full((d,), self.init_concentration, dtype=SWITCH_DTYPE)
            setattr(self, self._attr[layer], PyroParam(init, constraint=self._constraint))
        self.point_weights = PointWeights(model.weight_prior) if model.weight_prior is not None else None

    def weights(self) -> dict[str, torch.Tensor]:
        """W_hat, the point estimate of the weights of a model with learned weights (detached
        copies by parameter name); a ``ValueError`` for a frozen-network model."""
        if self.point_weights is None:
            raise ValueError("model: its weights are frozen (weight_scale=None); the guide holds no weights")
        return self.point_weights.weights()

    @property
    def sampling(self) -> str:
        return self.model.sampling

    def concentration(self, layer: str) -> torch.Tensor:
        """phi_l = floor + exp(u_l), differentiable in the unconstrained u_l, which is the
        ``PyroParam``'s (``transform_to(greater_than(floor))``, bitwise). Inside a Pyro run it
        is announced as the module-local param site ``phi_<layer>`` that ``PyroModule`` makes of
        it (so ``SVI`` finds u_l through the trace), through one wrapper built once instead of
        ``PyroModule.__getattr__``'s new transform and wrapper on every access."""
        name = self._attr[layer]
        unconstrained = self._parameters[name + "_unconstrained"]
        value = self.floor + unconstrained.exp()
        if not self._pyro_context.active:
            return value
        value.unconstrained = weakref.ref(unconstrained)
        fullname = self._pyro_get_fullname(name)
        return _module_local_param(fullname, constraint=self._constraint, event_dim=None, value=value, name=fullname)

    def concentrations(self) -> dict[str, torch.Tensor]:
        """The current phi_l of every layer, detached copies."""
        return {layer: self.concentration(layer).detach().clone() for layer in self.widths}

    @torch.no_grad()
    def set_concentrations(self, values: Mapping[str, torch.Tensor]) -> None:
        """Set phi_l of the layers given (every value above the floor)."""
        for layer, value in values.items():
            if layer not in self.widths:
                raise ValueError(f"values: no switched layer named {layer!r}")
            value = torch.as_tensor(value, dtype=SWITCH_DTYPE)
            if value.shape != (self.widths[layer],) or not bool((value > self.floor).all()):
                raise ValueError(f"values[{layer!r}] must have {self.widths[layer]} entries above the floor {self.floor}")
            unconstrained = getattr(self, self._attr[layer] + "_unconstrained")
            unconstrained.copy_(transform_to(self._constraint).inv(value))

    @torch.no_grad()
    def quantiles(self, quantiles, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The exact marginal quantiles of every unit's switch, Pyro's autoguide protocol: a dict by
        site (``switch.<layer>``) of ``(len(quantiles), D_l)`` float64 tensors. The marginal of a
        Dirichlet is a Beta, s_lj ~ Beta(phi_lj, phi_l0 - phi_lj), so these are its inverse CDF
        (``scipy.special.betaincinv``), not Monte-Carlo estimates. ``args`` are accepted and unused,
        as Pyro's autoguides take the model's arguments."""
        q = np.asarray([float(v) for v in (quantiles.tolist() if torch.is_tensor(quantiles) else quantiles)])
        if q.ndim != 1 or not len(q) or not bool(((q > 0) & (q < 1)).all()):
            raise ValueError(f"quantiles must be levels in (0, 1), got {quantiles!r}")
        out = {}
        for layer, phi in self.concentrations().items():
            a = phi.numpy()
            out[switch_site(layer)] = torch.from_numpy(betaincinv(a[None, :], a.sum() - a[None, :], q[:, None]))
        return out

    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The exact marginal median of every unit's switch, by site (``quantiles([0.5])``): a unit's
        Beta median, so a layer's medians need not sum to one (its mean does)."""
        return {site: v[0] for site, v in self.quantiles([0.5]).items()}

    def forward(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
                idx: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.sampling == "per-example" and x is None:
            raise ValueError("per-example switch sampling needs the minibatch x")
        with switch_draws(self.sampling, x.shape[0] if x is not None else 1):
            switches = {
                layer: pyro.sample(switch_site(layer), dist.Dirichlet(self.concentration(layer), validate_args=False))
                for layer in self.model.active_layers
            }
        if self.point_weights is not None:
            self.point_weights()
        return switches


class LayerwiseGuide(LocalPyroModule):
    """q(s) = prod_l q_l(s_l): one guide per switched layer, ``factory(model.restricted([l]))``,
    e.g. ``LayerwiseGuide(model, AutoNormal)`` or ``LayerwiseGuide(model, lambda m:
    AutoLowRankMultivariateNormal(m, init_loc_fn=init_to_mean))``. Each layer's guide has its own
    parameters (so an ``AutoLowRankMultivariateNormal`` per layer keeps its own flat ``loc``)."""

    def __init__(self, model: SwitchModel, factory: Callable[[SwitchModel], Callable]) -> None:
        if not isinstance(model, SwitchModel):
            raise TypeError(f"model must be a SwitchModel, got {type(model).__name__}")
        if not callable(factory):
            raise TypeError(f"factory must build a guide from a model, got {factory!r}")
        super().__init__()
        self.model = model
        self._attr = _attribute_names(list(model.layers), "guide")
        for layer in model.layers:
            setattr(self, self._attr[layer], factory(model.restricted([layer])))

    def guide(self, layer: str):
        """The guide of one layer."""
        return getattr(self, self._attr[layer])

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        out = {}
        for layer in self.model.active_layers:
            out.update(self.guide(layer)(*args, **kwargs) or {})
        return out


def follows_active_layers(guide) -> bool:
    """Whether ``guide`` samples the switches of the model's active layers only
    (``SwitchModel.switching``), as a layer-by-layer fit needs: this package's guides and
    ``ModuleLocal`` do; any other guide says so with a true ``follows_active_layers`` attribute."""
    return isinstance(guide, (DirichletGuide, LayerwiseGuide, ModuleLocal)) or \
        bool(getattr(guide, "follows_active_layers", False))


@contextlib.contextmanager
def all_layers(model: SwitchModel) -> Iterator[SwitchModel]:
    """Every layer of ``model`` switched inside the context."""
    with model.switching(model.layers):
        yield model
