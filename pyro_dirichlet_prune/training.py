"""Plain supervised training (pre-training, fine-tuning) and evaluation."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .data import DataBundle, Split, SplitLoader, check_labels, minibatches, split_batch
from .devices import check_device, device_of
from .finetune_budget import (PLATEAU_CUTS, PLATEAU_FACTOR, PLATEAU_PATIENCE, EarlyStopping, EpochRecord,
                              PlateauSchedule, TrainResult)
from .loop import Checkpoint, EpochLoop, LoopEvent, Progress, as_callbacks
from .models.common import evaluating
from .runstate import LoopPosition, RunState, open_loop


OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "onecycle", "plateau")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, temperature: float,
                      weight: float) -> torch.Tensor:
    """Knowledge distillation (Hinton et al. 2015) from the teacher's logits:

        (1 - weight) · CE(student, y) + weight · T² · KL(softmax(teacher / T) || softmax(student / T)),

    averaged over the minibatch; the T² keeps the soft term's gradients on the scale of the
    cross-entropy's as T grows. ``weight = 0`` is plain cross-entropy."""
    hard = F.cross_entropy(student, y)
    if weight == 0:
        return hard
    soft = F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    return (1.0 - weight) * hard + weight * temperature ** 2 * soft


@torch.no_grad()
def evaluate(net: nn.Module, data: Split | Iterable, batch_size: int = 1000, across_ranks: bool = False
             ) -> dict[str, float]:
    """Classification error and mean negative log-likelihood of ``net`` on ``data`` (a ``Split``,
    in batches of ``batch_size``, or any iterable of ``(x, y[, idx])`` minibatches such as a
    ``DataLoader``), computed on the network's device. With ``across_ranks`` and several
    processes (``distributed``), each rank evaluates its share of a ``Split`` and the counts are
    summed: every rank gets the whole split's numbers."""
    device = device_of(net)
    if across_ranks and isinstance(data, Split) and distributed.active():
        part = distributed.share(len(data))
        data = Split(data.x[part], data.y[part])
    wrong, nll, n = 0, 0.0, 0
    with evaluating(net):
        for batch in minibatches(data, batch_size):
            x, y, *_ = split_batch(batch)
            x, y = x.to(device), y.to(device)
            logits = net(x)
            check_labels(y, logits.shape[-1])
            wrong += int((logits.argmax(1) != y).sum())
            nll += float(F.cross_entropy(logits, y, reduction="sum"))
            n += len(y)
    if across_ranks:
        wrong, nll, n = distributed.all_sum([wrong, nll, n])
    if n == 0:
        raise ValueError("data holds no examples")
    return {"error": wrong / n, "nll": nll / n}


