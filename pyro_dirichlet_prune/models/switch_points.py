"""The switch points of a network: the ones it declares, or else the ones ``discovery`` finds.

``SwitchPoint``, ``rebind`` and ``point_widths`` live in ``points`` (which ``discovery`` uses);
they are imported here too, so ``from .switch_points import SwitchPoint, switch_points`` works.
The dependencies run one way: ``switch_points`` -> ``discovery`` -> ``points``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .common import evaluating
from .discovery import discover_switch_points
from .points import SwitchPoint, point_widths, rebind

__all__ = ["SwitchPoint", "as_input_shape", "check_input_shape", "point_widths", "rebind", "shape_mismatch",
           "switch_points"]


def switch_points(net: nn.Module, input_shape: Sequence[int] | None = None) -> list[SwitchPoint]:
    """The switch points a network declares through its ``switch_points()`` method; for a
    network that declares none, the layers found by ``discovery.discover_switch_points`` on
    inputs of shape ``input_shape`` (which is then needed)."""
    fn = getattr(net, "switch_points", None)
    if fn is not None:
        return list(fn())
    if input_shape is None:
        raise TypeError(f"{type(net).__name__} does not declare its prunable layers (no switch_points()) "
                        f"and input_shape was not given to discover them")
    return discover_switch_points(net, input_shape)


def check_input_shape(net: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """``input_shape`` as a tuple of positive ints, checked by running ``net`` once on a zero
    input of that shape (in eval mode, without gradients, on the network's device; its mode is
    restored); a ``TypeError``/``ValueError`` naming ``input_shape`` when it is not one input's
    shape or the network cannot take it."""
    shape = as_input_shape(input_shape)
    param = next(iter(net.parameters()), None)
    with evaluating(net):
        try:
            with torch.no_grad():
                net(torch.zeros(1, *shape, device=param.device if param is not None else None,
                                dtype=param.dtype if param is not None and param.is_floating_point() else None))
        except (RuntimeError, ValueError, IndexError) as exc:
            raise shape_mismatch(net, shape, exc) from None
    return shape


def as_input_shape(input_shape) -> tuple[int, ...]:
    """``input_shape`` as a tuple of positive ints (the shape of one input, without the batch
    dimension); a ``TypeError``/``ValueError`` naming ``input_shape`` otherwise."""
    if input_shape is None or isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__len__"):
        raise TypeError(f"input_shape must be the shape of one input, e.g. (1, 28, 28), got {input_shape!r}")
    shape = tuple(input_shape)
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"input_shape must be positive ints, the shape of one input without the batch "
                         f"dimension, e.g. (1, 28, 28), got {input_shape!r}")
    return shape


def shape_mismatch(net: nn.Module, shape: tuple[int, ...], exc: Exception) -> ValueError:
    """The error that says an input of ``shape`` failed in ``net``'s forward with ``exc``."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ValueError(f"input_shape {shape} does not fit {type(net).__name__}: one input of that shape fails in its "
                      f"forward ({first})")
