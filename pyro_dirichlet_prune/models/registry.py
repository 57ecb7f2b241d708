"""The registry of networks with a name: ``MODELS``, ``wrn-<depth>-<widen>``, and building them."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from ..errors import UserError
from .lenet import LeNet5, LeNet5Caffe
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


def model_input_size(name: str) -> int | None:
    """The square image size a registered network is built for (32 for VGG-16 and the WRNs,
    which are trained on MNIST-like data zero-padded to it), None for one that takes its data
    set's images as they are (the LeNets)."""
    check_model_name(name)
    return getattr(MODELS.get(name, WideResNet), "input_size", None)


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
