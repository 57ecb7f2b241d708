"""What a switch point is: a prunable layer and where its switch sits (``SwitchPoint``), with
helpers that need nothing else. ``switch_points.switch_points`` finds a network's points;
``discovery`` finds those of a network that declares none. This module imports neither."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

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


def rebind(points: Sequence[SwitchPoint], source: nn.Module, target: nn.Module) -> list[SwitchPoint]:
    """The switch points of ``source`` moved onto ``target``, a copy of it (e.g. ``copy.deepcopy``
    or a pruned copy): the same names, on the modules of ``target`` at the same module paths."""
    path = {id(m): n for n, m in source.named_modules()}
    modules = dict(target.named_modules())

    def find(m: nn.Module | None) -> nn.Module | None:
        if m is None:
            return None
        if id(m) not in path:
            raise ValueError(f"module {type(m).__name__} of a switch point is not part of the network")
        return modules[path[id(m)]]

    return [SwitchPoint(p.name, find(p.module), find(p.hook_module)) for p in points]


def point_widths(points: Sequence[SwitchPoint]) -> dict[str, int]:
    """``{name: width}`` of switch points, in their order."""
    return {p.name: p.width for p in points}
