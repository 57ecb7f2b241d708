"""Where a network runs: a device named by the user, checked, and the device a network is on."""
from __future__ import annotations

import torch
from torch import nn

from .errors import UserError


def check_device(device: str) -> torch.device:
    """``device`` as a ``torch.device``: ``cpu``, or ``cuda``/``cuda:N`` when that GPU exists;
    anything else is a ``UserError``."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}; use cpu or cuda") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device}: CUDA is not available on this machine (torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise UserError(f"unsupported device {device!r}; use cpu or cuda")
    return dev


def device_of(net: nn.Module) -> torch.device:
    """The device of a network's parameters (the CPU for a network without any)."""
    p = next(iter(net.parameters()), None)
    return p.device if p is not None else torch.device("cpu")
