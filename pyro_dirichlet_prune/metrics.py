"""Size of a network: parameters and multiply-accumulates of its conv and linear layers."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .training import device_of


def count_params(net: nn.Module) -> int:
    """Weights and biases of every Conv2d and Linear layer."""
    return sum(
        p.numel()
        for m in net.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
        for p in (m.weight, m.bias)
        if p is not None
    )


_MAC_OPS = ("convolution", "mm", "addmm", "bmm")


@torch.no_grad()
def count_macs(net: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of the convolutions and matrix products for one input.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per MAC; bias additions,
    activations and pooling are not counted, as in the paper's FLOPs column).
    """
    was_training = net.training
    net.eval()
    x = torch.zeros(1, *input_shape, device=device_of(net))
    counter = FlopCounterMode(display=False)
    with counter:
        net(x)
    net.train(was_training)
    flops = sum(v for op, v in counter.get_flop_counts()["Global"].items() if str(op).split(".")[1] in _MAC_OPS)
    return int(flops // 2)
