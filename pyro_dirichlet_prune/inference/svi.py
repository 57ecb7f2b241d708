"""Switch learning from a configuration: the model, guide and ELBO that a ``SwitchConfig`` names,
fitted with ``inference.fit.fit`` on an in-memory training split, and the posterior of the fit.

This is the path of the command line, ``compare-guides`` and the search; a script builds the
same objects itself (``SwitchModel``, ``DirichletGuide``, ``fit``, ``posterior_of``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch.distributions import transform_to

from .. import distributed
from ..data import Split, SplitLoader
from ..metrics import count_macs
from ..models.switched import SAMPLINGS, SCALES, SwitchedNetwork, SwitchModel, switch_factors
from ..pruning.surgery import fold_scales
from ..runstate import RunState
from .builders import GuideBuilder, guide_builder, guide_name
from .averaging import IterateAverage
from .concentration import SettleEachEpoch, settle_concentrations
from .convergence import BATCHES, ConvergenceRule
from .fit import DEFAULT_SCHEDULE, SCHEDULES, FitResult, fit
from .frozen_head import FrozenHeads
from .guides import DEFAULT_FLOOR, DirichletGuide, all_layers
from .posterior import SwitchPosterior, estimate_elbo, posterior_of

ELBOS = ("trace", "meanfield")
EPOCH_CURVATURE_EXAMPLES = 2000
"""Examples whose curvature settles the concentrations at every epoch end (``SettleEachEpoch``)."""
CONCENTRATIONS = ("auto", "fitted", "settled", "quadratic")
DEFAULT_AUTO_QUADRATIC_COST = 2e8
AUTO_QUADRATIC_COST = float(os.environ.get("DIRICHLET_PRUNE_AUTO_QUADRATIC_COST", DEFAULT_AUTO_QUADRATIC_COST))
"""``concentration="auto"`` takes the quadratic settle when the switched units times the network's
MACs per example are at most this (LeNet-5: 155 units × 498,750 MACs = 7.7e7, a settle of about a
minute on one core): its exact Hessian takes one backward pass per unit and minibatch over up to
``curvature_examples`` examples, which for VGG-16 (×0.25: about 1,000 units × 20M MACs) would
cost hours. The environment variable ``DIRICHLET_PRUNE_AUTO_QUADRATIC_COST`` overrides it for a
process and the processes it starts (-1: never settle automatically; the test suite's setting,
for speed)."""


@dataclass
class SwitchConfig:
    """Settings of switch learning.

    guide: ``dirichlet`` (sampled switches, ``particles`` Monte-Carlo samples per step),
        ``dirichlet-mean`` (the paper's mean variant, ``inference.elbo.MeanSwitchELBO``), an
        autoguide (``normal``, ``delta``, ``lowrank``; see ``inference.autoguides``), or a
        ``GuideBuilder`` of your own (``inference.builders``).
    elbo: for the sampled guide, ``trace`` (``Trace_ELBO``: Monte-Carlo KL) or ``meanfield``
        (``TraceMeanField_ELBO``: closed-form Dirichlet KL).
    scale, schedule: the switch model (``models.switched.SwitchModel``) and whether the
        layers learn jointly or one at a time. The default, ``simplex`` and ``sequential``, is the
        paper's; ``dim``/``joint`` keeps the pre-trained network as the prior mean but ranks units
        about as well as chance and leaves the uncertainty cut-off nothing to remove
        (docs/experiments.md, benchmarks/results/ranking_proxy.json).
    weight_scale: None (the paper's model): the network's weights are frozen. A number sigma:
        the weights learn with the switches, W ~ Normal(W0, sigma^2) around the pre-trained W0
        with a MAP point estimate (``models.weight_prior``); needs a Dirichlet guide and the
        ``joint`` schedule (the weights learn under every switch at once). ``weight_lr`` is
        Adam's learning rate of the weights.
    concentration: ``auto`` (the default): ``quadratic`` for a Dirichlet guide on frozen weights
        where its exact Hessian is affordable (``AUTO_QUADRATIC_COST``), else ``fitted``
        (``resolved_concentration``; the fit's ``concentration`` says which was taken).
        ``fitted``: the guide's phi_l as the fit left them, which carry the initial value and the
        epoch budget. ``settled``: a Dirichlet
        guide's total concentrations set, after the fit, to the ELBO's optimum given the fitted means,
        from the likelihood's curvature: ``inference.concentration``; the intervals then no longer
        carry the initial value or the epoch budget, and for the mean variant, whose objective does
        not identify phi_0, this is the stated rule that fixes it). Frozen weights only. ``quadratic``:
        every phi_lj (means and total) set, after the fit, to the optimum of the ELBO's quadratic
        expansion about the fitted means, from the likelihood's exact gradient on every training
        example and its exact Hessian on ``curvature_examples``
        (``inference.concentration.optimal_concentrations``): a damped Newton step that finishes
        what SVI's noisy steps approach slowly (units dying towards zero; docs/convergence.md),
        kept (whole, or a quarter of it) only where it raises the ELBO on the whole training set;
        elsewhere the layer is settled (``inference.concentration.checked_step``).
    until_converged: end each stage of switch learning by ``inference.convergence.ConvergenceRule``
        (windows of one epoch's steps; the loss and phi_l0, or, with ``concentration="settled"``,
        the loss and the means), ``epochs`` being the cap. One process only. Without it the rule
        only watches. Either way the fit's ``convergence`` records each stage's trace and whether
        (and when) it converged.
    lr_decay: the step size of switch learning decays within each stage as
        lr (1 + t / T)^-lr_decay, T one epoch (``fit``); 0 keeps it constant.
    curvature_probes: with ``concentration="settled"``, estimate each layer's curvature from this
        many random probes a minibatch (``layer_curvature(probes=)``) instead of exactly; None: exact.
    curvature_examples: the training examples (the first ones) whose curvature, scaled to the whole
        split, settles the concentrations after the fit; None: all. At every epoch end of switch
        learning a settled fit also settles the active layers on the first ``EPOCH_CURVATURE_EXAMPLES``
        (``SettleEachEpoch``), so that the means learn under the posterior's spread, not under the
        initial value's.
    settle_rounds: with ``concentration="quadratic"``, up to this many checked Newton steps per
        layer, each from where the last landed, ending at the first that takes none
        or gains under a nat (``settle_concentrations(rounds=)``); 1 is the single step of the
        default recipe before commit 66d8ca7.
    average: end every stage at the mean of the guide's parameters over its last epoch
        (``inference.averaging.IterateAverage``) instead of at the last iterate, which wanders
        about the optimum by several posterior standard deviations at a constant step.

    The defaults (3 epochs a stage, iterate averaging, the quadratic settle in up to 4 rounds) are
    the recipe of docs/convergence.md: on LeNet-5 the widths they give move by at most 4% with the
    initial concentration (1 or 10) or a budget twice as long (fc1's moved by 14% with one round,
    its ELBO being flat along the Newton step); one epoch of the last iterate's moved 2-2.6 times.
    """

    guide: str | GuideBuilder = "dirichlet"
    elbo: str = "trace"
    particles: int = 1
    alpha0: float = 0.5
    init_concentration: float = 10.0
    floor: float = DEFAULT_FLOOR
    lr: float = 0.05
    epochs: int = 3
    batch_size: int = 256
    schedule: str = DEFAULT_SCHEDULE
    scale: str = "simplex"
    sampling: str = "shared"
    seed: int = 0
    gain: float = 1.0
    weight_scale: float | None = None
    weight_lr: float = 1e-3
    concentration: str = "auto"
    until_converged: bool = False
    lr_decay: float = 0.0
    curvature_probes: int | None = None
    curvature_examples: int | None = 10000
    average: bool = True
    settle_rounds: int = 4

    def resolved_concentration(self, units: int | None = None, macs: int | None = None) -> str:
        """What sets the concentrations after the fit: ``concentration``, with ``auto`` resolved to
        ``quadratic`` for a guide whose concentrations can be set (the Dirichlet guides) on frozen
        weights with exact curvature, unless the network's switched ``units`` times its ``macs``
        per example exceed ``AUTO_QUADRATIC_COST`` (either unknown: not judged), and to ``fitted``
        otherwise."""
        if self.concentration != "auto":
            return self.concentration
        settles = guide_builder(self.guide).settles and self.weight_scale is None and self.curvature_probes is None
        affordable = units is None or macs is None or units * macs <= AUTO_QUADRATIC_COST
        return "quadratic" if settles and affordable else "fitted"

    def validate(self) -> None:
        builder = guide_builder(self.guide)
        if self.concentration not in CONCENTRATIONS:
            raise ValueError(f"unknown concentration {self.concentration!r}; choose one of {', '.join(CONCENTRATIONS)}")
        if self.resolved_concentration() != "fitted" and (not builder.settles or self.weight_scale is not None):
            raise ValueError(f"concentration={self.concentration!r} needs guide 'dirichlet' or 'dirichlet-mean' and "
                             f"frozen weights (no weight_scale)")
        if self.resolved_concentration() == "quadratic" and self.curvature_probes is not None:
            raise ValueError("curvature_probes: concentration='quadratic' needs the exact Hessian; leave it None")
        if self.elbo not in ELBOS:
            raise ValueError(f"unknown ELBO {self.elbo!r}; choose one of {', '.join(ELBOS)}")
        if self.elbo != "trace" and not builder.closed_form_kl:
            raise ValueError(
                f"guide {builder.name} needs elbo='trace' (TraceMeanField_ELBO mis-handles the log-density of "
                f"the autoguides' Delta sites in Pyro 1.9 and optimises another objective)"
            )
        if self.scale not in SCALES:
            raise ValueError(f"unknown switch scale {self.scale!r}; choose one of {', '.join(SCALES)}")
        switch_factors({}, self.scale, self.gain)  # raises on a bad gain
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"unknown switch sampling {self.sampling!r}; choose one of {', '.join(SAMPLINGS)}")
        if self.sampling == "per-example" and not builder.per_example:
            raise ValueError(f"per-example switch sampling needs guide='dirichlet', not {builder.name}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        for key in ("particles", "epochs", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        for key in ("alpha0", "init_concentration", "floor", "lr"):
            if not float(getattr(self, key)) > 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")
        if self.weight_scale is not None:
            if not (float(self.weight_scale) > 0 and math.isfinite(self.weight_scale)):
                raise ValueError(f"weight_scale must be positive, got {self.weight_scale}")
            if not builder.learns_weights:
                raise ValueError(f"learned weights (weight_scale) need guide 'dirichlet' or 'dirichlet-mean', "
                                 f"not {builder.name!r}: the Dirichlet guide holds their point estimate")
            if self.schedule != "joint":
                raise ValueError("learned weights (weight_scale) need schedule='joint': layer by layer, the "
                                 "weights would learn under one layer's switch and then lose it")
        if not (self.weight_lr > 0 and math.isfinite(self.weight_lr)):
            raise ValueError(f"weight_lr must be positive, got {self.weight_lr}")
        if not 0 <= self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in [0, 1], got {self.lr_decay}")
        if isinstance(self.settle_rounds, bool) or not isinstance(self.settle_rounds, int) or self.settle_rounds < 1:
            raise ValueError(f"settle_rounds must be a positive int, got {self.settle_rounds!r}")
        if self.curvature_examples is not None and int(self.curvature_examples) < 1:
            raise ValueError(f"curvature_examples must be a positive int or None, got {self.curvature_examples}")
        if self.curvature_probes is not None and int(self.curvature_probes) < 1:
            raise ValueError(f"curvature_probes must be a positive int or None, got {self.curvature_probes}")
        if not self.init_concentration > self.floor:
            raise ValueError(f"init_concentration {self.init_concentration} must exceed floor {self.floor}")


@dataclass
class SwitchFit:
    """A fitted switch posterior: the model, the guide holding the fitted state, and the loop's
    record (the loss of every step, the stages, the time)."""

    model: SwitchModel
    guide: object
    result: FitResult
    settled: dict | None = None
    convergence: dict | None = None
    concentration: str = "fitted"
    """What set the concentrations after the fit (``SwitchConfig.resolved_concentration``)."""

    @property
    def losses(self) -> list[float]:
        return self.result.losses

    @property
    def stages(self) -> list[dict]:
        return self.result.stages

    @property
    def seconds(self) -> float:
        return self.result.seconds

    @property
    def concentrations(self) -> dict[str, torch.Tensor]:
        """phi_l of a Dirichlet guide; empty for an autoguide."""
        return self.guide.concentrations() if isinstance(self.guide, DirichletGuide) else {}

    @property
    def learns_weights(self) -> bool:
        return self.model.weight_prior is not None

    def fitted_network(self) -> torch.nn.Module:
        """The network the posterior describes, as a plain module to prune: the frozen network
        itself, or, when the weights learned too, a copy with the point estimate W_hat and every
        switched layer's output multiplied by its posterior mean scale c_l · E_q[s_l] folded in
        (``pruning.surgery.fold_scales``): the model's network at the switches' posterior mean."""
        if not self.learns_weights:
            return self.model.net
        means = self.posterior_means()
        scales = {k: (self.model.factors[k] * v).to(torch.get_default_dtype()) for k, v in means.items()}
        return fold_scales(self.model.net, scales, self.model.points, weights=self.guide.weights())

    def posterior_means(self) -> dict[str, torch.Tensor]:
        """E_q[s_l]: phi_l / sum_j phi_lj for the Dirichlet guides, a Monte-Carlo average of 1,000
        draws of the guide for the autoguides."""
        if isinstance(self.guide, DirichletGuide):
            return {k: v / v.sum() for k, v in self.concentrations.items()}
        return posterior_of(self.model, self.guide).means


def make_elbo(cfg: SwitchConfig):
    """The objective of the configuration's guide (``GuideBuilder.loss``)."""
    return guide_builder(cfg.guide).loss(cfg)


def make_guide(cfg: SwitchConfig, model: SwitchModel):
    """The guide a configuration names, built for ``model`` (``GuideBuilder.build``)."""
    return guide_builder(cfg.guide).build(model, cfg)


def switch_model(cfg: SwitchConfig, network: SwitchedNetwork, num_data: int) -> SwitchModel:
    """The switch model a configuration describes, on ``network``."""
    return SwitchModel(network, num_data=num_data, alpha0=cfg.alpha0, scale=cfg.scale, gain=cfg.gain,
                       sampling=cfg.sampling, weight_scale=cfg.weight_scale)


def fit_switches(network: SwitchedNetwork, train: Split, cfg: SwitchConfig, state: RunState | None = None,
                 loop: str = "switches") -> SwitchFit:
    """Fit the posterior that ``cfg`` describes to the frozen ``network`` on ``train`` (minibatches
    in an order drawn from a generator seeded with ``cfg.seed``; with several processes each rank
    takes its share of every minibatch, ``distributed``). With a ``RunState`` the loop
    saves its state at the state's interval and continues from a saved state (``fit``)."""
    cfg.validate()
    network.eval()
    model = switch_model(cfg, network, len(train))
    guide = make_guide(cfg, model)
    loader = distributed.sharded(SplitLoader(train, cfg.batch_size, True, torch.Generator().manual_seed(cfg.seed)))
    callbacks: list = [IterateAverage(guide)] if cfg.average else []
    if cfg.concentration == "auto":  # priced by the network's size (AUTO_QUADRATIC_COST)
        units, macs = sum(model.widths.values()), count_macs(network.net, train.x.shape[1:])
        concentration = cfg.resolved_concentration(units, macs)
    else:
        concentration = cfg.resolved_concentration()
    if concentration == "settled":
        callbacks.append(SettleEachEpoch(model, guide, train, schedule=cfg.schedule, probes=cfg.curvature_probes,
                                         max_examples=EPOCH_CURVATURE_EXAMPLES, seed=cfg.seed))
    if cfg.until_converged and distributed.active():
        raise ValueError("until_converged runs in one process only: each rank would judge its own losses")
    settling = concentration != "fitted"
    rule = ConvergenceRule(window=max(2 * BATCHES, len(loader)), phi_rtol=None if settling else 0.01,
                           mean_atol=0.001 if settling else None, stops=cfg.until_converged)
    callbacks.append(rule)  # it always watches; with until_converged it also ends the stages
    # each stage's frozen layers below its switch computed once, for its epochs and the settle
    heads = FrozenHeads(model.network, train) if cfg.schedule == "sequential" and cfg.weight_scale is None else None
    result = fit(model, guide, loader, epochs=cfg.epochs, schedule=cfg.schedule, loss=make_elbo(cfg), lr=cfg.lr,
                 seed=cfg.seed, state=state, loop=loop, weight_lr=cfg.weight_lr, callback=callbacks,
                 lr_decay=cfg.lr_decay, heads=heads)
    settled = None
    if settling:
        settled = settle_concentrations(model, guide, train, schedule=cfg.schedule,  # every rank: the same examples
                                        max_examples=cfg.curvature_examples, probes=cfg.curvature_probes,
                                        seed=cfg.seed, whole=concentration == "quadratic",
                                        heads=heads if concentration == "quadratic" else None,
                                        rounds=cfg.settle_rounds if concentration == "quadratic" else 1)
    return SwitchFit(model, guide, result, settled, convergence_record(rule, result, cfg.epochs), concentration)


def convergence_record(rule: ConvergenceRule, result: FitResult, cap_epochs: int) -> dict:
    """What a fit's ``ConvergenceRule`` saw, for the report: its settings, the cap, every stage
    (one that ended before its first window closed is listed unconverged, with no trace) and
    whether all converged."""
    seen = {s["stage"]: s for s in rule.stages}
    stages = [seen.get(i, {"stage": i, "layers": list(st["layers"]), "converged": False, "steps": st["steps"],
                           "criteria": [], "trace": []}) for i, st in enumerate(result.stages)]
    return {"rule": rule.settings(), "cap_epochs": cap_epochs, "converged": bool(stages) and all(
        s["converged"] for s in stages), "stages": stages}


def switch_posterior(fit: SwitchFit, cfg: SwitchConfig, train: Split, elbo_particles: int = 1,
                     elbo_batches: int | None = 20) -> SwitchPosterior:
    """The posterior of a fit (``posterior_of``) with the ELBO of the whole model under the fitted
    guide, estimated with ``elbo_particles`` particles on ``elbo_batches`` minibatches (none with
    0 particles). One particle is the default: the estimate's standard error comes from the
    minibatches (LeNet-5/MNIST, default fit: 147.1 with 1 particle per minibatch, 146.7 with 8,
    at an eighth of the cost).

    A layer-by-layer fit also gets ``stage_elbos``: for every layer l the ELBO of the objective its
    stage maximised, the model with only s_l switched (the other layers unswitched) under q(s_l),

        ELBO_l = E_q(s_l)[log p(y | x, s_l)] - KL(q(s_l) || p(s_l)),

    which is what ranks the guides of such a fit (with every layer multiplied by s at once, the
    whole model of the ``simplex`` scale is a degenerate network)."""
    model, guide = fit.model, fit.guide
    post = posterior_of(model, guide, name=guide_name(cfg.guide))
    if elbo_particles > 0:
        with all_layers(model):
            post.elbo, post.elbo_se = estimate_elbo(model, guide, train, cfg.batch_size, elbo_particles,
                                                    elbo_batches, seed=cfg.seed)
        if cfg.schedule == "sequential":
            post.stage_elbos = {}
            for layer in model.layers:
                with model.switching([layer]):
                    post.stage_elbos[layer] = estimate_elbo(model, guide, train, cfg.batch_size, elbo_particles,
                                                            elbo_batches, seed=cfg.seed)
    return post


def guide_parameters(guide) -> dict[str, list]:
    """The guide's parameters by name, constrained (``loc``, ``scale``, ``concentration``...)."""
    out = {}
    modules = dict(guide.named_modules())
    for name, value in guide.named_parameters():
        owner, _, attr = name.rpartition(".")
        if attr.endswith("_unconstrained"):
            constraint = modules[owner]._pyro_params[attr[: -len("_unconstrained")]][0]
            value, name = transform_to(constraint)(value), name[: -len("_unconstrained")]
        out[name] = value.detach().tolist()
    return out



def interval_basis(cfg: SwitchConfig, fit: SwitchFit) -> str:
    """What a fit's credible intervals rest on, in words for a report: settled concentrations, the
    mean variant's unidentified phi_0 (then they are not posterior intervals), or the guide as
    fitted, converged or not (``fit.convergence``)."""
    concentration = fit.concentration
    if concentration == "settled":
        return ("settled: each layer's total concentration phi_0 set to the ELBO's optimum given the fitted means "
                "(inference.concentration)")
    if concentration == "quadratic":
        steps = {k: v.get("steps", [v["step"]] if "step" in v else None) for k, v in (fit.settled or {}).items()}
        kept = ", ".join(f"{k} {'+'.join(f'{t:g}' for t in ts)}" for k, ts in steps.items() if ts)
        return ("quadratic: each layer's concentrations set to the optimum of the ELBO's quadratic expansion about "
                "the fitted means (inference.concentration.optimal_concentrations), the Newton step kept where it "
                "raised the whole training set's ELBO, else the layer settled, in rounds from where the last landed "
                f"(fraction of the step taken in each round: {kept or 'none recorded'})")
    if guide_name(cfg.guide) == "dirichlet-mean":
        return ("not posterior intervals: the mean variant's objective does not identify phi_0, so they carry the "
                "initial concentration and the budget; concentration='settled' fixes phi_0 by the ELBO's optimum")
    converged = fit.convergence is not None and fit.convergence["converged"]
    return "as fitted, " + ("converged (ConvergenceRule)" if converged else
                            "not converged: they still move with the initial concentration and the epoch budget")
