"""Cut-offs: which units of each layer to keep, given an importance score per unit."""
from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

import torch

from ..errors import UserError

TAU = 1.0
DELTA = 0.05
"""The default uncertainty cut-off: remove unit j of layer l when P(D_l · s_lj < TAU) >= 1 - DELTA,
the posterior 95% sure that the unit's share is below its layer's uniform share. On docs/cutoffs.md's
front with the checked settle's posteriors (LeNet-5/MNIST), the setting of lowest validation error
after fine-tuning among those that need nothing but the data, on seeds 0-2 and again on fresh seeds
3-5 (delta 0.01, the default until then, is level with it at about 10% more MACs). ``TAU`` is also
the default of the budget cut-off's order and of the ``prob-below`` ranking."""


def parse_widths(arch: str) -> list[int]:
    """``"6-8-40-20"`` → ``[6, 8, 40, 20]``; anything but dash-separated decimal integers is an error."""
    if not re.fullmatch(r"\s*[0-9]+(-[0-9]+)*\s*", arch or ""):
        raise UserError(f"architecture {arch!r} is not a dash-separated list of integers")
    return [int(p) for p in arch.strip().split("-")]


def parse_arch(arch: str, widths: Mapping[str, int]) -> dict[str, int]:
    """Parse ``"6-8-40-20"`` into kept units per layer (layers in the network's order)."""
    kept = parse_widths(arch)
    if len(kept) != len(widths):
        raise UserError(
            f"architecture {arch!r} has {len(kept)} widths but the network has {len(widths)} prunable "
            f"layers ({'-'.join(str(w) for w in widths.values())})"
        )
    out = {}
    for (name, width), k in zip(widths.items(), kept):
        if not 1 <= k <= width:
            raise UserError(f"architecture {arch!r}: layer {name} has {width} units, cannot keep {k}")
        out[name] = k
    return out


def rate_widths(rate: float, widths: Mapping[str, int]) -> dict[str, int]:
    """Kept units when a fraction ``rate`` of every layer is removed: max(1, round(D·(1 - rate)))."""
    if not 0.0 <= rate < 1.0:
        raise UserError(f"rate must be in [0, 1), got {rate}")
    return {name: max(1, int(math.floor(d * (1.0 - rate) + 0.5))) for name, d in widths.items()}


def keep_top(scores: Mapping[str, torch.Tensor], kept: Mapping[str, int]) -> dict[str, list[int]]:
    """Indices (sorted) of the ``kept[l]`` highest-scoring units of every layer; ties go to the
    lower index so that the choice is deterministic."""
    out = {}
    for name, k in kept.items():
        s = scores[name].detach().double()
        order = sorted(range(s.numel()), key=lambda j: (-float(s[j]), j))
        out[name] = sorted(order[:k])
    return out


def arch_string(kept: Mapping[str, Sequence[int]] | Mapping[str, int]) -> str:
    """``"6-8-40-20"`` from kept indices or counts per layer."""
    return "-".join(str(v if isinstance(v, int) else len(v)) for v in kept.values())


def uncertainty_keep(
    prob_below: Mapping[str, torch.Tensor], means: Mapping[str, torch.Tensor], delta: float
) -> tuple[dict[str, list[int]], list[str]]:
    """The uncertainty cut-off: remove unit j of layer l when the posterior is confident that it
    is unimportant,

        P(D_l · s_lj < tau | data) >= 1 - delta,

    given ``prob_below[l][j]`` = that probability (``SwitchPosterior.prob_below(tau)``). A layer
    whose every unit qualifies keeps its unit of highest posterior mean: a layer is never emptied.
    Returns the kept indices per layer and the names of the layers so guarded."""
    if not 0.0 < delta < 1.0:
        raise UserError(f"delta must be in (0, 1), got {delta}")
    keep, guarded = {}, []
    for layer, p in prob_below.items():
        kept = [j for j in range(p.numel()) if not float(p[j]) >= 1.0 - delta]
        if not kept:
            m = means[layer].double()
            kept = [min(range(m.numel()), key=lambda j: (-float(m[j]), j))]
            guarded.append(layer)
        keep[layer] = kept
    return keep, guarded


def removal_order(prob_below: Mapping[str, torch.Tensor], means: Mapping[str, torch.Tensor]) -> list[tuple[str, int]]:
    """Every unit of every layer in order of posterior evidence of unimportance: P(D_l · s_lj < tau)
    descending, then the relative posterior mean D_l · E[s_lj] ascending, then layer order and index."""
    layers = list(prob_below)
    units = []
    for li, layer in enumerate(layers):
        p, m = prob_below[layer].double(), means[layer].double()
        d = m.numel()
        units += [(-float(p[j]), d * float(m[j]), li, j, layer) for j in range(d)]
    units.sort()
    return [(u[4], u[3]) for u in units]


def _scores(ranking) -> dict[str, torch.Tensor]:
    """Per-layer unit scores from a ``SwitchPosterior`` (its means) or a mapping of scores."""
    means = getattr(ranking, "means", None)
    if means is not None:
        return dict(means)
    if isinstance(ranking, Mapping):
        return {k: torch.as_tensor(v) for k, v in ranking.items()}
    raise TypeError(f"expected a SwitchPosterior or a mapping of per-layer scores, got {type(ranking).__name__}")


def uncertainty_cutoff(posterior, tau: float = TAU, delta: float = DELTA) -> dict[str, list[int]]:
    """The units a posterior keeps: unit j of layer l goes when ``P(D_l · s_lj < tau) >= 1 - delta``
    (``uncertainty_keep``); a layer keeps at least its unit of highest posterior mean."""
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a positive number, got {tau}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    keep, _ = uncertainty_keep(posterior.prob_below(tau), posterior.means, delta)
    return keep


def arch_cutoff(ranking, arch: str | Sequence[int] | Mapping[str, int]) -> dict[str, list[int]]:
    """Keep the ``arch`` highest-scoring units per layer (``"6-8-40-20"``, a list in layer order,
    or ``{layer: count}``); ``ranking`` is a posterior (its means) or per-layer scores."""
    scores = _scores(ranking)
    widths = {k: int(v.numel()) for k, v in scores.items()}
    if isinstance(arch, str):
        counts = parse_arch(arch, widths)
    elif isinstance(arch, Mapping):
        missing, unknown = [k for k in widths if k not in arch], [k for k in arch if k not in widths]
        if missing or unknown:
            raise ValueError(f"arch: a mapping must give a count for every layer ({', '.join(widths)}); "
                             + "; ".join(([f"missing {', '.join(missing)}"] if missing else [])
                                         + ([f"unknown {', '.join(map(str, unknown))}"] if unknown else [])))
        bad = {k: v for k, v in arch.items() if isinstance(v, bool) or not isinstance(v, int)}
        if bad:
            raise TypeError(f"arch: counts must be ints, got {bad}")
        counts = parse_arch("-".join(str(arch[k]) for k in widths), widths)
    else:
        counts = parse_arch("-".join(str(int(k)) for k in arch), widths)
    return keep_top(scores, counts)


def rate_cutoff(ranking, rate: float) -> dict[str, list[int]]:
    """Remove a fraction ``rate`` of every layer, keeping its highest-scoring units (``rate_widths``)."""
    scores = _scores(ranking)
    return keep_top(scores, rate_widths(rate, {k: int(v.numel()) for k, v in scores.items()}))