@dataclass
class TrainConfig:
    """Adam (``optimizer="adam"``) or SGD with Nesterov momentum 0.9 (``"sgd"``), with a cosine
    learning-rate decay to zero over all steps (``schedule="cosine"``) or a one-cycle schedule
    (``"onecycle"``: up to ``lr`` over the first 30% of the steps, then down), or a rate held
    until the validation error stops improving (``"plateau"``: cut by ``plateau_factor`` after
    ``patience`` epochs without progress, ``plateau_cuts`` times, then the run ends;
    ``finetune_budget.PlateauSchedule``: ``epochs`` is only the cap); the epoch with the lowest
    validation error is kept. Augmentation as in
    ``data.batches``; ``device`` is where the network trains (the data stay on the CPU,
    minibatches are moved). With ``distill`` the loss is ``distillation_loss`` against a teacher
    network's logits (``temperature``, ``distill_weight``). ``channels_last`` trains in
    channels-last memory order (``finetune``). The defaults are ``finetune``'s, the LeNet recipe
    of ``pretraining.train_defaults`` (which gives every model and data set its own)."""

    epochs: int = 40
    lr: float = 2e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    augment_shift: int = 0
    augment_flip: bool = False
    seed: int = 0
    optimizer: str = "adam"
    augment_crop: int = 0
    device: str = "cpu"
    schedule: str = "cosine"
    distill: bool = False
    temperature: float = 4.0
    distill_weight: float = 0.9
    patience: int | None = None
    min_epochs: int = 0
    plateau_factor: float = PLATEAU_FACTOR
    plateau_cuts: int = PLATEAU_CUTS
    channels_last: bool = False

    def validate(self) -> None:
        if int(self.epochs) < 0 or int(self.batch_size) < 1 or int(self.augment_shift) < 0 or int(self.augment_crop) < 0:
            raise ValueError(f"epochs >= 0, batch_size >= 1, augment_shift >= 0 and augment_crop >= 0 needed, got {self}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if not (self.lr > 0 and math.isfinite(self.lr)) or not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"lr must be positive and weight_decay non-negative, got {self.lr}, {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0 <= self.distill_weight <= 1:
            raise ValueError(f"distill_weight must be in [0, 1], got {self.distill_weight}")
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise ValueError(f"patience must be a positive int or None, got {self.patience!r}")
        if isinstance(self.min_epochs, bool) or not isinstance(self.min_epochs, int) or self.min_epochs < 0:
            raise ValueError(f"min_epochs must be a non-negative int, got {self.min_epochs!r}")
        if not 0 < self.plateau_factor < 1:
            raise ValueError(f"plateau_factor must be in (0, 1), got {self.plateau_factor!r}")
        if isinstance(self.plateau_cuts, bool) or not isinstance(self.plateau_cuts, int) or self.plateau_cuts < 0:
            raise ValueError(f"plateau_cuts must be a non-negative int, got {self.plateau_cuts!r}")


def train(
    net: nn.Module,
    data: DataBundle,
    cfg: TrainConfig,
    desc: str = "train",
    state: RunState | None = None,
    loop: str = "finetune",
    teacher: nn.Module | None = None,
    progress: bool = True,
    callback=None,
) -> TrainResult:
    """``finetune`` with the settings of ``cfg`` on the in-memory splits of ``data``: minibatches
    of ``cfg.batch_size`` in an order (and augmentation) drawn from a generator seeded with
    ``cfg.seed``; the validation split chooses the epoch kept. ``cfg.distill`` needs the
    ``teacher``; ``progress`` and ``callback`` are ``finetune``'s."""
    cfg.validate()
    if cfg.distill and teacher is None:
        raise ValueError("teacher: distillation (distill=True) needs the teacher network")
    loader = distributed.sharded(SplitLoader(data.train, cfg.batch_size, True,
                                             torch.Generator().manual_seed(cfg.seed), cfg.augment_shift,
                                             cfg.augment_flip, cfg.augment_crop))
    return finetune(net, loader, data.val, epochs=cfg.epochs, lr=cfg.lr, optimizer=cfg.optimizer,
                    weight_decay=cfg.weight_decay, device=cfg.device, desc=desc, state=state, loop=loop,
                    schedule=cfg.schedule, teacher=teacher if cfg.distill else None, temperature=cfg.temperature,
                    distill_weight=cfg.distill_weight, progress=progress, callback=callback, patience=cfg.patience,
                    min_epochs=cfg.min_epochs, plateau_factor=cfg.plateau_factor, plateau_cuts=cfg.plateau_cuts,
                    channels_last=cfg.channels_last)


def finetune(
    net: nn.Module,
    train_data: Iterable,
    val_data: Split | Iterable | None = None,
    *,
    epochs: int = TrainConfig.epochs,
    lr: float = TrainConfig.lr,
    optimizer: str = TrainConfig.optimizer,
    weight_decay: float = TrainConfig.weight_decay,
    device: str = TrainConfig.device,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 100,
    desc: str = "fine-tune",
    state: RunState | None = None,
    loop: str = "finetune",
    schedule: str = TrainConfig.schedule,
    teacher: nn.Module | None = None,
    temperature: float = TrainConfig.temperature,
    distill_weight: float = TrainConfig.distill_weight,
    callback=None,
    patience: int | None = TrainConfig.patience,
    min_epochs: int = TrainConfig.min_epochs,
    plateau_factor: float = TrainConfig.plateau_factor,
    plateau_cuts: int = TrainConfig.plateau_cuts,
    channels_last: bool = TrainConfig.channels_last,
) -> TrainResult:
    """Train every parameter of ``net`` (a pruned network: its parameters are made trainable)
    with cross-entropy on the ``(x, y[, idx])`` minibatches of ``train_data`` (e.g. a
    ``DataLoader``) for ``epochs`` passes: Adam (``optimizer="adam"``) or SGD with Nesterov
    momentum 0.9 (``"sgd"``), the learning rate decayed to zero on a cosine over all steps
    (``schedule="cosine"``) or on a one-cycle schedule (``"onecycle"``), or held and cut on the
    validation error's plateaus (``"plateau"``: ``finetune_budget.PlateauSchedule`` with
    ``patience`` (default 2), ``plateau_factor``, ``plateau_cuts``; it needs ``val_data`` and
    ends the run itself, ``epochs`` being the cap). With a ``teacher`` (e.g.
    the network before pruning; used in eval mode, never trained) the loss is
    ``distillation_loss`` with ``temperature`` and ``distill_weight``. With ``val_data`` the epoch
    of lowest validation error is kept. ``net`` ends in that state, in eval mode, on ``device``.

    Under ``torchrun`` (several ranks, ``pyro_dirichlet_prune.distributed``) the network is
    wrapped in DDP; each rank trains on the minibatches of ``train_data`` it is given (its share
    of each global minibatch: ``distributed.sharded(loader)``), weighted so that the averaged
    gradient is the global minibatch's mean, and the validation error is summed over the ranks'
    shares of a ``Split``.

    ``checkpoint`` (a folder) saves the loop's state every ``checkpoint_every`` steps and at every
    epoch end, and continues from a saved state (exactly, for data that restore their position
    or reshuffle from torch's global generator; see ``inference.fit.fit``).

    ``patience`` (with ``val_data``) stops early: at the first epoch end where the validation
    error has not improved on its best for ``patience`` epochs and at least ``min_epochs`` epochs
    ran (``EarlyStopping``; the cosine or one-cycle schedule stays the one planned over
    ``epochs``, the best epoch is kept). None (the default) runs all ``epochs``, except under the
    plateau schedule, whose patience it is.

    ``channels_last`` holds the convolution weights and the minibatches in channels-last memory
    order while training (the same arithmetic, summed in another order): on a CPU a training step
    of a 0.25-wide VGG-16 on 32x32 images took 0.31 s instead of 0.48 s, of a WRN-16-1 0.46 s
    instead of 1.08 s (batch 128, one thread). The network ends in the usual contiguous order.

    ``progress`` shows a bar on a terminal, else one line per epoch on stderr (``loop.Progress``).
    ``callback`` (a callable, a ``loop.LoopCallback``, or a list of them) is told after every
    step with a ``TrainStep``; one that returns True ends the fine-tuning there (the epoch's
    validation still runs and the best epoch is kept). Returns a ``TrainResult``: the history of
    the epochs (mean training loss, validation error) and the epoch kept."""
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    TrainConfig(epochs=epochs, lr=lr, optimizer=optimizer, weight_decay=weight_decay, schedule=schedule,
                temperature=temperature, distill_weight=distill_weight, patience=patience,
                min_epochs=min_epochs, plateau_factor=plateau_factor, plateau_cuts=plateau_cuts).validate()
    if patience is not None and val_data is None:
        raise ValueError("patience: early stopping watches the validation error; give val_data")
    if schedule == "plateau" and val_data is None:
        raise ValueError("schedule: the plateau schedule watches the validation error; give val_data")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
    dev = check_device(device)
    for p in net.parameters():
        p.requires_grad_(True)
    net.to(dev)
    params = list(net.parameters())
    if epochs <= 0 or not params:
        return TrainResult()
    layout = torch.channels_last if channels_last else None
    if layout is not None:
        net.to(memory_format=layout)
    state, saved = open_loop(state, checkpoint, checkpoint_every, loop)
    if saved is not None and saved.get("done"):
        net.load_state_dict(saved["net"])
        net.eval()
        return TrainResult(history=saved["history"], best_epoch=saved["best_epoch"],
                           stopped_early=saved.get("stopped_early", False))
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    per_epoch = len(train_data)
    steps = epochs * per_epoch
    if schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.3,
                                                    cycle_momentum=optimizer == "sgd")
    elif schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
    else:  # plateau: the rate lives in the optimiser, cut at epoch ends by PlateauSchedule
        sched = None
    teach = _teacher(teacher, dev)
    model = distributed.ddp(net)  # several ranks: DDP averages the gradients (``distributed``)
    ranks = distributed.world_size()
    epochs_ = EpochRecord(net, val_data, lambda n, v: evaluate(n, v, across_ranks=True))
    plateau = (PlateauSchedule(epochs_, opt, patience or PLATEAU_PATIENCE, plateau_factor, plateau_cuts, min_epochs)
               if schedule == "plateau" else None)
    rule = ([plateau] if plateau is not None else
            [EarlyStopping(epochs_, patience, min_epochs)] if patience is not None else [])
    position = None
    if saved is not None:
        net.load_state_dict(saved["net"])
        opt.load_state_dict(saved["opt"])
        if sched is not None:
            sched.load_state_dict(saved["sched"])
        position = LoopPosition.restored(saved)
        epochs_.load(saved)
        if plateau is not None:
            plateau.load(saved)
    result = epochs_.result

    def event(epoch: int, step: int, loss: float, epoch_end: bool) -> TrainStep:
        return TrainStep(epoch, step, loss, epoch_end, net, result)

    loop_ = EpochLoop(train_data, epochs, position, 0, event)
    loop_.steps = loop_.at.epoch * per_epoch + loop_.at.batch

    def step(x: torch.Tensor, y: torch.Tensor, *_) -> float:
        x, y = x.to(dev), y.to(dev)
        if layout is not None and x.dim() == 4:
            x = x.contiguous(memory_format=layout)
        logits = model(x)
        check_labels(y, logits.shape[-1])
        if teach is None:
            loss = F.cross_entropy(logits, y)
        else:
            with torch.no_grad():
                target = teach(x)
            loss = distillation_loss(logits, target, y, temperature, distill_weight)
        opt.zero_grad(set_to_none=True)
        if ranks > 1:  # this rank's share of the whole minibatch's mean: sum over the share / B, times W
            whole = distributed.all_sum([len(y)])[0]
            (loss * (len(y) * ranks / whole)).backward()
        else:
            loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        value = loss.item()
        epochs_.add(value, len(y))
        return value

    def snapshot(done: bool = False) -> dict:
        return {"done": done, "net": copy.deepcopy(net.state_dict()), "opt": copy.deepcopy(opt.state_dict()),
                "sched": sched.state_dict() if sched is not None else None, **loop_.at.save(train_data),
                **epochs_.save(), **(plateau.save() if plateau is not None else {}),
                "global_step": loop_.steps}

    watchers = [epochs_, *rule, *as_callbacks(callback), Progress(desc, steps, loop_.steps, epochs, progress, epochs_.describe)]
    if state is not None:
        watchers.append(Checkpoint(state, loop, snapshot, loop_))
    net.train()  # evaluate() puts the mode back after each validation
    result.stopped_early = loop_.run(step, watchers) or result.stopped_early
    epochs_.restore_best()
    if layout is not None:
        net.to(memory_format=torch.contiguous_format)
    net.eval()
    if state is not None:
        state.save(loop, snapshot(done=True))
    return result


@dataclass
class TrainStep(LoopEvent):
    """What a ``finetune`` callback is given after every step (``LoopEvent``), with the network
    and the result so far (the history of finished epochs)."""

    net: Optional[nn.Module] = None
    result: Optional[TrainResult] = None


def _teacher(teacher: nn.Module | None, device: torch.device) -> nn.Module | None:
    """The teacher in eval mode on ``device``, its parameters untouched by the fine-tuning (a
    copy when it has to move, so that the caller's network stays where it is)."""
    if teacher is None:
        return None
    if device_of(teacher) != device:
        teacher = copy.deepcopy(teacher).to(device)
    return teacher.eval()
