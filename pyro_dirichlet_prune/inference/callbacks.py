"""What ``fit`` reports and whom it tells: ``FitResult`` (the losses and stages of a fit), the
``FitStep`` every callback is given after each step, and ``Progress``, the callback that shows
progress on stderr. A callback that returns True ends the current stage (e.g. a convergence rule)."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from tqdm.auto import tqdm

from .. import distributed
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
class FitStep:
    """What a ``fit`` callback is given after every step: the stage (its index and layers), the
    epoch within the stage (from 0), the steps taken in the stage, the step's loss, whether the
    step ended an epoch, and the model, guide and result so far."""

    stage: int
    layers: list[str]
    epoch: int
    step: int
    loss: float
    epoch_end: bool
    model: SwitchModel
    guide: object
    result: FitResult


Callback = Callable[[FitStep], Optional[bool]]


class Progress:
    """``fit``'s progress: a bar on a terminal; elsewhere (a log file, a pipe, a notebook's
    captured stderr) one line per epoch on stderr, ``switches conv1: epoch 1/3, 215 steps, loss
    1.234e+04, 3.2 s``. Only rank 0 of several processes speaks."""

    def __init__(self, label: str, total: int | None, initial: int, epochs: int, enabled: bool) -> None:
        self.enabled = enabled and distributed.is_main()
        self.label, self.epochs, self.t0 = label, epochs, time.perf_counter()
        on_terminal = self.enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, desc=f"switches {label}", leave=False) if on_terminal else None

    def __call__(self, info: FitStep) -> None:
        if self.bar is not None:
            self.bar.update()
            if info.step % 50 == 0:
                self.bar.set_postfix(loss=f"{info.loss:.4g}")
        elif self.enabled and info.epoch_end:
            print(f"switches {self.label}: epoch {info.epoch + 1}/{self.epochs}, {info.step} steps, "
                  f"loss {info.loss:.4g}, {time.perf_counter() - self.t0:.1f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def as_callbacks(callback) -> list[Callback]:
    """``callback`` as a list of callables (a ``TypeError`` naming it otherwise)."""
    if callback is None:
        return []
    found = [callback] if callable(callback) else list(callback) if isinstance(callback, (list, tuple)) else None
    if found is None or not all(callable(c) for c in found):
        raise TypeError(f"callback must be a callable or a list of callables, got {callback!r}")
    return found


def tell(watchers: list, info: FitStep) -> bool:
    """Give ``info`` to every watcher; True when one of them asks to end the stage."""
    stop = False
    for watch in watchers:
        stop = bool(watch(info)) or stop
    return stop
