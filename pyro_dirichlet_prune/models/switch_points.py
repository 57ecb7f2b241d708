"""The switch points of a network: the ones it declares, or else the ones ``discovery`` finds.

``SwitchPoint``, ``rebind`` and ``point_widths`` live in ``points`` (which ``discovery`` uses);
they are imported here too, so ``from .switch_points import SwitchPoint, switch_points`` works.
The dependencies run one way: ``switch_points`` -> ``discovery`` -> ``points``.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from .discovery import discover_switch_points
from .points import SwitchPoint, point_widths, rebind

__all__ = ["SwitchPoint", "point_widths", "rebind", "switch_points"]


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
