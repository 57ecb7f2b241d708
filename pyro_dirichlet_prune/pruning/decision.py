"""The decision cut-off: greedy backward elimination of units on the log-likelihood against the size.

What it reads depends on the model. When the weights learned with the switches, the utility below
is an expectation over posterior draws of the switches (``draws``): a Bayesian decision. On a
frozen network it is loss-based greedy elimination: the log-likelihood of the network itself, with
no posterior in it (the ``greedy`` ranking, ``baselines.greedy_scores``, runs the same search
layer by layer, as a baseline against the rankings).

Removing the units outside a keep-set K costs expected log-likelihood and saves size. With
``lam`` (lambda) the price of the whole network's size in nats per example, the utility is

    U(K) = (1/M) sum_m E_q[ log p(y_m | x_m, s, K) ] - lambda · size(K) / size(all units),

on M training examples, where ``p(y | x, s, K)`` is the network to prune with the outputs of the
units outside K set to zero and, for a model whose weights learned with the switches, every unit's
output multiplied by its switch draw relative to the posterior mean (``draws``; without draws,
the network at the posterior mean: a plug-in estimate). ``size(K) / size(all units)`` is the share
of the MACs, of the parameters, or the mean of the two shares (``measure="macs+params"``). So
lambda = 0.05 says that halving the MACs is worth 0.025 nats per example of expected
log-likelihood. For a frozen network the posterior describes switches that the pruned network
does not have, so the utility is that of the network itself (no draws). With a ``target`` budget
instead of lambda, units are removed at the least log-likelihood lost per size saved until the
budget is met; then, as the last removals may overshoot it, the removed unit that raises the
log-likelihood most while the budget still holds is added back, again and again, until none fits.

The maximisation is greedy backward elimination, lazily evaluated: the removal of every unit is
scored once by its exact change of utility (a forward pass per unit: the change of mean
log-likelihood plus lambda times the share of the size it saves); then the unit of best score is
scored again against the current keep-set and removed if it still beats every other unit's
(older) score, else put back with its new score. It stops when the best fresh score is not
positive: no single removal raises the utility. Every layer keeps at least one unit. The scores
of the remaining units change little with each removal, so this needs a few evaluations per unit
removed instead of one per remaining unit.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models.common import evaluating
from ..models.switch_points import SwitchPoint
from ..models.switched import SwitchedNetwork
from .budget import SizeFn, size_function

SIZES = ("macs", "params")
MEASURES = ("macs", "params", "macs+params")
DEFAULT_EXAMPLES = 1000
DEFAULT_LAM = 2.0
"""lambda of ``prune``'s decision cut-off when none is given (nats per example for the whole size):
the largest of those tried (1, 2, 4, 8) whose pruned LeNet-5/MNIST keeps the pre-trained network's
validation error after fine-tuning. lam 2: 8-9-48-20 and the like, 2.05x fewer MACs, 3.9x fewer
params, 0.75 +- 0.09% validation error over seeds 0-2 (the pre-trained network: 0.76%); lam 4:
0.95 +- 0.10% (docs/learned-weights.md)."""


@dataclass
class Decision:
    """The keep-set chosen and how: ``steps`` lists every removal (``"removed"``) and, under a
    budget, every unit added back (``"added"``), in order, with the utility, the mean
    log-likelihood and the size after it; ``evaluations`` counts the forward passes over the M
    examples."""

    keep: dict[str, list[int]]
    utility: float
    loglik: float
    size: dict[str, int]
    steps: list[dict] = field(default_factory=list)
    evaluations: int = 0


def _check(lam: float | None, target: Mapping[str, int] | None, measure: str) -> None:
    if (lam is None) == (not target):
        raise ValueError("give lam (the price of the network's size in nats per example) or a target budget, not both")
    if lam is not None and not (isinstance(lam, (int, float)) and not isinstance(lam, bool) and lam >= 0
                                and math.isfinite(lam)):
        raise ValueError(f"lam must be a non-negative number, got {lam!r}")
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    for key, value in (target or {}).items():
        if key not in SIZES or not (isinstance(value, int) and value > 0):
            raise ValueError(f"target must map macs/params to positive integers, got {dict(target)}")


def decision_examples(train, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(x, y)`` of ``count`` examples of the ``train`` split (a ``data.Split``) drawn
    without replacement by a generator seeded with ``seed``: the M examples of the utility."""
    rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:count]
    return train.x[rows], train.y[rows]


