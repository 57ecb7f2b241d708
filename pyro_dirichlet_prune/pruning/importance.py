"""The switch posterior as a Torch-Pruning importance: Torch-Pruning's own pruners, driven by
Dirichlet pruning's scores.

``PosteriorImportance(posterior, points)`` scores the output units of every switched layer l
with D_l units by one of

    score="mean":        D_l · E_q[s_lj]                (= D_l · phi_lj / phi_l0 for q = Dir(phi_l))
    score="prob_below":  1 - P_q(D_l · s_lj < tau)      (= P_q(D_l · s_lj >= tau))

Both put the layers on one scale, so that a global ranking across layers is meaningful: a unit
with the uniform share 1/D_l of its layer's switch mass scores 1 by the mean (a layer's scores
sum to D_l), and the probability is that of carrying at least a fraction tau of the uniform
share. Higher is more important, as Torch-Pruning expects.

Called on a Torch-Pruning group, it returns the scores of the group's root units, in the order
of the root's indices; for a group in which no switched layer's output units are pruned it
returns None, which Torch-Pruning's ``BasePruner`` (``MetaPruner``) takes as "leave this group
alone" (1.6: ``if imp is None: continue``), so such a group is neither ranked nor pruned.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch_pruning as tp
from torch import nn

from ..inference.posterior import SwitchPosterior
from ..models.points import SwitchPoint
from .cutoff import TAU

SCORES = ("mean", "prob_below")

_OUT_CHANNEL_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)


def posterior_scores(posterior: SwitchPosterior, score: str = "mean", tau: float = TAU) -> dict[str, torch.Tensor]:
    """Per layer, the float64 score of every unit (module docstring): ``D_l · E_q[s_lj]`` for
    ``score="mean"``, ``1 - P(D_l · s_lj < tau)`` for ``score="prob_below"``."""
    if not isinstance(posterior, SwitchPosterior):
        raise TypeError(f"posterior must be a SwitchPosterior (posterior_of(model, guide)), got {type(posterior).__name__}")
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise TypeError(f"tau must be a number, got {tau!r}")
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be positive and finite, got {tau}")
    if score == "mean":
        return {layer: m.detach().double() * m.numel() for layer, m in posterior.means.items()}
    return {layer: 1.0 - p.double() for layer, p in posterior.prob_below(float(tau)).items()}


class PosteriorImportance(tp.importance.Importance):
    """Torch-Pruning importance from a fitted switch posterior (module docstring for the scores).

    Args:
        posterior: the ``SwitchPosterior`` of the fitted guide (``posterior_of(model, guide)``).
        points: the switch points whose units the posterior scores (``model.points``); their
            modules must be the layers of the network that the pruner prunes.
        score: ``"mean"`` (D_l · E_q[s_lj]) or ``"prob_below"`` (1 - P(D_l · s_lj < tau)).
        tau: the fraction of the uniform share for ``score="prob_below"``.

    A group's score for a root unit is that of the switched layer whose output units the group
    prunes (the mean over them where several are coupled, as in a residual sum). The posterior
    indexes the units of the layers as they were when it was fitted, so a layer must still have
    its D_l units when it is scored: prune in one step (``iterative_steps=1``, the default).
    Ties (as 1 - P can have, at 0 or 1) are pruned together by a global ranking.

    Raises ``TypeError`` / ``ValueError`` naming the argument for a wrong posterior, points,
    score or tau, and ``ValueError`` for a group whose switched layer has lost units since.
    """

    def __init__(self, posterior: SwitchPosterior, points: Sequence[SwitchPoint], score: str = "mean",
                 tau: float = TAU) -> None:
        scores = posterior_scores(posterior, score, tau)
        if isinstance(points, (str, bytes)) or not isinstance(points, Sequence):
            raise TypeError(f"points must be a sequence of SwitchPoint (model.points), got {type(points).__name__}")
        if not points:
            raise ValueError("points must name at least one switch point")
        self.score, self.tau = score, float(tau)
        self._layers: dict[nn.Module, tuple[str, torch.Tensor]] = {}
        for p in points:
            if not isinstance(p, SwitchPoint):
                raise TypeError(f"points must be SwitchPoint objects (model.points), got {type(p).__name__}")
            if p.name not in scores:
                raise ValueError(f"points: the posterior has no layer {p.name!r} (it has {', '.join(scores)})")
            if p.width != scores[p.name].numel():
                raise ValueError(f"points: layer {p.name} has {p.width} units but its posterior {scores[p.name].numel()}")
            if p.module in self._layers:
                raise ValueError(f"points: layers {self._layers[p.module][0]} and {p.name} share one module")
            self._layers[p.module] = (p.name, scores[p.name])

    @property
    def scores(self) -> dict[str, torch.Tensor]:
        """``{layer: scores of its units}``, float64, in unit order."""
        return {name: s.clone() for name, s in self._layers.values()}

    def _switched(self, group) -> list[tuple[str, torch.Tensor, list, list]]:
        """``(layer, scores, idxs, root_idxs)`` of the group's items that prune a switched layer's outputs."""
        found = []
        for i, item in enumerate(group):
            dep, idxs = item
            module = dep.target.module
            if module not in self._layers or dep.handler not in _OUT_CHANNEL_FNS:
                continue
            name, scores = self._layers[module]
            width = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
            if width != scores.numel():
                raise ValueError(f"layer {name} has {width} units but its posterior scores {scores.numel()}: the "
                                 f"posterior indexes the units it was fitted on, so prune in one step "
                                 f"(iterative_steps=1) with an importance built before pruning")
            root_idxs = getattr(item, "root_idxs", None)
            if root_idxs is None:
                if i != 0:
                    continue  # a coupled layer whose indices cannot be mapped onto the root's
                root_idxs = idxs
            found.append((name, scores, list(idxs), list(root_idxs)))
        return found

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        """The scores of the group's root units (``group[0].idxs``, in that order), or None for a
        group that prunes no switched layer's output units."""
        switched = self._switched(group)
        if not switched:
            return None
        root = [int(r) for r in group[0].idxs]
        position = {r: k for k, r in enumerate(root)}
        total = torch.zeros(len(root), dtype=torch.float64)
        count = torch.zeros(len(root), dtype=torch.float64)
        for _, scores, idxs, root_idxs in switched:
            for idx, r in zip(idxs, root_idxs):
                if r is not None and int(r) in position:
                    total[position[int(r)]] += scores[int(idx)]
                    count[position[int(r)]] += 1
        if bool((count == 0).any()):
            missing = [root[k] for k in (count == 0).nonzero().view(-1).tolist()]
            raise ValueError(f"layer(s) {', '.join(s[0] for s in switched)} score only part of the group rooted at "
                             f"{type(group[0].dep.target.module).__name__}: no score for its units {missing}")
        return total / count
