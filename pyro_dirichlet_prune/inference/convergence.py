"""When a fit has converged: a stopping rule for ``fit``'s stages, and the trace it keeps.

``ConvergenceRule`` is a loop callback (``fit(..., callback=rule)``). It averages over windows of
``window`` steps of a stage: the loss (the minibatch's -ELBO) and, for a ``DirichletGuide``, the
log of every active layer's total concentration phi_l0 = sum_j phi_lj, which sets the widths of
the layer's intervals (Var s_lj = m_j (1 - m_j) / (phi_l0 + 1)). At the end of each window it
compares the window's means with the previous window's; the window is *still* when

* the mean loss moved by less than ``loss_rtol`` of its size, and
* every layer's mean log phi_l0 moved by less than ``phi_rtol`` (a relative change of phi_l0;
  ``phi_rtol=None`` leaves phi_l0 out, as when it is settled after the fit: ``inference.concentration``),
  and, with ``mean_atol``, every unit's mean m_lj = phi_lj / phi_l0 by less than ``mean_atol``,

or by less than twice the standard error of the difference of the two means, whichever is larger:
a stochastic optimiser at its stationary point keeps jittering, by the minibatch's noise and by the
step size. The standard errors are batch means (the window cut into ``BATCHES`` consecutive
pieces), which allow for the autocorrelation of an optimiser's iterates.

The stage has converged, and ends, at the first window end (after at least ``min_steps`` steps)
that closes ``patience`` still windows in a row. Otherwise the stage runs to the epochs ``fit`` was
given, its cap, and is recorded as not converged: that is what a run must report. With
``stops=False`` the rule only watches: it keeps the traces and records whether (and at which step,
``converged_at``) each stage converged, and the stage runs its epochs.

For a guide other than a ``DirichletGuide`` only the loss is tested (``criteria`` says so): a
still loss does not show that an autoguide's scales have stopped moving.

``rule.stages`` holds, per stage, ``{"stage", "layers", "converged", "steps", "criteria",
"trace"}``; the trace has one entry per window: its last step, the mean loss and its standard
error, and, for a Dirichlet guide, each active layer's mean log phi_l0 and its standard error,
phi_l0 (the window's geometric mean), largest posterior mean (at the window's end) and, with
``mean_atol``, the largest move of a unit's window-mean m_lj since the window before, also in units
of that unit's posterior standard deviation (``mean_shift_sd``: above 1, the optimiser moves the
means by more than the posterior's own spread).
"""
from __future__ import annotations

import math
import statistics
from typing import Any

import torch

from ..loop import LoopCallback
from .callbacks import FitStep
from .guides import DirichletGuide


BATCHES = 10


def _mean_se(values: list[float]) -> tuple[float, float]:
    """The mean of ``values`` and its batch-means standard error (``BATCHES`` consecutive pieces)."""
    size = len(values) // BATCHES
    means = [statistics.fmean(values[i * size:(i + 1) * size]) for i in range(BATCHES)]
    return statistics.fmean(values), statistics.stdev(means) / math.sqrt(BATCHES)


