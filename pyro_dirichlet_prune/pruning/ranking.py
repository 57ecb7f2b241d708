"""Every way to score units behind one interface: ``Ranking`` objects and their registry.

A ranking is called as ::

    scores = ranking(net, points, train, seed=0)    # {layer: 1-D float64 tensor of length D_l}

where ``points`` are the switch points of ``net`` (None: the ones it declares, or discovery
finds on inputs shaped like ``train``'s) and ``train`` is the training split (needed by the
rankings that look at data). A higher score means a more important unit, so ``keep_top`` keeps
the same units whichever ranking produced the scores. ``net`` is never changed. After a call,
``ranking.details`` says how the scores were obtained (e.g. the switch settings of a fit).

The registered rankings (``RANKINGS``; ``get_ranking(name, **options)`` builds one):

* ``posterior-mean``: E_q[s_lj] = phi_lj / phi_l0 of the switch posterior q(s_l) = Dir(phi_l)
  fitted with the ``switch`` settings (a Monte-Carlo mean for an autoguide);
* ``dirichlet`` / ``dirichlet-mean``: the same with the guide set to the Dirichlet guide or to
  its mean variant (``MeanSwitchELBO``), whatever ``switch`` names;
* ``dirichlet-weights``: the posterior means of the model whose weights learn with the switches
  (Dirichlet guide; unless ``switch`` sets a ``weight_scale``, ``LEARNED_WEIGHTS``: sigma 0.05,
  ``dim`` scale, ``joint`` schedule, the settings of docs/learned-weights.md). Only the ranking
  comes from that model: the learned weights are not returned, so a search prunes the pre-trained
  network with it like with every other ranking;
* ``prob-below``: 1 - P_q(D_l · s_lj < tau) = P_q(D_l · s_lj >= tau), under the ``switch``
  settings' guide;
* ``l1`` / ``l2``: ||W_j||_1 / ||W_j||_2 of unit j's incoming weights (bias excluded);
* ``fisher``: Delta_j = 1/(2N) sum_n (sum_p a_njp g_njp)^2 (Theis et al. 2018);
* ``greedy``: loss-based greedy elimination, layer by layer: the step at which removing units
  one at a time, the least log-likelihood lost first, takes unit j (``baselines.greedy_scores``);
* ``random``: Uniform[0, 1) scores from a generator seeded with ``seed``.

The switch rankings fit q(s) on ``train`` with ``seed`` (``inference.svi.fit_switches``) unless
they were built with ``fitted=`` a posterior already fitted with the same guide, which is then
used as it is (``run_prune`` fits once and ranks with that fit).
"""
from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..data import Split
from ..errors import NumericalError
from ..inference.builders import GuideBuilder, guide_name
from ..inference.posterior import SwitchPosterior
from ..inference.svi import SwitchConfig, SwitchFit, fit_switches, switch_posterior
from ..models.switch_points import SwitchPoint, rebind, switch_points
from ..models.switched import SwitchedNetwork
from .baselines import (FISHER_BATCH_SIZE, FISHER_BATCHES, check_scores, fisher_scores, greedy_scores, random_scores,
                        weight_norm_scores)
from .cutoff import TAU
from .decision import DEFAULT_EXAMPLES

Scores = dict[str, torch.Tensor]
DEFAULT_TAU = TAU


def _points(net: nn.Module, points: Sequence[SwitchPoint] | None, train: Split | None) -> list[SwitchPoint]:
    """``points`` as a list, or the network's declared (or discovered) switch points."""
    if points is not None:
        return list(points)
    shape = tuple(train.x.shape[1:]) if train is not None and len(train) else None
    return switch_points(net, shape)


