"""The budget cut-off: remove units across all layers, in order of posterior evidence of
unimportance (``cutoff.removal_order``), until the network fits a MAC and/or parameter budget.

The size of a network depends only on how many units each layer keeps, and never grows when a
unit is removed, so the shortest prefix of the removal order that meets the budget is found by
bisection over its length, measuring each candidate size on a physically pruned copy.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

from torch import nn

from ..errors import UserError
from ..metrics import count_macs, count_params
from ..models.switch_points import SwitchPoint
from .cutoff import TAU
from .surgery import prune_units

SizeFn = Callable[[Mapping[str, int]], dict[str, int]]


def size_function(net: nn.Module, input_shape: Sequence[int], points: Sequence[SwitchPoint] | None = None) -> SizeFn:
    """``size(kept_counts) -> {"macs", "params"}`` of ``net`` keeping that many units per layer
    (memoised; the first units are kept, which does not change the size); ``points`` as in
    ``prune_units``."""
    cache: dict[tuple, dict[str, int]] = {}

    def size(counts: Mapping[str, int]) -> dict[str, int]:
        key = tuple(sorted(counts.items()))
        if key not in cache:
            small = prune_units(net, {layer: range(k) for layer, k in counts.items()}, input_shape, points)
            cache[key] = {"macs": count_macs(small, input_shape), "params": count_params(small)}
        return cache[key]

    return size


def _fits(size: Mapping[str, int], target: Mapping[str, int]) -> bool:
    return all(size[k] <= v for k, v in target.items())


def check_reachable(size: SizeFn, widths: Mapping[str, int], target: Mapping[str, int]) -> None:
    """Raise ``UserError`` when even one unit per layer does not fit ``target``."""
    smallest = size(dict.fromkeys(widths, 1))
    if not _fits(smallest, target):
        raise UserError(
            f"budget {dict(target)} cannot be met: keeping one unit per layer still needs "
            f"{smallest['macs']} MACs and {smallest['params']} params"
        )


def budget_keep(
    order: Sequence[tuple[str, int]],
    widths: Mapping[str, int],
    size: SizeFn,
    target: Mapping[str, int],
) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Remove the units of ``order`` one after another (skipping the last unit of a layer, which
    always stays) until ``size`` meets every entry of ``target`` (keys ``macs``/``params``).
    Returns the kept indices per layer and their size; a budget that even one unit per layer
    cannot meet is a ``UserError``."""
    if not target:
        raise UserError("the budget cut-off needs a target: macs and/or params")
    for key, value in target.items():
        if key not in ("macs", "params"):
            raise UserError(f"unknown budget {key!r}; use macs or params")
        if not (isinstance(value, int) and value > 0):
            raise UserError(f"budget {key} must be a positive integer, got {value!r}")
    left = dict(widths)
    removable = []
    for layer, j in order:
        if left[layer] > 1:
            left[layer] -= 1
            removable.append((layer, j))

    def counts_after(k: int) -> dict[str, int]:
        c = dict(widths)
        for layer, _ in removable[:k]:
            c[layer] -= 1
        return c

    check_reachable(size, widths, target)
    lo, hi = 0, len(removable)  # invariant: counts_after(hi) fits
    while lo < hi:
        mid = (lo + hi) // 2
        if _fits(size(counts_after(mid)), target):
            hi = mid
        else:
            lo = mid + 1
    removed: dict[str, set[int]] = {layer: set() for layer in widths}
    for layer, j in removable[:hi]:
        removed[layer].add(j)
    keep = {layer: [j for j in range(d) if j not in removed[layer]] for layer, d in widths.items()}
    return keep, size(counts_after(hi))


def budget_cutoff(posterior, net: nn.Module, input_shape: Sequence[int], macs: int | None = None,
                  params: int | None = None, tau: float = TAU,
                  points: Sequence[SwitchPoint] | None = None) -> dict[str, list[int]]:
    """The units to keep so that ``net`` fits ``macs`` and/or ``params``: units are removed across
    layers in order of posterior evidence of unimportance, ``P(D_l · s_lj < tau)`` descending
    (``removal_order``), and the shortest prefix of that order that fits is found by bisection on
    physically pruned copies. ``points`` are the network's switch points (default: declared or
    discovered)."""
    from .cutoff import removal_order

    target = {k: v for k, v in (("macs", macs), ("params", params)) if v is not None}
    if not target:
        raise ValueError("give macs and/or params")
    size = size_function(net, input_shape, points)
    keep, _ = budget_keep(removal_order(posterior.prob_below(tau), posterior.means), posterior.widths, size, target)
    return keep
