"""Fitting the switch posterior with stochastic variational inference.

Maximises L(phi) (``models.switched``) with ``pyro.infer.SVI`` and Adam over minibatches of
the training split, either for all layers jointly or one layer at a time (input layer first;
while layer l learns, the other layers carry no switch, i.e. the pre-trained network).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import pyro
import pyro.optim
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from tqdm.auto import tqdm

from ..data import Split, batches, epoch_order, num_batches
from ..errors import NumericalError
from ..models.switched import SAMPLINGS, SCALES, DirichletSwitchModel, SwitchedNetwork, switch_factors
from ..runstate import RunState, rng_state, set_rng_state
from .autoguides import AUTOGUIDES, make_autoguide
from .posterior import CREDIBLE_LEVEL, SwitchPosterior, dirichlet_posterior, estimate_elbo, monte_carlo_posterior
from .elbo import MeanSwitchELBO
from .guides import DEFAULT_FLOOR, DirichletSwitchGuide

GUIDES = ("dirichlet", "dirichlet-mean", *AUTOGUIDES)
AT_FLOOR = 0.01  # a concentration within 1% of the floor counts as collapsed onto it
ELBOS = ("trace", "meanfield")
SCHEDULES = ("joint", "sequential")


@dataclass
class SwitchConfig:
    """Settings of switch learning.

    guide: ``dirichlet`` (sampled switches, ``particles`` Monte-Carlo samples per step),
        ``dirichlet-mean`` (the paper's mean variant, ``inference.elbo.MeanSwitchELBO``), or an
        autoguide (``normal``, ``delta``, ``lowrank``; see ``inference.autoguides``).
    elbo: for the sampled guide, ``trace`` (``Trace_ELBO``: Monte-Carlo KL) or ``meanfield``
        (``TraceMeanField_ELBO``: closed-form Dirichlet KL).
    scale, schedule: the switch model (``models.switched.DirichletSwitchModel``) and whether the
        layers learn jointly or one at a time. The default, ``simplex`` and ``sequential``, is the
        paper's; ``dim``/``joint`` keeps the pre-trained network as the prior mean but ranks units
        about as well as chance and leaves the uncertainty cut-off nothing to remove
        (docs/experiments.md, benchmarks/results/ranking_proxy.json).
    """

    guide: str = "dirichlet"
    elbo: str = "trace"
    particles: int = 1
    alpha0: float = 0.5
    init_concentration: float = 10.0
    floor: float = DEFAULT_FLOOR
    lr: float = 0.05
    epochs: int = 1
    batch_size: int = 256
    schedule: str = "sequential"
    scale: str = "simplex"
    sampling: str = "shared"
    seed: int = 0
    gain: float = 1.0

    def validate(self) -> None:
        if self.guide not in GUIDES:
            raise ValueError(f"unknown guide {self.guide!r}; choose one of {', '.join(GUIDES)}")
        if self.elbo not in ELBOS:
            raise ValueError(f"unknown ELBO {self.elbo!r}; choose one of {', '.join(ELBOS)}")
        if self.guide in AUTOGUIDES and self.elbo != "trace":
            raise ValueError(
                f"guide {self.guide} needs --elbo trace: TraceMeanField_ELBO mis-handles the log-density of "
                f"the autoguides' Delta sites in Pyro 1.9 and optimises another objective"
            )
        if self.scale not in SCALES:
            raise ValueError(f"unknown switch scale {self.scale!r}; choose one of {', '.join(SCALES)}")
        switch_factors({}, self.scale, self.gain)  # raises on a bad gain
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"unknown switch sampling {self.sampling!r}; choose one of {', '.join(SAMPLINGS)}")
        if self.sampling == "per-example" and self.guide != "dirichlet":
            raise ValueError(f"per-example switch sampling needs --guide dirichlet, not {self.guide}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        for key in ("particles", "epochs", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        for key in ("alpha0", "init_concentration", "floor", "lr"):
            if not float(getattr(self, key)) > 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")
        if not self.init_concentration > self.floor:
            raise ValueError(f"init_concentration {self.init_concentration} must exceed floor {self.floor}")


@dataclass
class SwitchFit:
    """Learned concentrations phi_l, the loss (-ELBO estimate) of every step, and timings."""

    concentrations: dict[str, torch.Tensor]
    losses: list[float] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    means: dict[str, torch.Tensor] = field(default_factory=dict)
    intervals: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    samples: dict[str, torch.Tensor] = field(default_factory=dict)
    guide: object | None = field(default=None, repr=False)
    model: object | None = field(default=None, repr=False)
    stage_guides: list = field(default_factory=list, repr=False)

    def posterior_means(self) -> dict[str, torch.Tensor]:
        """E_q[s_l]: phi_l / sum_j phi_lj for the Dirichlet guides, a Monte-Carlo average of the
        guide's draws for the autoguides."""
        if self.means:
            return dict(self.means)
        return {k: v / v.sum() for k, v in self.concentrations.items()}


def _param_store_state() -> dict:
    """A detached copy of Pyro's param store state (the store's own ``get_state`` returns live
    tensors, which autoguides decorate with weak references that cannot be pickled)."""
    state = pyro.get_param_store().get_state()
    return {"params": {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in state["params"].items()},
            "constraints": dict(state["constraints"])}


def diagnose_nonfinite(model, guide, *args) -> str:
    """Say what made the ELBO non-finite: the frozen network itself on this batch, the
    concentrations of a layer (after a non-finite gradient step), or the site whose log-density
    is not finite under the current guide."""
    with torch.no_grad():
        if not torch.isfinite(model.network(args[0])).all():
            return "the network's logits are not finite on this batch even without switches (check the checkpoint and the data)"
    bad = [layer for layer, phi in guide.concentrations().items() if not torch.isfinite(phi).all()]
    if bad:
        return f"concentrations of layer {', '.join(bad)} are not finite"
    with torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
        for where, trace in (("model", model_trace), ("guide", guide_trace)):
            for name, site in trace.nodes.items():
                if site["type"] == "sample":
                    lp = site["fn"].log_prob(site["value"])
                    if not torch.isfinite(lp).all():
                        return f"the {where} log-density of site {name} is not finite"
                    if name == "obs" and not torch.isfinite(site["fn"].logits).all():
                        return "the network's logits are not finite"
    return "no single site is non-finite on a fresh draw (an unlucky sample or a too large --switch-lr)"


def check_collapse(guide: DirichletSwitchGuide, step: int, label: str) -> None:
    """Raise ``NumericalError`` if every concentration of a layer sits at the floor: the
    posterior mean is then uniform and ranks nothing."""
    for layer, phi in guide.concentrations().items():
        if bool(((phi - guide.floor) <= AT_FLOOR * guide.floor).all()):
            raise NumericalError(
                f"all {phi.numel()} concentrations of layer {layer} collapsed to the floor {guide.floor} "
                f"by step {step} of switch learning ({label}); the posterior ranks nothing. "
                f"Lower --switch-lr, raise --alpha0 above the floor, or check that the layer affects the output"
            )


def collapsed_fraction(concentrations: dict[str, torch.Tensor], floor: float) -> dict[str, float]:
    """Fraction of each layer's concentrations within 1% of the floor."""
    return {k: float(((v - floor) <= AT_FLOOR * floor).double().mean()) for k, v in concentrations.items()}


def make_elbo(cfg: SwitchConfig):
    """The Pyro ELBO object a configuration asks for."""
    if cfg.guide == "dirichlet-mean":
        return MeanSwitchELBO()
    cls = Trace_ELBO if cfg.elbo == "trace" else TraceMeanField_ELBO
    return cls(num_particles=cfg.particles, vectorize_particles=False)


def fit_switches(
    network: SwitchedNetwork,
    train: Split,
    cfg: SwitchConfig,
    state: RunState | None = None,
    loop: str = "switches",
) -> SwitchFit:
    """Fit q(s) = prod_l Dirichlet(phi_l) to the frozen ``network`` on ``train``.

    Clears Pyro's param store first; on return the store holds ``concentration.<layer>``.
    With a ``RunState`` the loop saves the param store, the optimiser state, the random
    generators and its position at the state's interval, and continues from a saved state.
    Raises ``NumericalError`` naming the layer and step if the ELBO stops being finite, or if
    every concentration of a layer has collapsed to the floor (checked at every epoch end).
    """
    cfg.validate()
    network.eval()
    widths = network.widths
    stages = [list(widths)] if cfg.schedule == "joint" else [[name] for name in widths]
    steps_per_stage = cfg.epochs * num_batches(train, cfg.batch_size)
    per_epoch = num_batches(train, cfg.batch_size)
    generator = torch.Generator().manual_seed(cfg.seed)
    saved = state.get(loop) if state is not None else None
    pyro.clear_param_store()
    if saved is not None and saved.get("done"):
        pyro.get_param_store().set_state(saved["params"])
        return SwitchFit(saved["concentrations"], saved["losses"], saved["stages"], saved["seconds"], saved["means"],
                         saved["intervals"], saved.get("samples", {}))
    pyro.set_rng_seed(cfg.seed)
    fit = SwitchFit(concentrations={})
    stage_index, epoch, batch, order, optim_state, seconds_before = 0, 0, 0, None, None, 0.0
    if saved is not None:
        pyro.get_param_store().set_state(saved["params"])
        set_rng_state(saved["rng"], generator)
        stage_index, epoch, batch, order = saved["stage"], saved["epoch"], saved["batch"], saved["order"]
        optim_state, seconds_before = saved["optim"], saved["seconds"]
        fit = SwitchFit(saved["concentrations"], saved["losses"], saved["stages"], means=saved["means"],
                        intervals=saved["intervals"], samples=saved.get("samples", {}))
    start = time.perf_counter()
    for stage_index in range(stage_index, len(stages)):
        layers = stages[stage_index]
        model = DirichletSwitchModel(network, cfg.alpha0, len(train), layers, cfg.scale, cfg.sampling, cfg.gain)
        if cfg.guide in AUTOGUIDES:
            guide = make_autoguide(cfg.guide, model, stage="+".join(layers) if len(stages) > 1 else None)
        else:
            guide = DirichletSwitchGuide(model.widths, cfg.init_concentration, cfg.floor, cfg.sampling)
        optim = pyro.optim.Adam({"lr": cfg.lr})
        if optim_state is not None:
            optim.set_state(optim_state)
            optim_state = None
        svi = SVI(model, guide, optim, loss=make_elbo(cfg))
        label = "+".join(layers) if len(layers) > 1 else layers[0]
        t0 = time.perf_counter()
        step = epoch * per_epoch + batch
        global_offset = stage_index * steps_per_stage

        def snapshot() -> dict:
            return {
                "done": False, "params": _param_store_state(), "optim": optim.get_state(),
                "rng": rng_state(generator), "stage": stage_index, "epoch": epoch, "batch": batch,
                "order": order, "concentrations": dict(fit.concentrations), "means": dict(fit.means),
                "intervals": dict(fit.intervals), "samples": dict(fit.samples),
                "losses": list(fit.losses),
                "stages": list(fit.stages), "seconds": seconds_before + time.perf_counter() - start,
                "global_step": global_offset + step,
            }

        bar = tqdm(total=steps_per_stage, initial=step, desc=f"switches {label}", leave=False, disable=None)
        while epoch < cfg.epochs:
            if order is None:
                order = epoch_order(len(train), True, generator)
            for x, y, idx in batches(train, cfg.batch_size, True, generator, order=order, start_batch=batch):
                loss = svi.step(x, y, idx)
                step += 1
                batch += 1
                if not math.isfinite(loss):
                    bar.close()
                    raise NumericalError(
                        f"ELBO became {loss} at step {step} of switch learning ({label}): "
                        f"{diagnose_nonfinite(model, guide, x, y, idx)}"
                    )
                fit.losses.append(loss)
                bar.update()
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{loss:.4g}")
                if state is not None:
                    state.step(loop, global_offset + step, snapshot)
            epoch, batch, order = epoch + 1, 0, None
            if isinstance(guide, DirichletSwitchGuide):
                check_collapse(guide, step, label)
        bar.close()
        if isinstance(guide, DirichletSwitchGuide):
            fit.concentrations.update(guide.concentrations())
        else:
            x0, y0, i0 = next(batches(train, cfg.batch_size, False))
            post = monte_carlo_posterior(guide, model.widths, x0, y0, i0, level=CREDIBLE_LEVEL, name=cfg.guide)
            fit.means.update(post.means)
            fit.intervals.update({k: (post.lower[k], post.upper[k]) for k in post.means})
            fit.samples.update(post.samples)
        fit.guide, fit.model = guide, model
        fit.stage_guides.append(guide)
        fit.stages.append({"layers": layers, "steps": step, "seconds": time.perf_counter() - t0})
        epoch = 0
        if state is not None and stage_index + 1 < len(stages):
            stage_index_next = stage_index + 1
            snap = snapshot()
            snap.update(stage=stage_index_next, epoch=0, batch=0, order=None, optim=None,
                        global_step=stage_index_next * steps_per_stage)
            state.save(loop, snap)
    fit.seconds = seconds_before + time.perf_counter() - start
    if state is not None:
        state.save(loop, {
            "done": True, "params": _param_store_state(), "concentrations": fit.concentrations,
            "means": fit.means, "intervals": fit.intervals, "samples": fit.samples,
            "losses": fit.losses, "stages": fit.stages, "seconds": fit.seconds,
        })
    return fit


def switch_posterior(fit: SwitchFit, cfg: SwitchConfig, network: SwitchedNetwork, train: Split,
                     elbo_particles: int = 8, elbo_batches: int | None = 20) -> SwitchPosterior:
    """The posterior of a fit: exact Beta marginals for the Dirichlet guides, the Monte-Carlo
    intervals for the autoguides, and the ELBO of the whole model under the fitted guide,
    estimated with ``elbo_particles`` particles (for an autoguide fitted layer by layer, under the
    product of its stages' guides; not available when such a fit was restored from a saved state).

    A layer-by-layer fit also gets ``stage_elbos``: for every layer l the ELBO of the objective its
    stage maximised, the model with only s_l switched (the other layers unswitched) under q(s_l),

        ELBO_l = E_q(s_l)[log p(y | x, s_l)] - KL(q(s_l) || p(s_l)),

    which is what ranks the guides of such a fit (with every layer multiplied by s at once, the
    whole model of the ``simplex`` scale is a degenerate network)."""
    if fit.concentrations:
        post = dirichlet_posterior(fit.concentrations, CREDIBLE_LEVEL, cfg.guide)
        model = DirichletSwitchModel(network, cfg.alpha0, len(train), scale=cfg.scale, gain=cfg.gain)
        guide = DirichletSwitchGuide(model.widths, cfg.init_concentration, cfg.floor)  # reads the fitted params
    else:
        post = SwitchPosterior(cfg.guide, CREDIBLE_LEVEL, dict(fit.means), {k: v[0] for k, v in fit.intervals.items()},
                               {k: v[1] for k, v in fit.intervals.items()}, exact=False, samples=dict(fit.samples))
        if cfg.schedule == "joint" or not fit.stage_guides:
            model, guide = fit.model, fit.guide
        else:  # layer by layer: the product of the stages' guides is a guide of the whole model
            model = DirichletSwitchModel(network, cfg.alpha0, len(train), scale=cfg.scale, gain=cfg.gain)
            guide = StagedGuide(fit.stage_guides)
    if guide is not None and elbo_particles > 0:
        post.elbo, post.elbo_se = estimate_elbo(model, guide, train, cfg.batch_size, elbo_particles, elbo_batches,
                                                seed=cfg.seed)
    if cfg.schedule == "sequential" and elbo_particles > 0:
        post.stage_elbos = stage_elbos(fit, cfg, network, train, elbo_particles, elbo_batches)
    return post


def stage_elbos(fit: SwitchFit, cfg: SwitchConfig, network: SwitchedNetwork, train: Split,
                elbo_particles: int = 8, elbo_batches: int | None = 20) -> dict[str, tuple[float, float]] | None:
    """ELBO_l of every stage of a layer-by-layer fit (``switch_posterior``), with its standard
    error over minibatches; None for an autoguide fit restored from a saved state."""
    out = {}
    for i, layer in enumerate(network.widths):
        model = DirichletSwitchModel(network, cfg.alpha0, len(train), [layer], cfg.scale, gain=cfg.gain)
        if fit.concentrations:
            guide = DirichletSwitchGuide(model.widths, cfg.init_concentration, cfg.floor)  # reads the fitted params
        elif len(fit.stage_guides) == len(network.widths):
            guide = fit.stage_guides[i]
        else:
            return None
        out[layer] = estimate_elbo(model, guide, train, cfg.batch_size, elbo_particles, elbo_batches, seed=cfg.seed)
    return out


class StagedGuide:
    """q(s) = prod_stages q_stage(s_stage): the guides fitted one layer at a time, run in turn."""

    def __init__(self, guides) -> None:
        self.guides = list(guides)

    def __call__(self, *args, **kwargs) -> None:
        for g in self.guides:
            g(*args, **kwargs)


def config_dict(cfg: SwitchConfig) -> dict:
    return asdict(cfg)
