"""Helpers shared by the registered networks: width checks, width scaling, initialisation, eval mode."""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

from torch import nn


def check_widths(widths: Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """``widths`` as a tuple of ``n`` positive ints, else a ``ValueError`` naming the model."""
    widths = tuple(int(w) for w in widths)
    if len(widths) != n or any(w < 1 for w in widths):
        raise ValueError(f"{name} needs {n} positive widths, got {widths}")
    return widths


def scale_widths(widths: Sequence[int], multiplier: float) -> tuple[int, ...]:
    """``widths`` multiplied by ``multiplier``, rounded, at least 1 each."""
    if not 0 < multiplier < float("inf"):
        raise ValueError(f"width multiplier must be a positive number, got {multiplier}")
    return tuple(max(1, int(round(w * multiplier))) for w in widths)


def kaiming_init(net: nn.Module) -> None:
    """He-normal convolutions (fan-out, as torchvision's ResNet and VGG), unit batch-norms."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@contextlib.contextmanager
def evaluating(net: nn.Module) -> Iterator[nn.Module]:
    """``net`` in eval mode inside, and every submodule's own train/eval mode back on exit: a
    network whose wrapper and layers differ (a ``SwitchedNetwork`` in train mode around a network
    in eval mode, a frozen batch-norm in a training network) is left exactly as it was, where
    ``net.train(net.training)`` would set every layer to the wrapper's mode."""
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        yield net
    finally:
        for m, mode in modes:
            m.training = mode
