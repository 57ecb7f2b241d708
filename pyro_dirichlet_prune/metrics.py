"""Size of a network: parameters and multiply-accumulates of its conv and linear layers."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models.common import evaluating
from .models.switch_points import as_input_shape, shape_mismatch
from .devices import device_of


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
    shape = as_input_shape(input_shape)
    x = torch.zeros(1, *shape, device=device_of(net))
    counter = FlopCounterMode(display=False)
    with evaluating(net):
        try:
            with counter:
                net(x)
        except RuntimeError as exc:
            raise shape_mismatch(net, shape, exc) from None
    flops = sum(v for op, v in counter.get_flop_counts()["Global"].items() if str(op).split(".")[1] in _MAC_OPS)
    return int(flops // 2)


def max_weight_change(before: nn.Module, after: nn.Module) -> dict[str, float]:
    """max |after - before| of every parameter tensor of two networks of the same shapes (e.g.
    the pre-trained network and the one whose weights learned with the switches)."""
    was = dict(before.named_parameters())
    return {n: float((p.detach() - was[n].detach()).abs().max()) for n, p in after.named_parameters()}


def network_size(net: nn.Module, input_shape: Sequence[int], points: Sequence) -> dict:
    """``{"params", "macs", "arch"}`` of ``net``: ``arch`` the widths of its switch ``points``
    (e.g. ``"6-8-40-20"``)."""
    return {"params": count_params(net), "macs": count_macs(net, input_shape),
            "arch": "-".join(str(p.width) for p in points)}
