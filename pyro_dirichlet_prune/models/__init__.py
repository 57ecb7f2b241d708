"""Networks, their registry and the Pyro switch model."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from ..errors import UserError
from .discovery import discover_switch_points
from .lenet import LeNet5, LeNet5Caffe
from .switch_points import SwitchPoint, switch_points
from .switched import SwitchedNetwork, SwitchModel
from .vgg import VGG16
from .wrn import WideResNet, parse_wrn_name

MODELS: dict[str, type[nn.Module]] = {"lenet5": LeNet5, "lenet5-caffe": LeNet5Caffe, "vgg16": VGG16}
"""Networks with a fixed name; wide residual networks are named ``wrn-<depth>-<widen>``."""

MODEL_NAMES = (*MODELS, "wrn-D-K")
"""The names ``--model`` takes, for messages (``wrn-D-K`` stands for e.g. ``wrn-28-10``)."""


def check_model_name(name: str) -> None:
    """Raise ``UserError`` unless ``name`` is a registered network (builds nothing)."""
    if name in MODELS:
        return
    try:
        if parse_wrn_name(name) is not None:
            return
    except ValueError as exc:
        raise UserError(str(exc)) from None
    raise UserError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))} or wrn-<depth>-<widen> "
                    f"(e.g. wrn-28-10, wrn-16-4)")


def default_widths(name: str) -> tuple[int, ...]:
    """The prunable widths of a registered network by default."""
    check_model_name(name)
    if name in MODELS:
        return tuple(MODELS[name].default_widths)
    return WideResNet.default_widths_for(*parse_wrn_name(name))


def load_pretrained(name: str, dataset: str) -> nn.Module:
    """The pre-trained network ``name`` for ``dataset`` that ships with the package (``lenet5``
    for ``mnist`` and ``fashion-mnist``), in eval mode."""
    from .checkpoint import load_checkpoint, shipped_checkpoint

    path = shipped_checkpoint(name, dataset)
    if path is None:
        raise ValueError(f"no pre-trained {name} for {dataset} ships with the package")
    net, _ = load_checkpoint(path, name)
    return net.eval()


def build_model(
    name: str, widths: Sequence[int] | None = None, num_classes: int = 10, in_channels: int | None = None
) -> nn.Module:
    """Build a registered network by name (``MODELS``, or ``wrn-<depth>-<widen>``), with its
    default widths unless ``widths`` is given and its default input channels (1 for the LeNets,
    3 for VGG-16 and WRNs) unless ``in_channels`` is given."""
    check_model_name(name)
    kwargs = {"num_classes": num_classes} | ({"in_channels": in_channels} if in_channels is not None else {})
    if name in MODELS:
        cls = MODELS[name]
        return cls(widths if widths is not None else cls.default_widths, **kwargs)
    depth, widen = parse_wrn_name(name)
    return WideResNet(depth, widen, widths, **kwargs)


__all__ = [
    "MODELS",
    "MODEL_NAMES",
    "build_model",
    "load_pretrained",
    "check_model_name",
    "default_widths",
    "discover_switch_points",
    "LeNet5",
    "LeNet5Caffe",
    "VGG16",
    "WideResNet",
    "SwitchPoint",
    "switch_points",
    "SwitchedNetwork",
    "SwitchModel",
]
