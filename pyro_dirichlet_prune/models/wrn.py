"""Wide residual networks (Zagoruyko & Komodakis, 2016) with pre-activation basic blocks.

``WideResNet(depth, widen)``, named ``wrn-<depth>-<widen>`` (e.g. ``wrn-28-10``, ``wrn-16-4``):
a 3x3 stem convolution (16 channels), three groups of n = (depth - 4) / 6 basic blocks with
16·widen, 32·widen and 64·widen output channels (the first block of groups 2 and 3 has stride 2),
then batch-norm → ReLU → global average pooling → fc. A basic block computes

    o = ReLU(bn1(x));  y = conv2(dropout(ReLU(bn2(conv1(o)))));  out = y + shortcut

with shortcut = x, or a 1x1 convolution of o where the block changes width or resolution.

Prunable: ``conv1`` of every block (named ``block<g>.<i>.conv1``). Its units feed only the
block's own conv2, through bn2 and ReLU, so they can be removed alone: Torch-Pruning slices
conv1's output channels, bn2 and conv2's input channels. Its switch sits after bn2, before the
ReLU (``hook_module`` is bn2): removing a unit removes its bn2 channel, which maps zero to a
non-zero value, so zeroing the unit after bn2 is what the pruned network computes. The block
outputs (conv2, the shortcut convolutions and the stem) are tied together by the residual
additions and keep their widths. The prunable widths are therefore the 3n conv1 widths
(default 16·widen n times, 32·widen n times, 64·widen n times).
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import check_widths, kaiming_init
from .switch_points import SwitchPoint

NAME = re.compile(r"^wrn-(\d+)-(\d+)$")


def parse_wrn_name(name: str) -> tuple[int, int] | None:
    """``(depth, widen)`` of a name ``wrn-<depth>-<widen>``, None for another name; a depth
    that is not 6n + 4 (n >= 1) or a widen factor below 1 is a ``ValueError``."""
    m = NAME.match(name)
    if m is None:
        return None
    depth, widen = int(m.group(1)), int(m.group(2))
    if depth < 10 or (depth - 4) % 6 or widen < 1:
        raise ValueError(f"{name}: the depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...) and the widen factor >= 1")
    return depth, widen


class BasicBlock(nn.Module):
    """Pre-activation basic block ``in_planes → mid → out_planes`` (module docstring)."""

    def __init__(self, in_planes: int, mid: int, out_planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, out_planes, 3, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut = None
        if in_planes != out_planes or stride != 1:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = F.relu(self.bn2(self.conv1(o)))
        if self.dropout > 0:
            y = F.dropout(y, p=self.dropout, training=self.training)
        y = self.conv2(y)
        return y + (self.shortcut(o) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    """WRN-depth-widen with prunable widths: the conv1 width of every block (module docstring)."""

    input_size = 32
    """The image size it is built for (CIFAR's): MNIST-like images are zero-padded to it (``inputs``)."""

    def __init__(
        self,
        depth: int = 28,
        widen: int = 10,
        widths: Sequence[int] | None = None,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.depth, self.widen = parse_wrn_name(f"wrn-{depth}-{widen}")
        n = (depth - 4) // 6
        planes = (16 * widen, 32 * widen, 64 * widen)
        defaults = self.default_widths_for(depth, widen)
        widths = check_widths(widths if widths is not None else defaults, 3 * n, f"wrn-{depth}-{widen}")
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        c_in = 16
        for g in range(3):
            blocks = []
            for i in range(n):
                stride = 2 if g > 0 and i == 0 else 1
                blocks.append(BasicBlock(c_in, widths[g * n + i], planes[g], stride, dropout))
                c_in = planes[g]
            setattr(self, f"block{g + 1}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(c_in)
        self.fc = nn.Linear(c_in, num_classes)
        kaiming_init(self)

    @staticmethod
    def default_widths_for(depth: int, widen: int) -> tuple[int, ...]:
        n = (depth - 4) // 6
        return tuple(w * widen for w in (16, 32, 64) for _ in range(n))

    @property
    def default_widths(self) -> tuple[int, ...]:
        return self.default_widths_for(self.depth, self.widen)

    def _blocks(self) -> list[tuple[str, BasicBlock]]:
        return [(f"block{g}.{i}", b) for g in (1, 2, 3) for i, b in enumerate(getattr(self, f"block{g}"))]

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(b.conv1.out_channels for _, b in self._blocks())

    def switch_points(self) -> list[SwitchPoint]:
        """conv1 of every block, input first; the switch multiplies the output of the block's
        bn2, after the normalisation and before the ReLU."""
        return [SwitchPoint(f"{name}.conv1", b.conv1, b.bn2) for name, b in self._blocks()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.block3(self.block2(self.block1(x)))
        x = F.relu(self.bn(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)
