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
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from tqdm.auto import tqdm

from ..data import Split, batches, num_batches
from ..models.switched import SCALES, DirichletSwitchModel, SwitchedNetwork
from .elbo import MeanSwitchELBO
from .guides import DEFAULT_FLOOR, DirichletSwitchGuide

GUIDES = ("dirichlet", "dirichlet-mean")
ELBOS = ("trace", "meanfield")
SCHEDULES = ("joint", "sequential")


@dataclass
class SwitchConfig:
    """Settings of switch learning.

    guide: ``dirichlet`` (sampled switches, ``particles`` Monte-Carlo samples per step) or
        ``dirichlet-mean`` (the paper's mean variant, ``inference.elbo.MeanSwitchELBO``).
    elbo: for the sampled guide, ``trace`` (``Trace_ELBO``: Monte-Carlo KL) or ``meanfield``
        (``TraceMeanField_ELBO``: closed-form Dirichlet KL).
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
    schedule: str = "joint"
    scale: str = "dim"
    seed: int = 0

    def validate(self) -> None:
        if self.guide not in GUIDES:
            raise ValueError(f"unknown guide {self.guide!r}; choose one of {', '.join(GUIDES)}")
        if self.elbo not in ELBOS:
            raise ValueError(f"unknown ELBO {self.elbo!r}; choose one of {', '.join(ELBOS)}")
        if self.scale not in SCALES:
            raise ValueError(f"unknown switch scale {self.scale!r}; choose one of {', '.join(SCALES)}")
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

    def posterior_means(self) -> dict[str, torch.Tensor]:
        """E_q[s_l] = phi_l / sum_j phi_lj."""
        return {k: v / v.sum() for k, v in self.concentrations.items()}


def make_elbo(cfg: SwitchConfig):
    """The Pyro ELBO object a configuration asks for."""
    if cfg.guide == "dirichlet-mean":
        return MeanSwitchELBO()
    cls = Trace_ELBO if cfg.elbo == "trace" else TraceMeanField_ELBO
    return cls(num_particles=cfg.particles, vectorize_particles=False)


def fit_switches(network: SwitchedNetwork, train: Split, cfg: SwitchConfig) -> SwitchFit:
    """Fit q(s) = prod_l Dirichlet(phi_l) to the frozen ``network`` on ``train``.

    Clears Pyro's param store first; on return the store holds ``concentration.<layer>``.
    Raises ``FloatingPointError`` naming the stage and step if the loss stops being finite.
    """
    cfg.validate()
    pyro.clear_param_store()
    pyro.set_rng_seed(cfg.seed)
    network.eval()
    widths = network.widths
    stages = [list(widths)] if cfg.schedule == "joint" else [[name] for name in widths]
    fit = SwitchFit(concentrations={})
    generator = torch.Generator().manual_seed(cfg.seed)
    steps_per_stage = cfg.epochs * num_batches(train, cfg.batch_size)
    start = time.perf_counter()
    for layers in stages:
        model = DirichletSwitchModel(network, cfg.alpha0, len(train), layers, cfg.scale)
        guide = DirichletSwitchGuide(model.widths, cfg.init_concentration, cfg.floor)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": cfg.lr}), loss=make_elbo(cfg))
        label = "+".join(layers) if len(layers) > 1 else layers[0]
        t0 = time.perf_counter()
        bar = tqdm(total=steps_per_stage, desc=f"switches {label}", leave=False, disable=None)
        step = 0
        for _ in range(cfg.epochs):
            for x, y, idx in batches(train, cfg.batch_size, True, generator):
                loss = svi.step(x, y, idx)
                step += 1
                if not math.isfinite(loss):
                    bar.close()
                    raise FloatingPointError(f"ELBO became {loss} at step {step} while learning switches of {label}")
                fit.losses.append(loss)
                bar.update()
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{loss:.4g}")
        bar.close()
        fit.concentrations.update(guide.concentrations())
        fit.stages.append({"layers": layers, "steps": step, "seconds": time.perf_counter() - t0})
    fit.seconds = time.perf_counter() - start
    return fit


def config_dict(cfg: SwitchConfig) -> dict:
    return asdict(cfg)