class Ranking(ABC):
    """A way to score the units of a network's switched layers (module docstring).

    Subclasses implement ``score``; ``__call__`` checks the arguments and that every layer gets
    a finite 1-D float64 score per unit (``NumericalError`` otherwise); wrong arguments raise
    ``TypeError``/``ValueError`` naming the argument."""

    name: str = ""

    def __init__(self) -> None:
        self.details: dict[str, Any] = {}

    def __call__(self, net: nn.Module, points: Sequence[SwitchPoint] | None = None, train: Split | None = None,
                 *, seed: int = 0) -> Scores:
        """``{layer: score of every unit}`` of ``net``'s switch ``points``; higher = more important."""
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if train is not None and not isinstance(train, Split):
            raise TypeError(f"train must be a data.Split, got {type(train).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        pts = _points(net, points, train)
        self.details = {}
        scores = {k: v.detach().double().cpu() for k, v in self.score(net, pts, train, seed).items()}
        try:
            check_scores(scores, {p.name: p.width for p in pts})
        except ValueError as exc:
            raise NumericalError(f"the {self.name} ranking: {exc}") from None
        return scores

    @abstractmethod
    def score(self, net: nn.Module, points: list[SwitchPoint], train: Split | None, seed: int) -> Scores:
        """The scores of ``__call__``, arguments already checked."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _need_train(train: Split | None, name: str) -> Split:
    if train is None:
        raise ValueError(f"train: the {name} ranking needs the training split")
    if len(train) == 0:
        raise ValueError(f"train: the {name} ranking needs training examples, the split is empty")
    return train


class WeightNorm(Ranking):
    """score_j = ||W_j||_p over unit j's incoming weights, bias excluded (Li et al. 2017 for p=1)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if p not in (1, 2):
            raise ValueError(f"p must be 1 or 2, got {p!r}")
        self.p = p
        self.name = f"l{int(p)}"

    def score(self, net, points, train, seed):
        return weight_norm_scores(net, self.p, points)


class Fisher(Ranking):
    """Fisher pruning: Delta_j = 1/(2N) · sum_n (sum_p a_njp · dL_n/da_njp)^2 over N examples of
    ``batches`` minibatches of ``batch_size`` drawn with ``seed`` (``baselines.fisher_scores``)."""

    name = "fisher"

    def __init__(self, batches: int = FISHER_BATCHES, batch_size: int = FISHER_BATCH_SIZE) -> None:
        super().__init__()
        for key, value in (("fisher_batches", batches), ("fisher_batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        self.batches, self.batch_size = batches, batch_size

    def score(self, net, points, train, seed):
        train = _need_train(train, self.name)
        self.details = {"fisher_examples": min(len(train), self.batches * self.batch_size)}
        return fisher_scores(net, train, self.batches, self.batch_size, seed, points=points)


class Greedy(Ranking):
    """Loss-based greedy elimination, layer by layer, on the mean log-likelihood of ``examples``
    training examples drawn with ``seed``: score_j = the step at which unit j goes (0 first;
    ``baselines.greedy_scores``). No posterior enters: it is the baseline that the decision
    cut-off of a frozen network amounts to."""

    name = "greedy"

    def __init__(self, examples: int = DEFAULT_EXAMPLES) -> None:
        super().__init__()
        if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
            raise ValueError(f"greedy_examples must be a positive integer, got {examples!r}")
        self.examples = examples

    def score(self, net, points, train, seed):
        train = _need_train(train, self.name)
        scores, evaluations = greedy_scores(net, train, self.examples, seed, points=points)
        self.details = {"greedy_examples": min(len(train), self.examples), "evaluations": evaluations}
        return scores


class Random(Ranking):
    """score_j ~ Uniform[0, 1), one generator seeded with ``seed``, layer by layer."""

    name = "random"

    def score(self, net, points, train, seed):
        return random_scores(net, seed, points)


@dataclass(frozen=True)
class FittedSwitches:
    """A switch posterior already fitted: the ``config`` it was fitted with, E_q[s_l] per layer
    (``means``) and, for ``prob-below``, the ``posterior``."""

    config: SwitchConfig
    means: Mapping[str, torch.Tensor]
    posterior: SwitchPosterior | None = None

    @classmethod
    def of(cls, fit: SwitchFit, config: SwitchConfig, posterior: SwitchPosterior | None = None) -> "FittedSwitches":
        """From a ``SwitchFit``: its ``posterior_means()`` (phi_l / phi_l0 for a Dirichlet guide)."""
        return cls(config, fit.posterior_means(), posterior)


class SwitchRanking(Ranking):
    """A ranking read from a switch posterior, fitted with ``switch`` (its guide replaced by
    ``guide`` when one is given, its seed by the call's) or given already ``fitted``."""

    needs_posterior = False

    def __init__(self, switch: SwitchConfig | None = None, fitted: FittedSwitches | None = None,
                 guide: str | GuideBuilder | None = None) -> None:
        super().__init__()
        if switch is not None and not isinstance(switch, SwitchConfig):
            raise TypeError(f"switch must be a SwitchConfig, got {type(switch).__name__}")
        if fitted is not None and not isinstance(fitted, FittedSwitches):
            raise TypeError(f"fitted must be a FittedSwitches, got {type(fitted).__name__}")
        switch = switch or (fitted.config if fitted is not None else SwitchConfig())
        self.switch = dataclasses.replace(switch, guide=guide) if guide is not None else switch
        self.switch.validate()
        matches = fitted is not None and guide_name(fitted.config.guide) == guide_name(self.switch.guide)
        if matches and self.needs_posterior and fitted.posterior is None:
            raise ValueError(f"fitted: the {self.name} ranking needs the fitted posterior (FittedSwitches.posterior)")
        self.fitted = fitted if matches else None

    def posterior(self, net: nn.Module, points: list[SwitchPoint], train: Split | None, seed: int) -> FittedSwitches:
        """The fitted posterior given, else q(s) fitted now to a copy of ``net`` on ``train``."""
        if self.fitted is not None:
            self.details = {"switch_config": dataclasses.asdict(self.fitted.config), "fitted_before": True}
            return self.fitted
        cfg = dataclasses.replace(self.switch, seed=seed)
        work = copy.deepcopy(net)
        switched = SwitchedNetwork(work, rebind(points, net, work))
        fit = fit_switches(switched, _need_train(train, self.name), cfg)
        post = switch_posterior(fit, cfg, train, elbo_particles=0) if self.needs_posterior else None
        self.details = {"switch_config": dataclasses.asdict(cfg), "steps": len(fit.losses),
                        "final_loss": float(np.mean(fit.losses[-20:])) if fit.losses else None}
        return FittedSwitches.of(fit, cfg, post)


class PosteriorMean(SwitchRanking):
    """score_lj = E_q[s_lj] (= phi_lj / phi_l0 for q(s_l) = Dir(phi_l))."""

    name = "posterior-mean"

    def score(self, net, points, train, seed):
        return dict(self.posterior(net, points, train, seed).means)


class ProbBelow(SwitchRanking):
    """score_lj = 1 - P_q(D_l · s_lj < tau): the posterior probability that unit j carries at
    least a fraction ``tau`` of its uniform share 1/D_l of the layer's switch mass."""

    name = "prob-below"
    needs_posterior = True

    def __init__(self, switch: SwitchConfig | None = None, fitted: FittedSwitches | None = None,
                 tau: float = DEFAULT_TAU) -> None:
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau < float("inf"):
            raise ValueError(f"tau must be a positive number, got {tau!r}")
        self.tau = float(tau)
        super().__init__(switch, fitted)

    def score(self, net, points, train, seed):
        post = self.posterior(net, points, train, seed).posterior
        return {k: 1.0 - p.double() for k, p in post.prob_below(self.tau).items()}


OPTIONS = ("switch", "fitted", "tau", "fisher_batches", "fisher_batch_size", "greedy_examples")
"""The options ``get_ranking`` takes. Every ranking accepts them all and uses those it needs, so
that one call site can build any ranking by name: ``switch`` (a ``SwitchConfig``) and ``fitted``
(a ``FittedSwitches``) for the switch rankings, ``tau`` for ``prob-below``, ``fisher_batches``
and ``fisher_batch_size`` for ``fisher``, ``greedy_examples`` for ``greedy``."""


LEARNED_WEIGHTS = {"weight_scale": 0.05, "scale": "dim", "schedule": "joint"}
"""The switch settings of ``dirichlet-weights`` where the ``switch`` given learns no weights."""


def _learned_weights(switch: SwitchConfig | None = None, fitted: FittedSwitches | None = None, **_: Any) -> Ranking:
    switch = switch or SwitchConfig()
    if switch.weight_scale is None:
        switch = dataclasses.replace(switch, **LEARNED_WEIGHTS)
    if fitted is not None and fitted.config.weight_scale is None:
        fitted = None  # a posterior of frozen weights is not this model's
    ranking = PosteriorMean(switch, fitted, "dirichlet")
    ranking.name = "dirichlet-weights"
    return ranking


def _posterior_mean(guide: str | None) -> Callable[..., Ranking]:
    def build(switch=None, fitted=None, **_: Any) -> Ranking:
        ranking = PosteriorMean(switch, fitted, guide)
        ranking.name = guide or PosteriorMean.name
        return ranking
    return build


RANKINGS: dict[str, Callable[..., Ranking]] = {
    "posterior-mean": _posterior_mean(None),
    "prob-below": lambda switch=None, fitted=None, tau=DEFAULT_TAU, **_: ProbBelow(switch, fitted, tau),
    "dirichlet": _posterior_mean("dirichlet"),
    "dirichlet-mean": _posterior_mean("dirichlet-mean"),
    "dirichlet-weights": _learned_weights,
    "l1": lambda **_: WeightNorm(1),
    "l2": lambda **_: WeightNorm(2),
    "fisher": lambda fisher_batches=FISHER_BATCHES, fisher_batch_size=FISHER_BATCH_SIZE, **_: Fisher(
        fisher_batches, fisher_batch_size),
    "greedy": lambda greedy_examples=DEFAULT_EXAMPLES, **_: Greedy(greedy_examples),
    "random": lambda **_: Random(),
}
"""Ranking name → factory taking the ``OPTIONS`` as keywords (module docstring)."""

DEFAULT_RANKING = "posterior-mean"


def get_ranking(name: str, **options: Any) -> Ranking:
    """The ranking registered as ``name`` (``RANKINGS``), built with ``options`` (``OPTIONS``;
    each ranking uses those it needs). Raises ``ValueError`` naming ``name`` for an unknown
    ranking and ``TypeError`` for an unknown option."""
    if not isinstance(name, str) or name not in RANKINGS:
        raise ValueError(f"unknown ranking name {name!r}; choose one of {', '.join(RANKINGS)}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"unknown ranking option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    return RANKINGS[name](**options)
