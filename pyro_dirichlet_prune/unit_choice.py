"""The cut-off step of a ``prune`` run: which units of every layer stay (``choose_units``), by
the cut-off that ``resolve_cutoff`` names, with the report's description of it."""
from __future__ import annotations

import torch

from .data import DataBundle
from .errors import UserError
from .inference.posterior import SwitchPosterior
from .inference.svi import SwitchFit
from .models.switch_points import SwitchPoint
from .prune_config import CUTOFFS, PruneConfig
from .pruning.cutoff import parse_arch, rate_widths
from .pruning.cutoffs import ArchCutoff, BudgetCutoff, Cutoff, DecisionCutoff, RateCutoff, UncertaintyCutoff
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


def kept_counts(cfg: PruneConfig, cutoff: str, widths: dict[str, int]) -> dict[str, int]:
    """How many units every layer keeps under the ``arch`` or ``rate`` cut-off."""
    return parse_arch(cfg.arch, widths) if cutoff == "arch" else rate_widths(cfg.rate, widths)


def cutoff_of(cfg: PruneConfig, kind: str, fitted: FittedSwitches) -> Cutoff:
    """The ``Cutoff`` object of a configuration: ``cfg.cutoff`` itself when it is one, else the
    one its options name (``resolve_cutoff``); the ``arch``/``rate`` cut-offs rank with
    ``cfg.ranking`` (default the posterior means of the fit), reading the fitted posterior."""
    if isinstance(cfg.cutoff, Cutoff):
        return cfg.cutoff
    if kind == "uncertainty":
        return UncertaintyCutoff(cfg.tau, cfg.delta)
    if kind == "budget":
        return BudgetCutoff(cfg.target_macs, cfg.target_params, cfg.tau)
    if kind == "decision":
        return DecisionCutoff(cfg.lam, budget_targets(cfg) or None, cfg.decision_measure, cfg.decision_examples,
                              cfg.decision_draws)
    ranking = get_ranking(cfg.ranking or DEFAULT_RANKING, switch=fitted.config, fitted=fitted, tau=cfg.tau)
    return ArchCutoff(cfg.arch, ranking) if kind == "arch" else RateCutoff(cfg.rate, ranking)


def choose_units(cfg: PruneConfig, kind: str, net: torch.nn.Module, points: list[SwitchPoint], data: DataBundle,
                 fitted: FittedSwitches, posterior: SwitchPosterior, fit: SwitchFit) -> tuple[dict[str, list[int]], dict]:
    """The units the cut-off keeps in ``net`` (the network to prune), and the report's
    description of the cut-off (``Cutoff.describe``)."""
    cutoff = cutoff_of(cfg, kind, fitted)
    keep = cutoff(posterior, net, data.input_shape, points=points, train=data.train, seed=cfg.seed, fit=fit)
    described = cutoff.describe()
    if kind in ("arch", "rate") and not isinstance(cfg.cutoff, Cutoff) and cfg.ranking is None:
        described.pop("ranking", None)  # the default ranking, as the report has always said nothing of it
    return keep, described
