"""LeNet-5 variants with configurable prunable widths.

``LeNet5`` is the network of Adamczewski & Park (2021), widths 10-20-100-25:
conv5x5(1→c1) → ReLU → maxpool2 → conv5x5(c1→c2) → ReLU → maxpool2 → flatten
→ fc(16·c2→f1) → ReLU → fc(f1→f2) → ReLU → fc(f2→classes).

``LeNet5Caffe`` is the Caffe variant used by the Bayesian-compression baselines
(usually written 20-50-800-500): conv5x5(1→20) → maxpool2 → conv5x5(20→50) → maxpool2
→ fc(800→500) → ReLU → fc(500→classes). Its prunable widths are conv1, conv2 and fc1
(20-50-500); the 800 inputs of fc1 are 16 positions × the 50 conv2 channels.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import check_widths as _check_widths
from .switch_points import SwitchPoint


class LeNet5(nn.Module):
    """LeNet-5 of the Dirichlet-pruning paper with prunable widths ``(c1, c2, f1, f2)``."""

    default_widths = (10, 20, 100, 25)

    def __init__(
        self, widths: Sequence[int] = default_widths, num_classes: int = 10, in_channels: int = 1
    ) -> None:
        super().__init__()
        c1, c2, f1, f2 = _check_widths(widths, 4, "lenet5")
        self.conv1 = nn.Conv2d(in_channels, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.fc1 = nn.Linear(c2 * 4 * 4, f1)
        self.fc2 = nn.Linear(f1, f2)
        self.fc3 = nn.Linear(f2, num_classes)

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.conv1.out_channels, self.conv2.out_channels, self.fc1.out_features, self.fc2.out_features)

    def switch_points(self) -> list[SwitchPoint]:
        """The prunable layers, input first; each switch multiplies the layer's pre-activation."""
        return [SwitchPoint(n, getattr(self, n)) for n in ("conv1", "conv2", "fc1", "fc2")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5Caffe(nn.Module):
    """LeNet-5-Caffe with prunable widths ``(c1, c2, f1)``, default 20-50-500."""

    default_widths = (20, 50, 500)

    def __init__(
        self, widths: Sequence[int] = default_widths, num_classes: int = 10, in_channels: int = 1
    ) -> None:
        super().__init__()
        c1, c2, f1 = _check_widths(widths, 3, "lenet5-caffe")
        self.conv1 = nn.Conv2d(in_channels, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.fc1 = nn.Linear(c2 * 4 * 4, f1)
        self.fc2 = nn.Linear(f1, num_classes)

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.conv1.out_channels, self.conv2.out_channels, self.fc1.out_features)

    def switch_points(self) -> list[SwitchPoint]:
        return [SwitchPoint(n, getattr(self, n)) for n in ("conv1", "conv2", "fc1")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)