def loglik_function(network, points: Sequence[SwitchPoint], x: torch.Tensor, y: torch.Tensor,
                    draws: Sequence[Mapping[str, torch.Tensor]] = ()) -> Callable[[Mapping[str, Sequence[int]]], float]:
    """``loglik(keep)``: mean log p(y | x) of ``network`` (a ``SwitchedNetwork`` on ``points``)
    with the units outside ``keep`` zeroed, averaged over ``draws`` (relative switch scales per
    layer, one dict per draw; none: the network as it is)."""
    widths = {p.name: p.width for p in points}

    @torch.no_grad()
    def loglik(keep: Mapping[str, Sequence[int]]) -> float:
        masks = {}
        for layer, kept in keep.items():
            m = torch.zeros(widths[layer])
            m[list(kept)] = 1.0
            masks[layer] = m
        total = 0.0
        for draw in (list(draws) or [{}]):
            scales = {k: masks[k] * draw[k].to(masks[k].dtype) if k in draw else masks[k] for k in masks}
            with network.scaled(scales):
                total += float(F.log_softmax(network(x), 1).gather(1, y[:, None]).mean())
        return total / max(len(draws), 1)

    return loglik


def decision_keep(
    loglik: Callable[[Mapping[str, Sequence[int]]], float],
    widths: Mapping[str, int],
    size: SizeFn,
    *,
    lam: float | None = None,
    target: Mapping[str, int] | None = None,
    measure: str = "macs",
) -> Decision:
    """The greedy maximiser of the utility of the module docstring. ``loglik(keep)`` is the mean
    log-likelihood of a keep-set (``loglik_function``), ``size(counts)`` the size of a network
    keeping ``counts[l]`` units per layer (``budget.size_function``). Give ``lam`` (nats per
    example for the whole size ``measure``) or a ``target`` budget (``{"macs": M}`` and/or
    ``{"params": P}``)."""
    _check(lam, target, measure)
    keep = {layer: list(range(d)) for layer, d in widths.items()}
    full = size(dict(widths))
    keys = measure.split("+")

    def counts(k: Mapping[str, Sequence[int]]) -> dict[str, int]:
        return {layer: len(v) for layer, v in k.items()}

    def fits(k) -> bool:
        s = size(counts(k))
        return all(s[key] <= v for key, v in target.items())

    def share(k) -> float:
        """size(K) / size(all units) in the ``measure``."""
        s = size(counts(k))
        return sum(s[key] / full[key] for key in keys) / len(keys)

    def utility(value: float, k) -> float:
        return value - (lam or 0.0) * share(k)

    def without(layer: str, j: int) -> dict[str, list[int]]:
        return {**keep, layer: [i for i in keep[layer] if i != j]}

    def score(layer: str, j: int) -> tuple[float, float]:
        """(score, log-likelihood) of removing unit j of layer from the current keep-set:
        the utility gained, or with a budget the log-likelihood lost per size saved (negated)."""
        trial = without(layer, j)
        value = loglik(trial)
        saved = share(keep) - share(trial)
        gain = value - ll
        return (gain / max(saved, 1e-12) if target else gain + lam * saved), value

    ll = loglik(keep)
    decision = Decision(keep=keep, utility=utility(ll, keep), loglik=ll, size=size(counts(keep)), evaluations=1)
    # Lazy greedy: scores computed once, then only the best stale score is refreshed; it is taken
    # when it stays ahead of every other (stale) score.
    heap = []
    for layer, d in widths.items():
        for j in range(d):
            heap.append((-score(layer, j)[0], layer, j))
    decision.evaluations += len(heap)
    heapq.heapify(heap)
    while heap and not (target and fits(keep)):
        _, layer, j = heapq.heappop(heap)
        if len(keep[layer]) <= 1:
            continue
        fresh, value = score(layer, j)
        decision.evaluations += 1
        if heap and fresh < -heap[0][0]:
            heapq.heappush(heap, (-fresh, layer, j))
            continue
        if not target and fresh <= 0:
            break
        keep, ll = without(layer, j), value
        decision.steps.append({"removed": [layer, j], "loglik": ll, "utility": utility(ll, keep),
                               **size(counts(keep))})
    if target and not fits(keep):
        raise ValueError(f"target {dict(target)} cannot be met: one unit per layer still needs {size(counts(keep))}")
    if target:  # the last removals may overshoot the budget: add back what still fits, best first
        while True:
            back = []
            for layer, d in widths.items():
                for j in set(range(d)) - set(keep[layer]):
                    trial = {**keep, layer: sorted([*keep[layer], j])}
                    if fits(trial):
                        back.append((loglik(trial), layer, j, trial))
            decision.evaluations += len(back)
            if not back:
                break
            value, layer, j, trial = max(back, key=lambda b: (b[0], b[1], -b[2]))
            keep, ll = trial, value
            decision.steps.append({"added": [layer, j], "loglik": ll, "utility": utility(ll, keep),
                                   **size(counts(keep))})
    decision.keep, decision.loglik, decision.utility = keep, ll, utility(ll, keep)
    decision.size = size(counts(keep))
    return decision


