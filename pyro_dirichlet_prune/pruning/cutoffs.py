"""Every cut-off behind one interface: ``Cutoff`` objects, one class each, called as ::

    keep = cutoff(posterior, net, input_shape, points=None, train=None, seed=0, fit=None)

which returns the units every switched layer keeps, ``{layer: sorted unit indices}``, ready for
``prune(net, keep, input_shape)``. ``posterior`` is the ``SwitchPosterior`` of a fit (its
``means`` and ``prob_below``); ``net`` the network to prune with its switch ``points`` (None: the
ones it declares, or discovery finds); ``train`` the training split, for the cut-offs that look
at data; ``fit`` the ``SwitchFit`` the posterior came from, for those that draw from it. After a
call, ``cutoff.details`` holds what the run's report says of it, and ``describe()`` the whole
description (its ``kind``, its settings and those details).

The shipped cut-offs (``CUTOFF_CLASSES``):

* ``UncertaintyCutoff(tau, delta)``: unit j of layer l goes when P(D_l · s_lj < tau) >= 1 - delta;
* ``BudgetCutoff(macs, params, tau)``: units go across layers in order of that probability until
  the network fits the budget (``pruning.budget``);
* ``ArchCutoff(arch, ranking)`` / ``RateCutoff(rate, ranking)``: that many units per layer, or
  that fraction of every layer removed, keeping the highest scores of a ``Ranking`` (default the
  posterior means);
* ``DecisionCutoff(lam | target, ...)``: greedy backward elimination on the log-likelihood of
  training examples minus ``lam`` times the size (``pruning.decision``): an expected utility over
  the posterior when the weights learned with the switches (``draws``), loss-based greedy
  elimination that reads no posterior on a frozen network (``details["reads_posterior"]``; the
  same search layer by layer is the ``greedy`` ranking).

A new cut-off is one subclass with a ``kind`` and a ``choose`` method (``examples/your_own_cutoff.py``).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..data import Split
from ..models.switch_points import SwitchPoint, point_widths, switch_points
from .budget import budget_keep, size_function
from .cutoff import DELTA, TAU, keep_top, parse_arch, rate_widths, removal_order, uncertainty_keep
from .decision import DEFAULT_EXAMPLES, DEFAULT_LAM, MEASURES, decision_cutoff, decision_examples
from .ranking import FittedSwitches, Ranking, get_ranking
from .surgery import check_keep

Keep = dict[str, list[int]]


class Cutoff(ABC):
    """A rule that says which units stay (module docstring). Subclasses set ``kind`` and implement
    ``choose``; ``settings()`` names their parameters for the report."""

    kind: str = ""

    def __init__(self) -> None:
        self.details: dict[str, Any] = {}

    def __call__(self, posterior, net: nn.Module, input_shape: Sequence[int], *,
                 points: Sequence[SwitchPoint] | None = None, train: Split | None = None, seed: int = 0,
                 fit=None) -> Keep:
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if train is not None and not isinstance(train, Split):
            raise TypeError(f"train must be a data.Split, got {type(train).__name__}")
        pts = list(points) if points is not None else switch_points(net, input_shape)
        self.details = {}
        keep = self.choose(posterior, net, tuple(input_shape), pts, train, seed, fit)
        check_keep(keep, point_widths(pts))
        return {layer: sorted(int(j) for j in units) for layer, units in keep.items()}

    @abstractmethod
    def choose(self, posterior, net: nn.Module, input_shape: tuple, points: list[SwitchPoint], train: Split | None,
               seed: int, fit) -> Mapping[str, Sequence[int]]:
        """The units kept, arguments already checked (``__call__``)."""

    def settings(self) -> dict[str, Any]:
        """The cut-off's parameters, as the report gives them."""
        return {}

    def describe(self) -> dict[str, Any]:
        """``{"kind", **settings(), **details}``: the report's ``cutoff`` entry."""
        return {"kind": self.kind, **self.settings(), **self.details}

    def __eq__(self, other: object) -> bool:  # equal settings: a resumed run's configuration compares equal
        return type(other) is type(self) and other.settings() == self.settings()

    def __hash__(self) -> int:
        return hash((type(self).__qualname__, repr(sorted(self.settings().items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < float("inf")):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


class UncertaintyCutoff(Cutoff):
    """Remove unit j of layer l when ``P(D_l · s_lj < tau) >= 1 - delta`` (``cutoff.uncertainty_keep``);
    a layer keeps at least its unit of highest posterior mean (``details["guarded_layers"]``)."""

    kind = "uncertainty"

    def __init__(self, tau: float = TAU, delta: float = DELTA) -> None:
        super().__init__()
        self.tau = _positive("tau", tau)
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta!r}")
        self.delta = float(delta)

    def settings(self) -> dict[str, Any]:
        return {"tau": self.tau, "delta": self.delta}

    def choose(self, posterior, net, input_shape, points, train, seed, fit) -> Keep:
        keep, guarded = uncertainty_keep(posterior.prob_below(self.tau), posterior.means, self.delta)
        self.details = {"guarded_layers": guarded}
        return keep


class BudgetCutoff(Cutoff):
    """Remove units across layers in order of ``P(D_l · s_lj < tau)`` (then of the relative mean)
    until the pruned network has at most ``macs`` MACs and/or ``params`` parameters (``budget_keep``:
    bisection on physically pruned copies)."""

    kind = "budget"

    def __init__(self, macs: int | None = None, params: int | None = None, tau: float = TAU) -> None:
        super().__init__()
        self.target = {k: v for k, v in (("macs", macs), ("params", params)) if v is not None}
        if not self.target:
            raise ValueError("macs, params: give a budget of MACs and/or of parameters")
        for key, value in self.target.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        self.tau = _positive("tau", tau)

    def settings(self) -> dict[str, Any]:
        return {"tau": self.tau, "target": dict(self.target)}

    def choose(self, posterior, net, input_shape, points, train, seed, fit) -> Keep:
        keep, _ = budget_keep(removal_order(posterior.prob_below(self.tau), posterior.means), point_widths(points),
                              size_function(net, input_shape, points), self.target)
        return keep


class CountCutoff(Cutoff):
    """Keep a number of units per layer, those of highest score by ``ranking`` (a ``Ranking``, a
    registered name, or None for the posterior means of the posterior given)."""

    def __init__(self, ranking: Ranking | str | None = None) -> None:
        super().__init__()
        if ranking is not None and not isinstance(ranking, (Ranking, str)):
            raise TypeError(f"ranking must be a Ranking or a ranking name, got {type(ranking).__name__}")
        self.ranking = ranking

    def settings(self) -> dict[str, Any]:
        """The ranking, when one was given (the default, the posterior means, goes unnamed)."""
        return {"ranking": _name(self.ranking)} if self.ranking is not None else {}

    @abstractmethod
    def counts(self, widths: dict[str, int]) -> dict[str, int]:
        """Units kept per layer."""

    def choose(self, posterior, net, input_shape, points, train, seed, fit) -> Keep:
        counts = self.counts(point_widths(points))
        if self.ranking is None:
            scores = {k: v for k, v in posterior.means.items()}
        else:
            ranking = self.ranking
            if isinstance(ranking, str):
                config = getattr(fit, "config", None)
                fitted = FittedSwitches(config, posterior.means, posterior) if config is not None else None
                ranking = get_ranking(ranking, **({"switch": config, "fitted": fitted} if fitted else {}))
            scores = ranking(net, points, train, seed=seed)
        return keep_top(scores, counts)


class ArchCutoff(CountCutoff):
    """Keep ``arch`` units per layer (``"6-8-40-20"``, layers in the network's order)."""

    kind = "arch"

    def __init__(self, arch: str, ranking: Ranking | str | None = None) -> None:
        super().__init__(ranking)
        if not isinstance(arch, str):
            raise TypeError(f"arch must be a string such as '6-8-40-20', got {type(arch).__name__}")
        self.arch = arch

    def settings(self) -> dict[str, Any]:
        return {"arch": self.arch, **super().settings()}

    def counts(self, widths: dict[str, int]) -> dict[str, int]:
        return parse_arch(self.arch, widths)


class RateCutoff(CountCutoff):
    """Remove a fraction ``rate`` of every layer: keep max(1, round(D_l · (1 - rate))) units."""

    kind = "rate"

    def __init__(self, rate: float, ranking: Ranking | str | None = None) -> None:
        super().__init__(ranking)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"rate must be in [0, 1), got {rate!r}")
        self.rate = rate

    def settings(self) -> dict[str, Any]:
        return {"rate": self.rate, **super().settings()}

    def counts(self, widths: dict[str, int]) -> dict[str, int]:
        return rate_widths(self.rate, widths)


def _name(ranking: Ranking | str) -> str:
    return ranking if isinstance(ranking, str) else ranking.name


class DecisionCutoff(Cutoff):
    """Greedy backward elimination that maximises the mean log-likelihood of ``examples`` training
    examples (drawn with the call's ``seed``) minus ``lam`` times the network's share of its size
    (``measure``), or, with a ``target`` budget, that removes the units losing the least
    log-likelihood per size saved until it fits (``pruning.decision``). With ``draws`` > 0 and a
    fit whose weights learned, the log-likelihood averages over that many posterior draws of the
    switches; on a frozen fit it is the plain network's (no posterior draw enters)."""

    kind = "decision"

    def __init__(self, lam: float | None = None, target: Mapping[str, int] | None = None,
                 measure: str = "macs+params", examples: int = DEFAULT_EXAMPLES, draws: int = 0) -> None:
        super().__init__()
        self.target = dict(target) if target else None
        self.lam = None if self.target else (DEFAULT_LAM if lam is None else float(lam))
        if self.lam is not None and not 0 <= self.lam < float("inf"):
            raise ValueError(f"lam must be a non-negative number, got {lam!r}")
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")
        if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
            raise ValueError(f"examples must be a positive integer, got {examples!r}")
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 0:
            raise ValueError(f"draws must be a non-negative integer, got {draws!r}")
        self.measure, self.examples, self.draws = measure, examples, draws

    def settings(self) -> dict[str, Any]:
        return {"lam": self.lam, "target": self.target, "measure": self.measure}

    def choose(self, posterior, net, input_shape, points, train, seed, fit) -> Keep:
        if train is None:
            raise ValueError("train: the decision cut-off needs the training split (its utility's examples)")
        x, y = decision_examples(train, self.examples, seed)
        draws = relative_draws(fit, self.draws, seed) if fit is not None else []
        decision = decision_cutoff(net, points, x, y, input_shape, lam=self.lam, target=self.target,
                                   measure=self.measure, draws=draws)
        self.details = {"method": (f"expected utility over {len(draws)} posterior draws of the switches, maximised "
                                   f"by greedy backward elimination" if draws else
                                   "loss-based greedy elimination: the log-likelihood of the network itself, no "
                                   "posterior read (frozen weights, or draws=0)"),
                        "reads_posterior": bool(draws),
                        "examples": len(y), "draws": len(draws), "utility": decision.utility,
                        "loglik": decision.loglik, "removals": sum("removed" in s for s in decision.steps),
                        "additions": sum("added" in s for s in decision.steps),
                        "evaluations": decision.evaluations, "path": decision.steps}
        return decision.keep


def relative_draws(fit, count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``count`` draws s ~ q of every layer's switch divided by its posterior mean: the
    multipliers that turn the network at the posterior mean (``fitted_network``) into the network
    at a draw; none for a fit without learned weights or without Dirichlet concentrations."""
    phis = fit.concentrations
    if count == 0 or not fit.learns_weights or not phis:
        return []
    out = []
    with torch.random.fork_rng():  # seeded, and the caller's generator left as it was
        torch.manual_seed(seed)
        for _ in range(count):
            out.append({layer: torch.distributions.Dirichlet(phi).sample() / (phi / phi.sum())
                        for layer, phi in phis.items()})
    return out


CUTOFF_CLASSES = {c.kind: c for c in (UncertaintyCutoff, BudgetCutoff, ArchCutoff, RateCutoff, DecisionCutoff)}
