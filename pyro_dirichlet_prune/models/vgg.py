"""VGG-16 with batch-norm for 32x32 inputs (CIFAR-10), with configurable widths.

Thirteen 3x3 convolutions, each followed by batch-norm and ReLU, in five stages separated by
2x2 max-pooling (64, 64 | 128, 128 | 256, 256, 256 | 512, 512, 512 | 512, 512, 512), then
the classifier fc1 (c13 → f1) → ReLU → fc2 (f1 → classes) (no batch-norm there: a
training minibatch of one example could not be normalised). After five poolings a
32x32 input is 1x1, so fc1 sees the c13 channels of the last stage.

The prunable widths are the thirteen convolutions and fc1 (14 numbers, default
64-64-128-128-256-256-256-512-512-512-512-512-512-512). The switch of a convolution sits on
the batch-norm that follows it (after the normalisation, before the ReLU), so that it
multiplies what the next layer sees and removing a unit equals zeroing it there; the switch
of fc1 multiplies fc1's output.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import check_widths, kaiming_init
from .switch_points import SwitchPoint

POOL_AFTER = (2, 4, 7, 10, 13)  # max-pooling follows these convolutions (1-based)


class VGG16(nn.Module):
    """VGG-16-BN for CIFAR with prunable widths ``(c1, ..., c13, f1)`` (module docstring)."""

    default_widths = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512)
    input_size = 32
    """The image size it is built for: MNIST-like 28x28 images are zero-padded to it (``inputs``)."""

    def __init__(self, widths: Sequence[int] = default_widths, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        widths = check_widths(widths, 14, "vgg16")
        c_in = in_channels
        for i, c in enumerate(widths[:13], start=1):
            setattr(self, f"conv{i}", nn.Conv2d(c_in, c, 3, padding=1, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(c))
            c_in = c
        self.fc1 = nn.Linear(c_in, widths[13])
        self.fc2 = nn.Linear(widths[13], num_classes)
        kaiming_init(self)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(getattr(self, f"conv{i}").out_channels for i in range(1, 14)) + (self.fc1.out_features,)

    def switch_points(self) -> list[SwitchPoint]:
        """Every convolution and fc1, input first; a convolution's switch multiplies the output
        of the batch-norm after it (before the ReLU), fc1's switch fc1's output."""
        points = [SwitchPoint(f"conv{i}", getattr(self, f"conv{i}"), getattr(self, f"bn{i}")) for i in range(1, 14)]
        return points + [SwitchPoint("fc1", self.fc1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 14):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            if i in POOL_AFTER:
                x = F.max_pool2d(x, 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)
