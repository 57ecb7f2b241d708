"""Where the importance switches of a network sit."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


@dataclass(frozen=True)
class SwitchPoint:
    """One prunable layer: ``module`` has ``width`` output units (conv channels or neurons).

    The switch multiplies the output of ``hook_module`` channel-wise. For a plain conv or
    linear layer that is the layer itself; for a conv followed by batch-norm it is the
    batch-norm, so that the normalisation cannot undo the switch.
    """

    name: str
    module: nn.Module
    hook_module: nn.Module | None = field(default=None, compare=False)

    @property
    def width(self) -> int:
        m = self.module
        if isinstance(m, nn.Conv2d):
            return m.out_channels
        if isinstance(m, nn.Linear):
            return m.out_features
        raise TypeError(f"switch point {self.name}: unsupported layer type {type(m).__name__}")

    @property
    def hooked(self) -> nn.Module:
        return self.hook_module if self.hook_module is not None else self.module


def switch_points(net: nn.Module) -> list[SwitchPoint]:
    """The switch points a network declares through its ``switch_points()`` method."""
    fn = getattr(net, "switch_points", None)
    if fn is None:
        raise TypeError(f"{type(net).__name__} does not declare its prunable layers (no switch_points())")
    return list(fn())
