"""Iterate averaging (Polyak and Juditsky 1992; Ruppert 1988) for ``fit``'s stages.

A stochastic optimiser at a constant step does not stop at the ELBO's optimum: its iterates wander
about it, by an amount set by the step and the gradient noise. On LeNet-5 with all of MNIST the
Dirichlet guide's means move from one epoch to the next by several of the posterior's own standard
deviations (a run's convergence trace says how many: ``mean_shift_sd``, docs/convergence.md), so
the last iterate's intervals sit somewhere in that wander. The average of the iterates over an epoch wanders far less, at no cost
in gradients: ``IterateAverage`` keeps the running mean of the guide's
(unconstrained) parameters over each epoch and, when a stage ends, puts the mean of its last
epoch into the guide. For a ``DirichletGuide`` that is the geometric mean of phi over the
epoch; its total is then settled again when concentrations are settled (``inference.concentration``).
"""
from __future__ import annotations

import torch

from ..loop import LoopCallback, LoopEvent


class IterateAverage(LoopCallback):
    """A ``fit`` callback: the guide ends every stage at the mean of its parameters over the
    stage's last epoch, as far as it ran (module docstring; the mean of the steps since the last
    epoch end). ``stages_averaged`` counts the stages whose parameters were so replaced. A stage
    resumed from a checkpoint averages from where it resumed."""

    def __init__(self, guide: torch.nn.Module) -> None:
        if not isinstance(guide, torch.nn.Module):
            raise TypeError(f"guide must be a torch.nn.Module (a PyroModule guide), got {type(guide).__name__}")
        self.guide = guide
        self.stages_averaged = 0
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0
        self._last: dict[str, torch.Tensor] | None = None

    def _params(self) -> dict[str, torch.Tensor]:
        return {name: p for name, p in self.guide.named_parameters() if p.requires_grad}

    def on_step(self, event: LoopEvent) -> None:
        with torch.no_grad():
            for name, p in self._params().items():
                if name in self._sums:
                    self._sums[name] += p.detach()
                else:
                    self._sums[name] = p.detach().clone()
        self._count += 1

    def on_epoch_end(self, event: LoopEvent) -> None:
        if self._count:
            self._last = {name: total / self._count for name, total in self._sums.items()}
        self._sums, self._count = {}, 0

    def close(self) -> None:
        """The stage ended: put its last whole epoch's mean into the guide, and start afresh."""
        if self._last is not None:
            with torch.no_grad():
                for name, p in self._params().items():
                    if name in self._last:
                        p.copy_(self._last[name])
            self.stages_averaged += 1
        self._sums, self._count, self._last = {}, 0, None
