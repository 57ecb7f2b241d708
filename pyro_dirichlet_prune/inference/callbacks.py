"""What ``fit`` reports and tells: ``FitResult`` (the losses and stages of a fit) and the ``FitStep``
every callback is given after each step (the loop and its callbacks: ``loop``). A callback that
returns True ends the current stage (e.g. a convergence rule)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from ..loop import LoopEvent
from ..models.switched import SwitchModel


@dataclass
class FitResult:
    """What ``fit`` did. The fitted state itself lives in the guide.

    ``losses``: the loss (the minibatch's -ELBO estimate, eq. 7 scaled by N/B) of every step, all
    stages in order; ``stages``: one dict per stage, ``{"layers", "steps", "epochs", "seconds",
    "stopped"}`` (``stopped``: a callback ended the stage before its epochs were done);
    ``seconds``: the total time."""

    losses: list[float] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def stage_losses(self) -> dict[str, list[float]]:
        """The losses of every finished stage, by its label (its layers joined by ``+``)."""
        out, start = {}, 0
        for stage in self.stages:
            out["+".join(stage["layers"])] = self.losses[start:start + stage["steps"]]
            start += stage["steps"]
        return out

    def final_loss(self, window: int = 50) -> float:
        """The mean loss over the last ``window`` steps (of the last stage, for a layer-by-layer fit)."""
        if not self.losses:
            raise ValueError("the fit took no step")
        last = list(self.stage_losses().values())[-1] if self.stages else self.losses
        tail = last[-window:] or self.losses[-window:]
        return float(sum(tail) / len(tail))


@dataclass
class FitStep(LoopEvent):
    """What a ``fit`` callback is given after every step: the epoch within the stage (from 0),
    the steps taken in the stage, the step's loss, whether the step ended an epoch (``LoopEvent``),
    and the stage (its index and layers), the model, guide and result so far."""

    stage: int = 0
    layers: list[str] = field(default_factory=list)
    model: Optional[SwitchModel] = None
    guide: object = None
    result: Optional[FitResult] = None


Callback = Callable[[FitStep], Optional[bool]]
