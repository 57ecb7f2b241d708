"""The cut-off step of a ``prune`` run: which units of every layer stay (``choose_units``), by
the cut-off that ``resolve_cutoff`` names, with the report's description of it."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .data import DataBundle
from .inference.svi import SwitchFit
from .models.switch_points import SwitchPoint, point_widths
from .pruning.budget import budget_keep, size_function
from .pruning.cutoff import keep_top, parse_arch, rate_widths, removal_order, uncertainty_keep
from .errors import UserError
from .pruning.decision import DEFAULT_LAM, MEASURES, decision_cutoff, decision_examples
from .pruning.ranking import DEFAULT_RANKING, RANKINGS, FittedSwitches, get_ranking

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import PruneConfig


CUTOFFS = ("uncertainty", "budget", "arch", "rate", "decision")
TAU = 0.5
DELTA = 0.05


def resolve_cutoff(cfg: "PruneConfig") -> str:
    """The cut-off a configuration asks for: the one named, or the one its options imply
    (``arch``, ``rate``, ``target_*`` → budget), else ``uncertainty``; conflicts are errors."""
    implied = [name for name, given in (("arch", cfg.arch is not None), ("rate", cfg.rate is not None),
                                        ("budget", cfg.target_macs is not None or cfg.target_params is not None),
                                        ("decision", cfg.lam is not None)) if given]
    if cfg.cutoff == "decision" and implied == ["budget"]:  # the decision cut-off under a budget
        implied = ["decision"]
    if len(implied) > 1:
        raise UserError(f"give one cut-off, not {' and '.join(implied)} (arch, rate, target_macs/target_params, lam)")
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


def budget_targets(cfg: "PruneConfig") -> dict[str, int]:
    """The size targets that were given: ``{"macs": M, "params": P}``."""
    return {k: v for k, v in (("macs", cfg.target_macs), ("params", cfg.target_params)) if v is not None}


def kept_counts(cfg: "PruneConfig", cutoff: str, widths: dict[str, int]) -> dict[str, int]:
    """How many units every layer keeps under the ``arch`` or ``rate`` cut-off."""
    return parse_arch(cfg.arch, widths) if cutoff == "arch" else rate_widths(cfg.rate, widths)


def relative_draws(fit: SwitchFit, count: int, seed: int) -> list[dict[str, torch.Tensor]]:
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


def choose_units(cfg: "PruneConfig", cutoff: str, net: torch.nn.Module, points: list[SwitchPoint], data: DataBundle,
                 fitted: FittedSwitches, prob_below: dict, fit: SwitchFit) -> tuple[dict[str, list[int]], dict]:
    """The units the cut-off keeps in ``net`` (the network to prune), and the report's
    description of the cut-off."""
    widths = point_widths(points)
    cut: dict = {"kind": cutoff}
    if cutoff == "uncertainty":
        keep, guarded = uncertainty_keep(prob_below, fitted.means, cfg.delta)
        cut.update(tau=cfg.tau, delta=cfg.delta, guarded_layers=guarded)
    elif cutoff == "budget":
        keep, _ = budget_keep(removal_order(prob_below, fitted.means), widths,
                              size_function(net, data.input_shape, points), budget_targets(cfg))
        cut.update(tau=cfg.tau, target=budget_targets(cfg))
    elif cutoff == "decision":
        x, y = decision_examples(data.train, cfg.decision_examples, cfg.seed)
        draws = relative_draws(fit, cfg.decision_draws, cfg.seed)
        target = budget_targets(cfg) or None
        lam = None if target else (cfg.lam if cfg.lam is not None else DEFAULT_LAM)
        decision = decision_cutoff(net, points, x, y, data.input_shape, lam=lam,
                                   target=target, measure=cfg.decision_measure, draws=draws)
        keep = decision.keep
        cut.update(lam=lam, target=target, measure=cfg.decision_measure, examples=len(y), draws=len(draws),
                   utility=decision.utility, loglik=decision.loglik,
                   removals=sum("removed" in step for step in decision.steps),
                   additions=sum("added" in step for step in decision.steps),
                   evaluations=decision.evaluations, path=decision.steps)
    else:
        ranking = get_ranking(cfg.ranking or DEFAULT_RANKING, switch=fitted.config, fitted=fitted, tau=cfg.tau)
        keep = keep_top(ranking(net, points, data.train, seed=cfg.seed), kept_counts(cfg, cutoff, widths))
        cut.update({cutoff: cfg.arch if cutoff == "arch" else cfg.rate})
        if cfg.ranking is not None:
            cut["ranking"] = cfg.ranking
    return keep, cut
