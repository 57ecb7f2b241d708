"""The cut-off step of a ``prune`` run: the ``Cutoff`` its options name, settled before any work
(``cutoff_of``, whose options ``resolve_cutoff`` checks), and which units of every layer it keeps
after each fit (``CutoffStep.choose``), with the report's description of it."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .data import DataBundle
from .errors import UserError
from .inference.posterior import SwitchPosterior
from .inference.svi import SwitchFit
from .models.switch_points import SwitchPoint
from .prune_config import CUTOFFS, TAU, PruneConfig
from .pruning.cutoffs import (ArchCutoff, BudgetCutoff, CountCutoff, Cutoff, DecisionCutoff, RateCutoff,
                              UncertaintyCutoff)
from .pruning.decision import MEASURES
from .pruning.ranking import DEFAULT_RANKING, RANKINGS, FittedSwitches, get_ranking



def resolve_cutoff(cfg: PruneConfig) -> str:
    """The cut-off a configuration asks for: the one named, or the one its options imply
    (``arch``, ``rate``, ``target_*`` → budget), else ``uncertainty``; conflicts are errors. A
    ``Cutoff`` object given as ``cfg.cutoff`` carries its own settings: its ``kind``."""
    if isinstance(cfg.cutoff, Cutoff):
        return _object_cutoff(cfg)
    implied = [name for name, given in (("arch", cfg.arch is not None), ("rate", cfg.rate is not None),
                                        ("budget", cfg.target_macs is not None or cfg.target_params is not None),
                                        ("decision", cfg.lam is not None)) if given]
    if cfg.cutoff == "decision" and implied == ["budget"]:  # the decision cut-off under a budget
        implied = ["decision"]
    if len(implied) > 1:
        raise UserError(f"give one cut-off, not {' and '.join(implied)} (arch, rate, target_macs/target_params, lam)")
    if cfg.cutoff is not None and not isinstance(cfg.cutoff, str):
        raise UserError(f"cutoff must be a cut-off name ({', '.join(CUTOFFS)}) or a Cutoff, got "
                        f"{type(cfg.cutoff).__name__}")
    if cfg.cutoff is not None and cfg.cutoff not in CUTOFFS:
        raise UserError(f"unknown cut-off {cfg.cutoff!r}; choose one of {', '.join(CUTOFFS)}")
    kind = cfg.cutoff or (implied[0] if implied else "uncertainty")
    if implied and implied[0] != kind:
        raise UserError(f"cutoff='{kind}' does not take the options of the {implied[0]} cut-off")
    if kind in ("arch", "rate", "budget") and not implied:
        need = {"arch": "arch=ARCH", "rate": "rate=RATE", "budget": "target_macs and/or target_params"}[kind]
        raise UserError(f"cutoff='{kind}' needs {need}")
    if not (cfg.tau > 0 and cfg.tau < float("inf")):
        raise UserError(f"tau must be a positive number, got {cfg.tau}")
    if cfg.lam is not None and not (cfg.lam >= 0 and cfg.lam < float("inf")):
        raise UserError(f"lam must be a non-negative number, got {cfg.lam}")
    if cfg.decision_measure not in MEASURES:
        raise UserError(f"decision_measure must be one of {', '.join(MEASURES)}, got {cfg.decision_measure!r}")
    if not (isinstance(cfg.rounds, int) and cfg.rounds >= 1):
        raise UserError(f"rounds must be a positive integer, got {cfg.rounds!r}")
    if cfg.rounds > 1 and kind in ("arch", "rate"):
        raise UserError(f"rounds={cfg.rounds} refits the smaller network until the cut-off removes nothing: it needs "
                        f"the uncertainty, budget or decision cut-off, not {kind}")
    if cfg.decision_examples < 1 or cfg.decision_draws < 0:
        raise UserError(f"decision_examples must be positive and decision_draws non-negative, got "
                        f"{cfg.decision_examples} and {cfg.decision_draws}")
    if not 0 < cfg.delta < 1:
        raise UserError(f"delta must be in (0, 1), got {cfg.delta}")
    for key in ("target_macs", "target_params"):
        value = getattr(cfg, key)
        if value is not None and not (isinstance(value, int) and value > 0):
            raise UserError(f"{key} must be a positive integer, got {value!r}")
    if cfg.ranking is not None:
        if cfg.ranking not in RANKINGS:
            raise UserError(f"unknown ranking {cfg.ranking!r}; choose one of {', '.join(RANKINGS)}")
        if kind not in ("arch", "rate"):
            raise UserError(f"ranking={cfg.ranking!r} chooses the units of the arch and rate cut-offs; the {kind} "
                            f"cut-off goes by P(D_l*s_lj < tau)")
    return kind


def _object_cutoff(cfg: PruneConfig) -> str:
    """The kind of a ``Cutoff`` object in ``cfg.cutoff``, which no other cut-off option may join."""
    given = [name for name, value in (("arch", cfg.arch), ("rate", cfg.rate), ("target_macs", cfg.target_macs),
                                      ("target_params", cfg.target_params), ("lam", cfg.lam),
                                      ("ranking", cfg.ranking)) if value is not None]
    if given:
        raise UserError(f"cutoff: a Cutoff object carries its own settings; do not give {', '.join(given)} too")
    if not isinstance(cfg.cutoff.kind, str) or not cfg.cutoff.kind:
        raise UserError(f"cutoff: {type(cfg.cutoff).__name__} needs a non-empty kind")
    if not (isinstance(cfg.rounds, int) and cfg.rounds >= 1):
        raise UserError(f"rounds must be a positive integer, got {cfg.rounds!r}")
    return cfg.cutoff.kind


def budget_targets(cfg: PruneConfig) -> dict[str, int]:
    """The size targets that were given: ``{"macs": M, "params": P}``."""
    return {k: v for k, v in (("macs", cfg.target_macs), ("params", cfg.target_params)) if v is not None}


@dataclass
class CutoffStep:
    """The cut-off of a run, settled from its options before any work (``cutoff_of``): the
    ``Cutoff`` object, its ``kind``, ``tau`` (the threshold of the report's P(D_l·s_lj < tau)),
    and for an ``arch``/``rate`` cut-off named by options the ``ranking`` it reads from each fit
    (``choose``). A ``Cutoff`` object a user gave is called as it is."""

    cutoff: Cutoff
    kind: str
    tau: float = TAU
    ranking: str | None = None
    from_options: bool = True

    def counts(self, widths: dict[str, int]) -> dict[str, int] | None:
        """Units kept per layer by an ``arch``/``rate`` cut-off named by options (None otherwise)."""
        return self.cutoff.counts(widths) if self.from_options and isinstance(self.cutoff, CountCutoff) else None

    def targets(self) -> dict[str, int]:
        """The size budget of a ``budget``/``decision`` cut-off named by options (empty otherwise)."""
        return dict(getattr(self.cutoff, "target", None) or {}) if self.from_options else {}

    def choose(self, net: torch.nn.Module, points: list[SwitchPoint], data: DataBundle, fitted: FittedSwitches,
               posterior: SwitchPosterior, fit: SwitchFit, seed: int) -> tuple[dict[str, list[int]], dict]:
        """The units the cut-off keeps in ``net`` (the network to prune), and the report's
        description of the cut-off (``Cutoff.describe``). An ``arch``/``rate`` cut-off named by
        options ranks with its ranking (default the posterior means) built on this fit."""
        chooser = self.cutoff
        if self.from_options and isinstance(self.cutoff, CountCutoff):
            ranking = get_ranking(self.ranking or DEFAULT_RANKING, switch=fitted.config, fitted=fitted, tau=self.tau)
            chooser = copy.copy(self.cutoff)
            chooser.ranking = ranking
        keep = chooser(posterior, net, data.input_shape, points=points, train=data.train, seed=seed, fit=fit)
        return keep, (chooser.describe() if chooser is self.cutoff else self.cutoff.describe())


def cutoff_of(cfg: PruneConfig) -> CutoffStep:
    """The cut-off step of a configuration (``resolve_cutoff`` checks its options): ``cfg.cutoff``
    itself when it is a ``Cutoff``, else the object its options name."""
    kind = resolve_cutoff(cfg)
    if isinstance(cfg.cutoff, Cutoff):
        return CutoffStep(cfg.cutoff, kind, cfg.tau, from_options=False)
    try:
        if kind == "uncertainty":
            cutoff: Cutoff = UncertaintyCutoff(cfg.tau, cfg.delta)
        elif kind == "budget":
            cutoff = BudgetCutoff(cfg.target_macs, cfg.target_params, cfg.tau)
        elif kind == "decision":
            cutoff = DecisionCutoff(cfg.lam, budget_targets(cfg) or None, cfg.decision_measure, cfg.decision_examples,
                                    cfg.decision_draws)
        else:
            cutoff = ArchCutoff(cfg.arch, cfg.ranking) if kind == "arch" else RateCutoff(cfg.rate, cfg.ranking)
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None
    return CutoffStep(cutoff, kind, cfg.tau, cfg.ranking)