def elimination_order(loglik: Callable[[Mapping[str, Sequence[int]]], float],
                      widths: Mapping[str, int]) -> tuple[dict[str, list[int]], int]:
    """Greedy backward elimination in each layer alone, the other layers whole: the unit whose
    removal leaves the highest mean log-likelihood ``loglik(keep)`` goes first, then the best of
    what is left, until one unit remains, which ends the order. Evaluated lazily as
    ``decision_keep`` is (a removal's stale log-likelihood, from a larger keep-set, is refreshed
    only when it is the best): the first step is exact, and the later ones are plain greedy's
    where a removal never makes another one cheaper. Returns ``({layer: unit indices, first
    removed first}, number of loglik evaluations)``."""
    whole = {layer: list(range(d)) for layer, d in widths.items()}
    orders, evaluations = {}, 0
    for layer, d in widths.items():
        kept = list(range(d))

        def after_removing(j: int) -> float:
            return loglik({**whole, layer: [i for i in kept if i != j]})

        heap = [(-after_removing(j), j) for j in range(d)] if d > 1 else []
        evaluations += len(heap)
        heapq.heapify(heap)
        order = []
        while len(kept) > 1:
            _, j = heapq.heappop(heap)
            fresh = after_removing(j)
            evaluations += 1
            if heap and fresh < -heap[0][0]:
                heapq.heappush(heap, (-fresh, j))
                continue
            kept.remove(j)
            order.append(j)
        orders[layer] = order + kept
    return orders, evaluations


def decision_cutoff(
    network: nn.Module,
    points: Sequence[SwitchPoint],
    x: torch.Tensor,
    y: torch.Tensor,
    input_shape: Sequence[int],
    *,
    lam: float | None = None,
    target: Mapping[str, int] | None = None,
    measure: str = "macs",
    draws: Sequence[Mapping[str, torch.Tensor]] = (),
) -> Decision:
    """``decision_keep`` on ``network`` (the network to prune, e.g. ``SwitchFit.fitted_network()``)
    and its switch ``points``, with the log-likelihood of the examples ``(x, y)`` and the size
    measured on physically pruned copies. ``network`` is not changed."""
    with evaluating(network):
        switched = SwitchedNetwork(network, points)
        return decision_keep(loglik_function(switched, points, x, y, draws), {p.name: p.width for p in points},
                             size_function(network, input_shape, points), lam=lam, target=target, measure=measure)
