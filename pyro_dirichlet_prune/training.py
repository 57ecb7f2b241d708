"""Plain supervised training (pre-training, fine-tuning) and evaluation."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import DataBundle, Split, batches, num_batches


@torch.no_grad()
def evaluate(net: nn.Module, split: Split, batch_size: int = 1000) -> dict[str, float]:
    """Classification error and mean negative log-likelihood of ``net`` on ``split``."""
    was_training = net.training
    net.eval()
    wrong, nll = 0, 0.0
    for x, y, _ in batches(split, batch_size, shuffle=False):
        logits = net(x)
        wrong += int((logits.argmax(1) != y).sum())
        nll += float(F.cross_entropy(logits, y, reduction="sum"))
    net.train(was_training)
    n = len(split)
    return {"error": wrong / n, "nll": nll / n}


@dataclass
class TrainConfig:
    """Adam with a cosine learning-rate decay to zero over all steps; the epoch with the
    lowest validation error is kept (early stopping on the validation split)."""

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    augment_shift: int = 0
    augment_flip: bool = False
    seed: int = 0


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0


def train(net: nn.Module, data: DataBundle, cfg: TrainConfig, desc: str = "train") -> TrainResult:
    """Train every parameter of ``net`` that requires grad; ``net`` ends in the best state."""
    params = [p for p in net.parameters() if p.requires_grad]
    result = TrainResult()
    if cfg.epochs <= 0 or not params:
        return result
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * num_batches(data.train, cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
    gen = torch.Generator().manual_seed(cfg.seed)
    best_err, best_state = math.inf, None
    bar = tqdm(total=steps, desc=desc, leave=False, disable=None)
    for epoch in range(cfg.epochs):
        net.train()
        total, count = 0.0, 0
        for x, y, _ in batches(data.train, cfg.batch_size, True, gen, cfg.augment_shift, cfg.augment_flip):
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(y)
            count += len(y)
            bar.update()
        val = evaluate(net, data.val)
        result.history.append({"epoch": epoch + 1, "train_loss": total / count, "val_error": val["error"]})
        bar.set_postfix(val_error=f"{val['error']:.4f}")
        if val["error"] < best_err:
            best_err, best_state, result.best_epoch = val["error"], copy.deepcopy(net.state_dict()), epoch + 1
    bar.close()
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return result