def _vector_mean_se(values: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The elementwise mean of equal-shaped tensors and its batch-means standard error."""
    stacked = torch.stack(values).double()
    size = len(values) // BATCHES
    means = stacked[:size * BATCHES].reshape(BATCHES, size, -1).mean(1)
    return stacked.mean(0), means.std(0) / math.sqrt(BATCHES)


def _check_int(name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an int of at least {least}, got {value!r}")


class ConvergenceRule(LoopCallback):
    """End each stage of a fit once the loss and the concentrations have stopped moving (module
    docstring); ``stages`` keeps each stage's trace and whether it converged."""

    def __init__(self, window: int = 200, loss_rtol: float = 1e-3, phi_rtol: float | None = 0.01,
                 patience: int = 2, min_steps: int = 0, mean_atol: float | None = None, stops: bool = True) -> None:
        _check_int("window", window, 2 * BATCHES)
        _check_int("patience", patience, 1)
        _check_int("min_steps", min_steps, 0)
        for name, value in (("loss_rtol", loss_rtol), ("phi_rtol", phi_rtol), ("mean_atol", mean_atol)):
            if value is None and name != "loss_rtol":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        self.window, self.loss_rtol = window, float(loss_rtol)
        self.phi_rtol = None if phi_rtol is None else float(phi_rtol)
        self.mean_atol = None if mean_atol is None else float(mean_atol)
        self.patience, self.min_steps = patience, min_steps
        self.stops = bool(stops)
        self.stages: list[dict[str, Any]] = []
        self._losses: list[float] = []
        self._log_phi0: dict[str, list[float]] = {}
        self._means: dict[str, list[torch.Tensor]] = {}
        self._window_means: dict | None = None
        self._still = 0

    def settings(self) -> dict[str, Any]:
        """The rule's parameters (for a report)."""
        return {"window": self.window, "loss_rtol": self.loss_rtol, "phi_rtol": self.phi_rtol,
                "mean_atol": self.mean_atol, "patience": self.patience, "min_steps": self.min_steps,
                "stops": self.stops}

    @property
    def converged(self) -> bool:
        """Whether every stage seen so far converged (False before any)."""
        return bool(self.stages) and all(s["converged"] for s in self.stages)

    def _start(self, event: FitStep) -> dict[str, Any]:
        dirichlet = isinstance(event.guide, DirichletGuide)
        criteria = ["loss"]
        if dirichlet:
            criteria += (["phi0"] if self.phi_rtol is not None else []) + (["means"] if self.mean_atol is not None else [])
        self.stages.append({"stage": event.stage, "layers": list(event.layers), "converged": False, "steps": 0,
                            "criteria": criteria, "trace": []})
        self._losses, self._still = [], 0
        self._log_phi0 = {layer: [] for layer in event.layers} if dirichlet else {}
        self._means = {layer: [] for layer in event.layers} if dirichlet and self.mean_atol is not None else {}
        self._window_means = None
        return self.stages[-1]

    def on_step(self, event: FitStep) -> bool:
        record = self.stages[-1] if self.stages and self.stages[-1]["stage"] == event.stage else self._start(event)
        record["steps"] = event.step
        self._losses.append(event.loss)
        if self._log_phi0:
            with torch.no_grad():
                for layer, values in self._log_phi0.items():
                    phi = event.guide.concentration(layer).detach()
                    values.append(math.log(float(phi.sum())))
                    if self._means:
                        self._means[layer].append(phi / phi.sum())
        if len(self._losses) % self.window:
            return False
        entry = self._summary(event)
        means_now = {k: _vector_mean_se(v[-self.window:]) for k, v in self._means.items()} if self._means else None
        means_before, self._window_means = self._window_means, means_now
        trace = record["trace"]
        trace.append(entry)
        if len(trace) < 2:
            return False
        self._still = self._still + 1 if self._is_still(trace[-2], entry, means_before, means_now) else 0
        if self._still >= self.patience and event.step >= self.min_steps and not record["converged"]:
            record["converged"], record["converged_at"] = True, event.step
            return self.stops
        return False

    def _summary(self, event: FitStep) -> dict[str, Any]:
        loss, loss_se = _mean_se(self._losses[-self.window:])
        entry: dict[str, Any] = {"step": event.step, "loss": loss, "loss_se": loss_se}
        if self._log_phi0:
            log_phi0 = {k: _mean_se(v[-self.window:]) for k, v in self._log_phi0.items()}
            entry["log_phi0"] = {k: m for k, (m, _) in log_phi0.items()}
            entry["log_phi0_se"] = {k: se for k, (_, se) in log_phi0.items()}
            entry["phi0"] = {k: math.exp(v) for k, v in entry["log_phi0"].items()}
            with torch.no_grad():
                phis = {k: event.guide.concentration(k) for k in self._log_phi0}
            entry["max_mean"] = {k: float((phi / phi.sum()).max()) for k, phi in phis.items()}
        return entry

    def _is_still(self, before: dict[str, Any], now: dict[str, Any], means_before, means_now) -> bool:
        still = True
        if means_now:
            now["mean_shift"] = {}
            for k, (mean, se) in means_now.items():
                before_mean, before_se = means_before[k]
                shift = (mean - before_mean).abs()
                now["mean_shift"][k] = float(shift.max())
                sd = (mean * (1 - mean) / (math.exp(now["log_phi0"][k]) + 1)).sqrt()  # the posterior's own spread
                now.setdefault("mean_shift_sd", {})[k] = float((shift / sd.clamp_min(1e-300)).max())
                allowed = torch.clamp(2 * torch.hypot(se, before_se), min=self.mean_atol)
                still = still and bool((shift <= allowed).all())
        moved = abs(now["loss"] - before["loss"])
        noise = 2 * math.hypot(now["loss_se"], before["loss_se"])
        if moved > max(self.loss_rtol * abs(before["loss"]), noise):
            return False
        if self.phi_rtol is not None:
            still = still and all(
                abs(now["log_phi0"][k] - before["log_phi0"][k])
                <= max(self.phi_rtol, 2 * math.hypot(now["log_phi0_se"][k], before["log_phi0_se"][k]))
                for k in now.get("log_phi0", {}))
        return still
