"""Baseline unit-importance scores, through the same interface as the switch posterior means
(``pruning.ranking`` wraps each as a ``Ranking`` of its registry).

Every scorer returns ``{layer name: 1-D float64 tensor of length D_l}`` for the layers a network
declares in ``switch_points()``; a higher score means a more important unit, so ``keep_top``
ranks a baseline exactly as it ranks E_q[s_l].

* ``l1`` / ``l2``: the norm of each unit's incoming weights (Li et al. 2017 for ``l1``);
* ``fisher``: Fisher pruning (Theis et al. 2018), the loss increase predicted for removing a unit;
* ``greedy``: loss-based greedy elimination, layer by layer: the order in which removing units
  one at a time costs the least log-likelihood of training examples (``greedy_scores``);
* ``random``: seeded uniform scores (the ranking a method has to beat).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Split, batches
from ..errors import UserError
from ..models.common import evaluating
from ..models.switch_points import SwitchPoint, switch_points
from ..models.switched import SwitchedNetwork
from .decision import DEFAULT_EXAMPLES, decision_examples, elimination_order, loglik_function

BASELINES = ("l1", "l2", "fisher", "greedy", "random")
FISHER_BATCHES = 10
FISHER_BATCH_SIZE = 100


def weight_norm_scores(net: nn.Module, p: float, points: Sequence[SwitchPoint] | None = None) -> dict[str, torch.Tensor]:
    """score_j = || W_j ||_p, where W_j is unit j's row of ``point.module.weight`` flattened
    (all input channels × kernel taps of an output channel, or all inputs of a neuron).

    The bias is not included: it is not an incoming weight, and the filter-norm criterion of
    Li et al. (2017) ranks filters by their kernel weights alone. ``points``: the switch points
    of ``net`` (default: the ones it declares)."""
    return {
        point.name: point.module.weight.detach().flatten(1).double().norm(p=p, dim=1).cpu()
        for point in (switch_points(net) if points is None else points)
    }


def random_scores(net: nn.Module, seed: int, points: Sequence[SwitchPoint] | None = None) -> dict[str, torch.Tensor]:
    """score_j ~ Uniform[0, 1), independently per unit, from one generator seeded with ``seed``
    and drawn layer by layer in the order of ``points`` (default: the ones ``net`` declares)."""
    gen = torch.Generator().manual_seed(int(seed))
    return {p.name: torch.rand(p.width, generator=gen, dtype=torch.float64)
            for p in (switch_points(net) if points is None else points)}


@contextlib.contextmanager
def _probe(net: nn.Module, points: Sequence[SwitchPoint] | None = None) -> Iterator[SwitchedNetwork]:
    """A switched view of ``net`` in eval mode (its weights frozen inside ``scaled``); the net's
    mode is restored on exit."""
    with evaluating(net):
        yield SwitchedNetwork(net, points)


def fisher_scores(
    net: nn.Module,
    split: Split,
    num_batches: int = FISHER_BATCHES,
    batch_size: int = FISHER_BATCH_SIZE,
    seed: int = 0,
    points: Sequence[SwitchPoint] | None = None,
) -> dict[str, torch.Tensor]:
    """Fisher pruning (Theis et al. 2018):

        Delta_j = 1/(2N) · sum_n ( sum_p a_njp · g_njp )^2,   g_njp = d L_n / d a_njp,

    where a_nj. is unit j's output of ``point.hooked`` (where the switch sits) at positions p for
    example n, L_n is example n's cross-entropy and the N examples are ``num_batches`` minibatches
    of ``batch_size`` drawn without replacement from ``split`` with a generator seeded by ``seed``
    (fewer if the split is smaller).

    The inner sum is the gradient of L_n with respect to a multiplicative mask m_nj = 1 on unit j:
    one backward pass of sum_n L_n through per-example masks of shape (B, D_l) gives every term
    of a minibatch at once. The weights are neither changed nor given gradients. ``points``: the
    switch points of ``net`` (default: the ones it declares)."""
    if num_batches < 1 or batch_size < 1:
        raise UserError(f"fisher needs at least one batch of one example, got {num_batches} x {batch_size}")
    if len(split) == 0:
        raise UserError("fisher needs training examples, the split is empty")
    gen = torch.Generator().manual_seed(int(seed))
    with _probe(net, points) as switched:
        widths = switched.widths
        total = {name: torch.zeros(d, dtype=torch.float64) for name, d in widths.items()}
        count = 0
        for b, (x, y, _) in enumerate(batches(split, batch_size, shuffle=True, generator=gen)):
            if b >= num_batches:
                break
            masks = {name: torch.ones(x.shape[0], d, requires_grad=True) for name, d in widths.items()}
            with torch.enable_grad(), switched.scaled(masks):
                loss = F.cross_entropy(switched(x), y, reduction="sum")
                grads = torch.autograd.grad(loss, list(masks.values()), allow_unused=True)
            for name, g in zip(masks, grads):
                if g is not None:
                    total[name] += g.detach().double().pow(2).sum(0)
            count += x.shape[0]
    return {name: 0.5 * t / count for name, t in total.items()}


def greedy_scores(
    net: nn.Module,
    split: Split,
    examples: int = DEFAULT_EXAMPLES,
    seed: int = 0,
    points: Sequence[SwitchPoint] | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """Loss-based greedy elimination (no posterior enters): in each switched layer, the others
    whole, the unit whose removal lowers the mean log-likelihood of ``examples`` examples of
    ``split`` (drawn without replacement with ``seed``) the least goes first, then the next
    against the units left, down to one (``decision.elimination_order``). score_j is the step at
    which unit j goes: 0 for the first, D_l - 1 for the unit left, so ``keep_top`` keeps the
    units greedy elimination would keep. The same greedy search, run across layers against the
    size, is the decision cut-off of a frozen network (``pruning.decision``). Returns the scores
    and the number of forward passes over the examples."""
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        raise UserError(f"greedy needs a positive number of examples, got {examples!r}")
    if len(split) == 0:
        raise UserError("greedy needs training examples, the split is empty")
    x, y = decision_examples(split, examples, int(seed))
    with _probe(net, points) as switched:
        pts = switched.points
        orders, evaluations = elimination_order(loglik_function(switched, pts, x, y), switched.widths)
    scores = {}
    for name, order in orders.items():
        s = torch.empty(len(order), dtype=torch.float64)
        s[order] = torch.arange(len(order), dtype=torch.float64)
        scores[name] = s
    return scores, evaluations


def check_scores(scores: Mapping[str, torch.Tensor], widths: Mapping[str, int]) -> None:
    """Raise ``ValueError`` unless ``scores`` holds a finite 1-D score per unit of every layer."""
    for name, d in widths.items():
        s = scores.get(name)
        if s is None or s.dim() != 1 or s.numel() != d or not torch.isfinite(s).all():
            raise ValueError(f"scores of layer {name} must be {d} finite numbers")
