"""The one resumable loop of this package: epochs of minibatches, one step each, and callbacks.

Switch learning (``inference.fit.fit``, once per stage) and fine-tuning (``training.finetune``)
run ``EpochLoop``: it hands each minibatch of ``data`` to a step function (the SVI step, the
cross-entropy step) and tells its callbacks after every step and at every epoch end. What the
loops do besides stepping is a callback: ``Progress`` (a bar on a terminal, one line per epoch
elsewhere), ``Checkpoint`` (the loop's state saved into a ``runstate.RunState`` at its interval
and at epoch ends), the guards (``fit``'s collapse check), validation and keeping the best epoch
(``finetune``), and a user's own (a convergence rule). A callback that returns True ends the
loop, as Keras' and Lightning's early stopping do: the epoch ends there, and its epoch-end
callbacks still run.

A callback is a ``LoopCallback`` (``on_step``, ``on_epoch_end``, ``close``) or a plain callable,
which is called after every step (``EveryStep``). An event says where the loop is: the epoch
(from 0), the steps taken, the step's loss, and ``epoch_end``: whether the step was its epoch's
last (known after the step when ``data`` has a length; otherwise only ``on_epoch_end`` says so).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

from tqdm.auto import tqdm

from . import distributed
from .runstate import LoopPosition, RunState


@dataclass
class LoopEvent:
    """Where a loop is after a step: the epoch (from 0), the steps taken in this loop, the step's
    loss, and whether the step ended an epoch."""

    epoch: int
    step: int
    loss: float
    epoch_end: bool


class LoopCallback:
    """What an ``EpochLoop`` tells: ``on_step`` after every step, ``on_epoch_end`` once the epoch
    is over (its position already moved on), ``close`` when the loop ends, however it ends. The
    two hooks may return True to end the loop."""

    def on_step(self, event: LoopEvent) -> Optional[bool]:
        return None

    def on_epoch_end(self, event: LoopEvent) -> Optional[bool]:
        return None

    def close(self) -> None:
        return None


class EveryStep(LoopCallback):
    """A plain callable as a callback: called with the event after every step."""

    def __init__(self, fn: Callable[[LoopEvent], Optional[bool]]) -> None:
        self.fn = fn

    def on_step(self, event: LoopEvent) -> Optional[bool]:
        return self.fn(event)


def as_callbacks(callback) -> list[LoopCallback]:
    """``callback`` (``None``, a callable or ``LoopCallback``, or a list of them) as a list of
    ``LoopCallback``; a ``TypeError`` naming it otherwise."""
    if callback is None:
        return []
    found = [callback] if callable(callback) or isinstance(callback, LoopCallback) else (
        list(callback) if isinstance(callback, (list, tuple)) else None)
    if found is None or not all(callable(c) or isinstance(c, LoopCallback) for c in found):
        raise TypeError(f"callback must be a callable or a list of callables, got {callback!r}")
    return [c if isinstance(c, LoopCallback) else EveryStep(c) for c in found]


class EpochLoop:
    """``epochs`` passes over ``data`` (an iterable of ``(x, y[, idx])`` minibatches), from
    ``position`` (a ``runstate.LoopPosition``: a resumed loop's) on; ``event(epoch, step, loss,
    epoch_end)`` makes what the callbacks are given (a ``LoopEvent`` by default); ``steps`` is the
    count of steps already taken (a resumed loop's)."""

    def __init__(self, data: Iterable, epochs: int, position: LoopPosition | None = None, steps: int = 0,
                 event: Callable[..., LoopEvent] = LoopEvent) -> None:
        self.data, self.epochs = data, epochs
        self.at = position or LoopPosition()
        self.steps, self.event = steps, event
        self.per_epoch = len(data) if hasattr(data, "__len__") else None
        self.stopping = False  # a callback asked to end the loop (``Checkpoint`` then keeps no epoch-end state)

    def run(self, step: Callable[..., float], callbacks: Sequence[LoopCallback]) -> bool:
        """Take ``step(x, y[, idx])`` (it returns the loss) on every minibatch until the epochs are
        done or a callback ends the loop; every callback is closed at the end. Returns whether a
        callback ended it."""
        last = math.nan
        try:
            while self.at.epoch < self.epochs and not self.stopping:
                for batch in self.at.batches(self.data):
                    last = step(*batch)
                    self.steps += 1
                    end = self.per_epoch is not None and self.at.batch >= self.per_epoch
                    if self._tell(callbacks, "on_step", self.event(self.at.epoch, self.steps, last, end)):
                        break
                epoch = self.at.epoch
                self.at.next_epoch()
                self._tell(callbacks, "on_epoch_end", self.event(epoch, self.steps, last, True))
        finally:
            for callback in callbacks:
                callback.close()
        return self.stopping

    def _tell(self, callbacks: Sequence[LoopCallback], hook: str, event: LoopEvent) -> bool:
        for callback in callbacks:
            if getattr(callback, hook)(event):
                self.stopping = True
        return self.stopping


class Checkpoint(LoopCallback):
    """Save ``snapshot()`` (everything the loop needs to continue) as loop ``name`` of ``state``
    every ``state.every`` steps (``steps()`` counts them across the run's stages) and at every
    epoch end but one where the loop is ending; put it last, after the callbacks whose work the
    snapshot holds."""

    def __init__(self, state: RunState, name: str, snapshot: Callable[[], dict], loop: EpochLoop,
                 steps: Callable[[], int] | None = None) -> None:
        self.state, self.name, self.snapshot, self.loop = state, name, snapshot, loop
        self.steps = steps or (lambda: loop.steps)

    def on_step(self, event: LoopEvent) -> None:
        self.state.step(self.name, self.steps(), self.snapshot)

    def on_epoch_end(self, event: LoopEvent) -> None:
        if self.loop.at.epoch < self.loop.epochs and not self.loop.stopping:
            self.state.save(self.name, self.snapshot())


class Progress(LoopCallback):
    """A loop's progress on stderr: a bar on a terminal; elsewhere (a log file, a pipe, a
    notebook's captured stderr) one line per epoch, ``label: epoch 1/3, 215 steps, <describe>,
    3.2 s``, where ``describe(event)`` says how the epoch went (the loss by default). Only rank 0
    of several processes speaks."""

    def __init__(self, label: str, total: int | None, initial: int, epochs: int, enabled: bool,
                 describe: Callable[[LoopEvent], str] | None = None) -> None:
        self.enabled = enabled and distributed.is_main()
        self.label, self.epochs, self.t0 = label, epochs, time.perf_counter()
        self.describe = describe or (lambda event: f"loss {event.loss:.4g}")
        on_terminal = self.enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, desc=label, leave=False) if on_terminal else None

    def on_step(self, event: LoopEvent) -> None:
        if self.bar is not None:
            self.bar.update()
            if event.step % 50 == 0:
                self.bar.set_postfix_str(self.describe(event))

    def on_epoch_end(self, event: LoopEvent) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(self.describe(event))
        elif self.enabled:
            print(f"{self.label}: epoch {event.epoch + 1}/{self.epochs}, {event.step} steps, {self.describe(event)}, "
                  f"{time.perf_counter() - self.t0:.1f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
