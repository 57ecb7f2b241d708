"""Guides as one protocol: a ``GuideBuilder`` says how a guide of the switch model is built and
what it is fitted with, so that any guide (the five shipped ones, named ``dirichlet``,
``dirichlet-mean``, ``normal``, ``delta`` and ``lowrank``, or a user's own) goes wherever a guide
name goes: ``SwitchConfig(guide=...)``, ``fit_switches``, ``compare.run_compare`` (``compare-guides``
from Python), the Dirichlet rankings of ``pruning.ranking``.

A user's guide is a subclass with a ``name`` and a ``build``::

    class NarrowNormal(GuideBuilder):
        name = "narrow-normal"

        def build(self, model, cfg):
            return ModuleLocal(AutoNormal(model, init_loc_fn=init_to_mean, init_scale=0.01))

``build(model, cfg)`` returns the guide of the ``SwitchModel`` (any callable Pyro guide of its
sites ``switch.<layer>``; wrap Pyro's autoguides in ``ModuleLocal`` so that its parameters stay in
the object); ``cfg`` is the ``SwitchConfig`` (its ``schedule``, ``init_concentration``, ...).
``loss(cfg)`` is the objective, ``Trace_ELBO(cfg.particles)`` unless overridden. The flags say
which settings the guide supports: ``closed_form_kl`` (``elbo="meanfield"``), ``per_example``
(``sampling="per-example"``), ``learns_weights`` (``weight_scale``: the guide holds the point
estimate of the weights), ``settles`` (``concentration="settled"``: the guide is a
``DirichletGuide``, whose total concentrations ``inference.concentration`` can set). Under ``schedule="sequential"`` the guide must sample the active
layers only (this package's guides and ``ModuleLocal`` do).
"""
from __future__ import annotations

from typing import Any

from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from ..models.switched import SwitchModel
from .autoguides import AUTOGUIDES, make_autoguide
from .elbo import MeanSwitchELBO
from .guides import DirichletGuide, LayerwiseGuide, ModuleLocal


class GuideBuilder:
    """How a guide of the switch model is built (``build``) and fitted (``loss``); module docstring."""

    name: str = ""
    closed_form_kl: bool = False
    per_example: bool = False
    learns_weights: bool = False
    settles: bool = False

    def build(self, model: SwitchModel, cfg: Any):
        raise NotImplementedError(f"{type(self).__name__} must define build(model, cfg)")

    def loss(self, cfg: Any):
        """The objective, ``Trace_ELBO`` with ``cfg.particles`` particles."""
        return Trace_ELBO(num_particles=cfg.particles, vectorize_particles=False)

    def describe(self) -> dict:
        """What a report says of this guide."""
        return {"guide": self.name, "builder": f"{type(self).__module__}.{type(self).__qualname__}"}

    def __eq__(self, other: object) -> bool:  # the same builder class and name: a resumed run compares equal
        return isinstance(other, GuideBuilder) and other.describe() == self.describe()

    def __hash__(self) -> int:
        return hash(tuple(self.describe().items()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class DirichletBuilder(GuideBuilder):
    """``DirichletGuide``, fitted with ``Trace_ELBO`` (or ``TraceMeanField_ELBO``, ``elbo="meanfield"``)."""

    name = "dirichlet"
    closed_form_kl = per_example = learns_weights = settles = True

    def build(self, model: SwitchModel, cfg: Any) -> DirichletGuide:
        return DirichletGuide(model, cfg.init_concentration, cfg.floor)

    def loss(self, cfg: Any):
        cls = Trace_ELBO if cfg.elbo == "trace" else TraceMeanField_ELBO
        return cls(num_particles=cfg.particles, vectorize_particles=False)


class DirichletMeanBuilder(DirichletBuilder):
    """The paper's mean variant: ``DirichletGuide`` with ``MeanSwitchELBO``."""

    name = "dirichlet-mean"
    per_example = False

    def loss(self, cfg: Any) -> MeanSwitchELBO:
        return MeanSwitchELBO()


class AutoguideBuilder(GuideBuilder):
    """The Pyro autoguide ``name`` of ``inference.autoguides`` (started at the prior mean), wrapped
    in ``ModuleLocal``; one per layer (``LayerwiseGuide``) when the layers learn one at a time."""

    def __init__(self, name: str) -> None:
        self.name = name

    def build(self, model: SwitchModel, cfg: Any):
        if cfg.schedule == "sequential":
            return LayerwiseGuide(model, lambda m: make_autoguide(self.name, m))
        return ModuleLocal(make_autoguide(self.name, model))


GUIDE_BUILDERS: dict[str, GuideBuilder] = {b.name: b for b in (
    DirichletBuilder(), DirichletMeanBuilder(), *(AutoguideBuilder(name) for name in AUTOGUIDES))}
GUIDES = tuple(GUIDE_BUILDERS)


def guide_builder(guide: "str | GuideBuilder") -> GuideBuilder:
    """The builder of a guide name (a key of ``GUIDE_BUILDERS``), or ``guide`` itself if it is one."""
    if isinstance(guide, GuideBuilder):
        if not isinstance(guide.name, str) or not guide.name:
            raise ValueError(f"guide: {type(guide).__name__} needs a non-empty name")
        return guide
    if isinstance(guide, str):
        if guide not in GUIDE_BUILDERS:
            raise ValueError(f"unknown guide {guide!r}; choose one of {', '.join(GUIDES)}, or give a GuideBuilder")
        return GUIDE_BUILDERS[guide]
    raise TypeError(f"guide must be a guide name ({', '.join(GUIDES)}) or a GuideBuilder, got {type(guide).__name__}")


def guide_name(guide: "str | GuideBuilder") -> str:
    """The name of a guide given by name or by builder."""
    return guide_builder(guide).name
