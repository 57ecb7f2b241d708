"""Plain supervised training (pre-training, fine-tuning) and evaluation."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import DataBundle, Split, batches, epoch_order, num_batches
from .errors import UserError
from .runstate import RunState, rng_state, set_rng_state


OPTIMIZERS = ("adam", "sgd")


def check_device(device: str) -> torch.device:
    """``device`` as a ``torch.device``: ``cpu``, or ``cuda``/``cuda:N`` when that GPU exists;
    anything else is a ``UserError``."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}; use cpu or cuda") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise UserError(f"unsupported device {device!r}; use cpu or cuda")
    return dev


def device_of(net: nn.Module) -> torch.device:
    """The device of a network's parameters (the CPU for a network without any)."""
    p = next(iter(net.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(net: nn.Module, split: Split, batch_size: int = 1000) -> dict[str, float]:
    """Classification error and mean negative log-likelihood of ``net`` on ``split``
    (computed on the network's device)."""
    was_training = net.training
    net.eval()
    device = device_of(net)
    wrong, nll = 0, 0.0
    for x, y, _ in batches(split, batch_size, shuffle=False):
        x, y = x.to(device), y.to(device)
        logits = net(x)
        wrong += int((logits.argmax(1) != y).sum())
        nll += float(F.cross_entropy(logits, y, reduction="sum"))
    net.train(was_training)
    n = len(split)
    return {"error": wrong / n, "nll": nll / n}


@dataclass
class TrainConfig:
    """Adam (``optimizer="adam"``) or SGD with Nesterov momentum 0.9 (``"sgd"``), with a cosine
    learning-rate decay to zero over all steps; the epoch with the lowest validation error is
    kept (early stopping on the validation split). Augmentation as in ``data.batches``;
    ``device`` is where the network trains (the data stay on the CPU, minibatches are moved)."""

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    augment_shift: int = 0
    augment_flip: bool = False
    seed: int = 0
    optimizer: str = "adam"
    augment_crop: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        if int(self.epochs) < 0 or int(self.batch_size) < 1 or int(self.augment_shift) < 0 or int(self.augment_crop) < 0:
            raise ValueError(f"epochs >= 0, batch_size >= 1, augment_shift >= 0 and augment_crop >= 0 needed, got {self}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if not (self.lr > 0 and math.isfinite(self.lr)) or not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"lr must be positive and weight_decay non-negative, got {self.lr}, {self.weight_decay}")


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0


def train(
    net: nn.Module,
    data: DataBundle,
    cfg: TrainConfig,
    desc: str = "train",
    state: RunState | None = None,
    loop: str = "finetune",
) -> TrainResult:
    """Train every parameter of ``net`` that requires grad on ``cfg.device``; ``net`` ends in
    the best state, on that device.

    With a ``RunState`` the loop saves its state at the state's interval and continues from
    a saved state, reaching the same result as an uninterrupted run.
    """
    cfg.validate()
    device = check_device(cfg.device)
    net.to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    result = TrainResult()
    if cfg.epochs <= 0 or not params:
        return result
    saved = state.get(loop) if state is not None else None
    if saved is not None and saved.get("done"):
        net.load_state_dict(saved["net"])
        net.eval()
        return TrainResult(history=saved["history"], best_epoch=saved["best_epoch"])
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = num_batches(data.train, cfg.batch_size)
    steps = cfg.epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
    gen = torch.Generator().manual_seed(cfg.seed)
    epoch, batch, order, total, count = 0, 0, None, 0.0, 0
    best_err, best_state = math.inf, None
    if saved is not None:
        net.load_state_dict(saved["net"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        set_rng_state(saved["rng"], gen)
        epoch, batch, order = saved["epoch"], saved["batch"], saved["order"]
        total, count = saved["total"], saved["count"]
        best_err, best_state = saved["best_err"], saved["best_state"]
        result = TrainResult(history=saved["history"], best_epoch=saved["best_epoch"])

    def snapshot(done: bool = False) -> dict:
        return {
            "done": done, "net": copy.deepcopy(net.state_dict()), "opt": copy.deepcopy(opt.state_dict()),
            "sched": sched.state_dict(), "rng": rng_state(gen), "epoch": epoch, "batch": batch,
            "order": order, "total": total, "count": count, "best_err": best_err, "best_state": best_state,
            "history": list(result.history), "best_epoch": result.best_epoch, "global_step": global_step,
        }

    global_step = epoch * per_epoch + batch
    bar = tqdm(total=steps, initial=global_step, desc=desc, leave=False, disable=None)
    while epoch < cfg.epochs:
        net.train()
        if order is None:
            order = epoch_order(len(data.train), True, gen)
        for x, y, _ in batches(data.train, cfg.batch_size, True, gen, cfg.augment_shift, cfg.augment_flip,
                               order=order, start_batch=batch, augment_crop=cfg.augment_crop):
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(y)
            count += len(y)
            batch += 1
            global_step += 1
            bar.update()
            if state is not None:
                state.step(loop, global_step, snapshot)
        val = evaluate(net, data.val)
        result.history.append({"epoch": epoch + 1, "train_loss": total / count, "val_error": val["error"]})
        bar.set_postfix(val_error=f"{val['error']:.4f}")
        if val["error"] < best_err:
            best_err, best_state, result.best_epoch = val["error"], copy.deepcopy(net.state_dict()), epoch + 1
        epoch, batch, order, total, count = epoch + 1, 0, None, 0.0, 0
        if state is not None:
            state.save(loop, snapshot())
    bar.close()
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    if state is not None:
        state.save(loop, snapshot(done=True))
    return result
