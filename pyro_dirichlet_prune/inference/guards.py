"""The numerical guards of switch learning: a step whose ELBO or gradient is not finite is not
taken (``NonFiniteStep``, raised by ``fit``'s SVI step before the optimiser moves anything) and
``diagnose_nonfinite`` says why; a layer whose concentrations all sit at the floor ranks nothing
(``check_collapse``, ``CollapseGuard`` at every epoch end)."""
from __future__ import annotations

from typing import Iterable

import torch
from pyro import poutine

from ..errors import NumericalError
from ..loop import LoopCallback, LoopEvent
from ..models.switched import SwitchModel
from .guides import DirichletGuide

AT_FLOOR = 0.01  # a concentration within 1% of the floor counts as collapsed onto it


class NonFiniteStep(ArithmeticError):
    """A step whose ELBO or gradient was not finite; it was not applied."""

    def __init__(self, loss: float, what: str) -> None:
        super().__init__(f"{what} is not finite (loss {loss})")
        self.loss, self.what = loss, what


def diagnose_nonfinite(model: SwitchModel, guide, *args) -> str:
    """Say what made the ELBO non-finite: the frozen network itself on this batch, the
    concentrations of a layer (after a non-finite gradient step), or the site whose log-density
    is not finite under the current guide."""
    with torch.no_grad():
        if not torch.isfinite(model.network(args[0])).all():
            return "the network's logits are not finite on this batch even without switches (check the checkpoint and the data)"
    if isinstance(guide, DirichletGuide):
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
    return "no single site is non-finite on a fresh draw (an unlucky sample or too large a learning rate)"


def check_collapse(guide: DirichletGuide, layers: Iterable[str], step: int, label: str) -> None:
    """Raise ``NumericalError`` if every concentration of one of ``layers`` sits at the floor:
    the posterior mean is then uniform and ranks nothing."""
    for layer in layers:
        phi = guide.concentrations()[layer]
        if bool(((phi - guide.floor) <= AT_FLOOR * guide.floor).all()):
            raise NumericalError(
                f"all {phi.numel()} concentrations of layer {layer} collapsed to the floor {guide.floor} "
                f"by step {step} of switch learning ({label}); the posterior ranks nothing. "
                f"Lower the learning rate, raise alpha0 above the floor, or check that the layer affects the output"
            )


class CollapseGuard(LoopCallback):
    """``check_collapse`` of the stage's ``layers`` at every epoch end of a fit."""

    def __init__(self, guide: DirichletGuide, layers: Iterable[str], label: str) -> None:
        self.guide, self.layers, self.label = guide, list(layers), label

    def on_epoch_end(self, event: LoopEvent) -> None:
        check_collapse(self.guide, self.layers, event.step, self.label)


def collapsed_fraction(concentrations: dict[str, torch.Tensor], floor: float) -> dict[str, float]:
    """Fraction of each layer's concentrations within 1% of the floor."""
    return {k: float(((v - floor) <= AT_FLOOR * floor).double().mean()) for k, v in concentrations.items()}
