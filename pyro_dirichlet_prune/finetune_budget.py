"""How long fine-tuning runs: the epoch record it keeps, and the two rules that end it early.

``training.finetune`` runs these as ``loop.EpochLoop`` callbacks:

* ``EpochRecord`` validates at every epoch end and keeps the state of the epoch with the lowest
  validation error (``restore_best`` puts it back at the end);
* ``EarlyStopping`` (``patience`` with the ``cosine`` and ``onecycle`` schedules) ends the loop
  once the validation error has not improved for ``patience`` epochs; the schedule stays the one
  planned over all the epochs;
* ``PlateauSchedule`` (``schedule="plateau"``) is the budget earned on the validation split: the
  learning rate is held until the validation error stops improving, then cut, and the run ends
  when it stops improving after the last cut.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from . import distributed
from .loop import LoopCallback, LoopEvent

PLATEAU_PATIENCE = 2
PLATEAU_FACTOR = 0.1
PLATEAU_CUTS = 2


@dataclass
class TrainResult:
    """What fine-tuning did: per epoch its mean training loss and validation error (``history``;
    with ``schedule="plateau"`` also the learning rate the epoch ran at), the epoch kept
    (``best_epoch``, from 1), and whether a rule ended it before its epochs were done
    (``stopped_early``)."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False


class EpochRecord(LoopCallback):
    """Fine-tuning's epoch bookkeeping: the mean training loss of the epoch (over every rank's
    share), the validation error (``validate(net, val_data)``, a dict with ``"error"``), and the
    best epoch's state (the lowest validation error; the last epoch without ``val_data``), which
    ``restore_best`` puts back."""

    def __init__(self, net: nn.Module, val_data, validate: Callable[[nn.Module, object], dict]) -> None:
        self.net, self.val_data, self.validate = net, val_data, validate
        self.total, self.count, self.best_err, self.best_state = 0.0, 0, math.inf, None
        self.result = TrainResult()

    def add(self, loss: float, n: int) -> None:
        self.total += loss * n
        self.count += n

    def on_epoch_end(self, event: LoopEvent) -> None:
        if distributed.world_size() > 1:  # the whole epoch's mean loss, over every rank's share
            self.total, self.count = distributed.all_sum([self.total, self.count])
        record = {"epoch": event.epoch + 1, "train_loss": self.total / max(self.count, 1)}
        if self.val_data is not None:
            record["val_error"] = self.validate(self.net, self.val_data)["error"]
            if record["val_error"] < self.best_err:
                self.best_err, self.best_state = record["val_error"], copy.deepcopy(self.net.state_dict())
                self.result.best_epoch = event.epoch + 1
        else:
            self.result.best_epoch = event.epoch + 1
        self.result.history.append(record)
        self.total, self.count = 0.0, 0

    def describe(self, event: LoopEvent) -> str:
        if not event.epoch_end or len(self.result.history) <= event.epoch:
            return f"loss {event.loss:.4g}"
        record = self.result.history[-1]
        val = f", val error {record['val_error']:.4f}" if "val_error" in record else ""
        lr = f", lr {record['lr']:.3g}" if "lr" in record else ""
        return f"train loss {record['train_loss']:.4g}{val}{lr}"

    def save(self) -> dict:
        return {"total": self.total, "count": self.count, "best_err": self.best_err, "best_state": self.best_state,
                "history": list(self.result.history), "best_epoch": self.result.best_epoch,
                "stopped_early": self.result.stopped_early}

    def load(self, saved: dict) -> None:
        self.total, self.count = saved["total"], saved["count"]
        self.best_err, self.best_state = saved["best_err"], saved["best_state"]
        self.result = TrainResult(history=list(saved["history"]), best_epoch=saved["best_epoch"],
                                  stopped_early=saved.get("stopped_early", False))

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.net.load_state_dict(self.best_state)


class EarlyStopping(LoopCallback):
    """End fine-tuning at an epoch end once the validation error has not improved on its best
    for ``patience`` epochs and at least ``min_epochs`` epochs have run; the best epoch is then
    kept, as always. The learning-rate schedule stays the one planned over all epochs."""

    def __init__(self, epochs: EpochRecord, patience: int, min_epochs: int = 0) -> None:
        self.epochs, self.patience, self.min_epochs = epochs, patience, min_epochs

    def on_epoch_end(self, event: LoopEvent) -> bool:
        done = event.epoch + 1
        return done >= self.min_epochs and done - self.epochs.result.best_epoch >= self.patience


class PlateauSchedule(LoopCallback):
    """The fine-tuning budget set by the validation split (``schedule="plateau"``).

    The learning rate starts at the optimiser's and is held. At an epoch end where the
    validation error has not improved on its best for ``patience`` epochs, counted from the best
    epoch or from the last cut, whichever is later, every group's rate is multiplied by
    ``factor``; after ``cuts`` cuts, the next such epoch end ends fine-tuning (once ``min_epochs``
    epochs ran). The run's length is then what the data earned: ``epochs`` is only the cap. The
    best epoch is kept, as always. This is ``torch.optim.lr_scheduler.ReduceLROnPlateau``'s rule
    (``threshold=0``, on the error) with an end; it lives here because it also stops the loop and
    must resume exactly (``save``/``load``; the rate itself is in the optimiser's state)."""

    def __init__(self, epochs: EpochRecord, opt: torch.optim.Optimizer, patience: int = PLATEAU_PATIENCE,
                 factor: float = PLATEAU_FACTOR, cuts: int = PLATEAU_CUTS, min_epochs: int = 0) -> None:
        if epochs.val_data is None:
            raise ValueError("schedule: the plateau schedule watches the validation error; give val_data")
        self.epochs, self.opt = epochs, opt
        self.patience, self.factor, self.cuts, self.min_epochs = patience, factor, cuts, min_epochs
        self.cut, self.last_cut = 0, 0

    def on_epoch_end(self, event: LoopEvent) -> bool:
        done = event.epoch + 1
        self.epochs.result.history[-1]["lr"] = self.opt.param_groups[0]["lr"]
        if done - max(self.epochs.result.best_epoch, self.last_cut) < self.patience:
            return False
        if self.cut < self.cuts:
            for group in self.opt.param_groups:
                group["lr"] *= self.factor
            self.cut, self.last_cut = self.cut + 1, done
            return False
        return done >= self.min_epochs

    def save(self) -> dict:
        return {"plateau_cut": self.cut, "plateau_last_cut": self.last_cut}

    def load(self, saved: dict) -> None:
        self.cut, self.last_cut = saved["plateau_cut"], saved["plateau_last_cut"]
