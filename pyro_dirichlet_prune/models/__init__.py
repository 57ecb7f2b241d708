"""Networks, their registry and the Pyro switch model."""
from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from ..errors import UserError
from .lenet import LeNet5, LeNet5Caffe
from .switch_points import SwitchPoint, switch_points
from .switched import DirichletSwitchModel, SwitchedNetwork

MODELS: dict[str, type[nn.Module]] = {"lenet5": LeNet5, "lenet5-caffe": LeNet5Caffe}


def build_model(
    name: str, widths: Sequence[int] | None = None, num_classes: int = 10, in_channels: int = 1
) -> nn.Module:
    """Build a registered network by name, with its default widths unless ``widths`` is given."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    cls = MODELS[name]
    return cls(widths if widths is not None else cls.default_widths, num_classes=num_classes, in_channels=in_channels)


__all__ = [
    "MODELS",
    "build_model",
    "LeNet5",
    "LeNet5Caffe",
    "SwitchPoint",
    "switch_points",
    "SwitchedNetwork",
    "DirichletSwitchModel",
]
