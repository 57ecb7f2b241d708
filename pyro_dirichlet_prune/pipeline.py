"""The pipeline behind ``dirichlet-prune prune`` (``run_prune``); ``pretraining`` holds the one
behind ``dirichlet-prune pretrain`` (its names are importable from here too).

prune: pre-trained network → switch posterior q(s) = prod_l Dir(phi_l) by SVI → cut-off →
``prune_step.prune_and_finetune`` (physical surgery, fine-tuning, evaluation), with a JSON
report. Cut-offs (``CUTOFFS``):

* ``uncertainty`` (default): remove unit j of layer l when P(D_l · s_lj < tau) >= 1 - delta;
* ``budget``: remove units across layers in order of that probability until the MACs and/or
  params fit ``target_macs`` / ``target_params``;
* ``arch`` / ``rate``: keep the given number of units per layer, those of highest score by the
  ``ranking`` (``pruning.ranking``; default ``posterior-mean``, E_q[s_l] of the switch fit).

The network is a registered one (``model`` and a checkpoint) or a user's whole pickled
``nn.Module`` (``model_file``), whose prunable layers and switch placements are discovered
(``models.discovery``) or named (``layers``). With ``device="cuda"``, switch learning and
fine-tuning run on the GPU; surgery always runs on the CPU. Last, the base and the pruned
network's forward passes are timed (``latency``), on the CPU and on the run's GPU. Launched on
several processes (``torchrun``, ``distributed``), switch learning and fine-tuning are
data-parallel and only rank 0 writes ``out``.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import DataBundle, dataset_spec, load_data
from .inputs import fit_to_network
from .distributed import is_main
from .errors import UserError
from .inference.guards import collapsed_fraction
from .inference.posterior import STRUCTURES, SwitchPosterior
from .inference.svi import SwitchConfig, SwitchFit, fit_switches, interval_basis, switch_posterior
from .latency import latency_report
from .metrics import max_weight_change, network_size
from .models import SwitchedNetwork, check_model_name, discover_switch_points
from .models.discovery import left_out_layers
from .models.checkpoint import load_checkpoint, load_model_file, shipped_checkpoint
from .models.switch_points import SwitchPoint, point_widths, rebind
from .models.user import check_model_io, parse_input_shape
from .pretraining import PretrainConfig, run_pretrain, seed_everything, subset_train, train_defaults
from .prune_step import prune_and_finetune
from .pruning.budget import check_reachable, size_function
from .pruning.cutoff import arch_string
from .pruning.surgery import prune
from .pruning.ranking import FittedSwitches
from .prune_config import CUTOFFS, DELTA, TAU, PruneConfig
from .unit_choice import CutoffStep, cutoff_of, resolve_cutoff
from .report import check_output, now, output_folder, versions, write_json
from .run_outputs import point_table, save_outputs
from .runstate import RunState
from .devices import check_device
from .training import evaluate

__all__ = ["CUTOFFS", "DELTA", "TAU", "PretrainConfig", "PruneConfig", "resolve_checkpoint", "resolve_cutoff",
           "run_pretrain", "run_prune", "seed_everything", "subset_train", "train_defaults"]


def resolve_checkpoint(cfg: PruneConfig) -> Path:
    """The checkpoint to prune: ``cfg.checkpoint``, else the one shipped for the model and data set."""
    if cfg.checkpoint:
        return Path(cfg.checkpoint)
    path = shipped_checkpoint(cfg.model, cfg.dataset)
    if path is None:
        raise UserError(
            f"no pre-trained {cfg.model} for {cfg.dataset} ships with the package; "
            f"pre-train one (`dirichlet-prune pretrain`, or pretraining.run_pretrain) and give checkpoint=PATH"
        )
    return path


def _load_user_model(cfg: PruneConfig) -> tuple[torch.nn.Module, dict, list[SwitchPoint]]:
    """The user's network of ``cfg.model_file``, checked against the data set, its facts and
    its switch points (discovered, or the ``cfg.layers`` named)."""
    if cfg.checkpoint:
        raise UserError("give model_file or checkpoint=PATH, not both")
    shape, classes = dataset_spec(cfg.dataset)
    if cfg.input_shape is not None:
        given = parse_input_shape(cfg.input_shape)
        if given != tuple(shape):
            raise UserError(f"input_shape {','.join(map(str, given))} does not match {cfg.dataset}, whose "
                            f"inputs have shape {','.join(map(str, shape))}")
    net, _ = load_model_file(cfg.model_file)
    check_model_io(net, shape, classes, what=f"the model of {cfg.model_file}")
    points = discover_switch_points(net, shape, cfg.layers)
    return net, {"input_shape": list(shape), "num_classes": classes}, points


def _select_layers(points: list[SwitchPoint], layers: list[str] | None) -> list[SwitchPoint]:
    """The declared switch points restricted to the ``layers`` named (all when None)."""
    if layers is None:
        return points
    names = [p.name for p in points]
    unknown = [n for n in layers if n not in names]
    if unknown or len(set(layers)) != len(layers) or not layers:
        raise UserError(f"layers {','.join(layers)}: choose distinct layers among {', '.join(names)}")
    return [p for p in points if p.name in set(layers)]


def _check_options(cfg: PruneConfig) -> CutoffStep:
    """The cut-off, after checking every option that needs no data (no work done before)."""
    cutoff = cutoff_of(cfg)
    try:
        cfg.switch.validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        cfg.finetune_recipe().validate()
    except ValueError as exc:
        raise UserError(f"fine-tuning: {exc}") from None
    return cutoff


def _load_network(cfg: PruneConfig) -> tuple[PruneConfig, torch.nn.Module, dict, list[SwitchPoint], Path, str]:
    """The network to prune, its facts (input shape, classes), its switch points, the file it
    came from and its label; for a user's network the configuration without a model name."""
    if cfg.model_file is not None:  # a user's network (PruneConfig refuses a model name with it)
        net, info, points = _load_user_model(cfg)
        return cfg, net, info, points, Path(cfg.model_file), Path(cfg.model_file).name
    check_model_name(cfg.model)  # unknown model → clear error before any work
    ckpt = resolve_checkpoint(cfg)
    net, info = load_checkpoint(ckpt, cfg.model)
    return cfg, net, info, _select_layers(net.switch_points(), cfg.layers), ckpt, cfg.model


def _load_run_data(cfg: PruneConfig, info: dict, ckpt: Path) -> DataBundle:
    """The data set, its training split cut as asked, checked against the network's facts."""
    data = subset_train(load_data(cfg.dataset, cfg.data_dir, cfg.val_size, cfg.split_seed), cfg.max_train_examples)
    data = fit_to_network(data, info["input_shape"])
    if tuple(info["input_shape"]) != tuple(data.input_shape) or info["num_classes"] != data.num_classes:
        raise UserError(
            f"checkpoint {ckpt} expects inputs {tuple(info['input_shape'])} and {info['num_classes']} classes; "
            f"{cfg.dataset} has {tuple(data.input_shape)} and {data.num_classes}"
        )
    return data


def _learn_switches(net: torch.nn.Module, points: list[SwitchPoint], data: DataBundle, switch_cfg: SwitchConfig,
                    state: RunState, timings: dict[str, float], loop: str = "switches") -> tuple[SwitchFit, SwitchPosterior]:
    """Fit q(s) to the frozen ``net`` (on its device) and its posterior with the ELBO estimates
    (their seconds added to ``timings["elbo"]``, the fit's to ``timings["switches"]``); ``net``
    ends on the CPU."""
    switched = SwitchedNetwork(net, points)
    t = time.perf_counter()
    fit = fit_switches(switched, data.train, switch_cfg, state=state, loop=loop)
    timings["switches"] = timings.get("switches", 0.0) + time.perf_counter() - t
    t = time.perf_counter()
    post = switch_posterior(fit, switch_cfg, data.train)
    timings["elbo"] = timings.get("elbo", 0.0) + time.perf_counter() - t
    net.cpu()
    return fit, post


@dataclass
class _Chosen:
    """The last round of fit → cut-off: the network to prune and its points, the fit, its
    posterior, the units kept (of that network), and per layer the original index of each of its
    units; ``rounds`` records every round."""

    net: torch.nn.Module
    points: list[SwitchPoint]
    fit: SwitchFit
    post: SwitchPosterior
    fitted: FittedSwitches
    prob_below: dict
    keep: dict[str, list[int]]
    cut: dict
    units: dict[str, list[int]]
    rounds: list[dict]


def _fit_and_choose(cutoff: CutoffStep, rounds_at_most: int, net: torch.nn.Module, points: list[SwitchPoint],
                    data: DataBundle, switch_cfg: SwitchConfig, state: RunState, timings: dict[str, float],
                    device: torch.device) -> _Chosen:
    """Fit the switches and apply the cut-off, ``rounds_at_most`` times at most: after a round that
    removed units, the smaller network (surgery, checked against the masked one) is fitted again,
    its weights from the round before when they learned; the rounds stop early when the cut-off
    removes nothing."""
    units = {p.name: list(range(p.width)) for p in points}
    rounds: list[dict] = []
    for r in range(rounds_at_most):
        fit, post = _learn_switches(net, points, data, switch_cfg, state, timings,
                                    "switches" if r == 0 else f"switches.round{r + 1}")
        if fit.learns_weights:  # prune the network the posterior describes: W_hat, switch means folded in
            fitted_net = fit.fitted_network()
            points, net = rebind(points, net, fitted_net), fitted_net
        t = time.perf_counter()
        fitted = FittedSwitches.of(fit, switch_cfg, post)
        prob_below = post.prob_below(cutoff.tau)
        keep, cut = cutoff.choose(net, points, data, fitted, post, fit, switch_cfg.seed)
        timings["cutoff"] = timings.get("cutoff", 0.0) + time.perf_counter() - t
        removed = sum(p.width - len(keep[p.name]) for p in points)
        rounds.append({"round": r + 1, "widths": "-".join(str(p.width) for p in points), "kept": arch_string(keep),
                       "removed": removed, "elbo": post.elbo, "switch_seconds": fit.seconds})
        if r + 1 == rounds_at_most or removed == 0:
            break
        smaller = prune(net, keep, data.input_shape, points)
        units = {layer: [units[layer][j] for j in sorted(keep[layer])] for layer in units}
        points, net = rebind(points, net, smaller), smaller.to(device)
    return _Chosen(net, points, fit, post, fitted, prob_below, keep, cut, units, rounds)


def run_prune(
    cfg: PruneConfig, out: str | Path, overwrite: bool = False, resume: bool = False, checkpoint_every: int = 100
) -> dict:
    """Dirichlet-prune a pre-trained network (module docstring); returns the report written to
    ``out/report.json``. Nothing is written to ``out`` unless the whole run succeeds.

    The steps: check the options, load the network and the data, learn the switches, choose the
    units, ``prune_and_finetune``, save. Switch learning and fine-tuning save their state every
    ``checkpoint_every`` steps in the hidden work folder ``.<out>.partial``; after a crash or a
    kill, ``resume`` continues the run and reaches the same result as an uninterrupted run with
    the same seed."""
    cutoff = _check_options(cfg)
    device = check_device(cfg.device)
    cfg, net, info, points, ckpt, label = _load_network(cfg)
    left_out = left_out_layers(net, info["input_shape"], points)
    widths = point_widths(points)
    try:
        cutoff.counts(widths)  # a wrong arch or rate fails before any work
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if cutoff.targets():  # refuse an unreachable budget before any work
        check_reachable(size_function(net, info["input_shape"], points), widths, cutoff.targets())
    check_output(out, overwrite, resume)

    timings: dict[str, float] = {}
    t = time.perf_counter()
    data = _load_run_data(cfg, info, ckpt)
    timings["load"] = time.perf_counter() - t
    switch_cfg = dataclasses.replace(cfg.switch, seed=cfg.seed)
    finetune_cfg = dataclasses.replace(cfg.finetune_recipe(), seed=cfg.seed, device=cfg.device)

    with output_folder(out, overwrite, resume) as tmp:
        state = RunState(tmp, checkpoint_every, config=dataclasses.asdict(cfg))
        if resume:
            state.load()
        net.to(device)  # the data and the switches stay on the CPU (SwitchedNetwork.forward)
        base = {**network_size(net, data.input_shape, points), "test": evaluate(net, data.test), "val": evaluate(net, data.val)}
        base_net = net
        chosen = _fit_and_choose(cutoff, cfg.rounds, net, points, data, switch_cfg, state, timings, device)
        net, points, fit, post, keep, cut = chosen.net, chosen.points, chosen.fit, chosen.post, chosen.keep, chosen.cut
        adapted = None
        if fit.learns_weights:  # the network pruned in the end, before surgery
            adapted = {"test": evaluate(net, data.test), "val": evaluate(net, data.val)}
            if len(chosen.rounds) == 1:
                adapted["max_abs_weight_change"] = max_weight_change(base_net, net)
        result = prune_and_finetune(net, keep, data, finetune_cfg, points, seed=cfg.seed, state=state)
        timings["surgery"] = result.seconds["surgery"]
        kept = {layer: [chosen.units[layer][j] for j in result.keep[layer]] for layer in result.keep}
        timings["finetune"] = result.seconds["finetune"]
        result.net.cpu()
        t = time.perf_counter()
        devices = ("cpu", str(device)) if device.type == "cuda" else ("cpu",)
        latency = latency_report(base_net, result.net, data.input_shape, base["macs"], result.size["macs"],
                                 devices) if cfg.latency and is_main() else None  # rank 0 times alone
        if latency is not None:
            timings["latency"] = time.perf_counter() - t
        save_outputs(tmp, cfg, ckpt, label, data, points, fit, post, chosen.fitted.means, chosen.prob_below, result,
                     chosen.units, kept)
        report = {
            "command": "prune",
            "created": now(),
            "config": dataclasses.asdict(cfg) | {"switch": dataclasses.asdict(switch_cfg), "finetune": dataclasses.asdict(finetune_cfg)},
            "checkpoint": str(ckpt),
            "data": {"source": data.source, "train": len(data.train), "val": len(data.val), "test": len(data.test)},
            "architecture": {"base": base["arch"], "pruned": arch_string(keep), "cutoff": cutoff.kind},
            **({"rounds": chosen.rounds} if cfg.rounds > 1 else {}),
            "switch_points": point_table(net, points),
            "left_out_layers": [{"layer": name, "reason": why} for name, why in left_out.items()],
            "base": base,
            **({"adapted": adapted} if adapted is not None else {}),
            "pruned": result.metrics("pruned"),
            "finetuned": result.metrics("finetuned") | {"best_epoch": result.training.best_epoch,
                                                        "history": result.training.history,
                                                        **({"stopped_early": result.training.stopped_early}
                                                           if finetune_cfg.patience is not None
                                                           or finetune_cfg.schedule == "plateau" else {})},
            "compression": {
                "params_ratio": base["params"] / result.size["params"],
                "macs_ratio": base["macs"] / result.size["macs"],
            },
            "switches": {
                "steps": len(fit.losses),
                "stages": fit.stages,
                "concentration": fit.concentration,
                **({"settled_concentrations": fit.settled} if fit.settled is not None else {}),
                **({"convergence": fit.convergence} if fit.convergence is not None else {}),
                "final_loss": sum(fit.losses[-20:]) / len(fit.losses[-20:]),
                "losses": fit.losses,
            },
            "posterior": {
                "elbo": post.elbo,
                "elbo_standard_error": post.elbo_se,
                "stage_elbos": post.stage_elbos_json(),
                "credible_level": post.level,
                "exact_marginals": post.exact,
                "structure": STRUCTURES[switch_cfg.schedule],
                "intervals": interval_basis(switch_cfg, fit),
            },
            "cutoff": cut,
            "kept": kept,
            **({"latency": latency} if latency is not None else {}),
            "checks": {
                "surgery_max_abs_diff_vs_masked": result.surgery_max_abs_diff,
                "concentrations_at_floor": collapsed_fraction(fit.concentrations, switch_cfg.floor),
            },
            "resumed": resume,
            "resumed_from": state.resumed_from,
            "timings_seconds": timings | {"total": sum(timings.values())},
            "versions": versions(),
        }
        write_json(tmp / "report.json", report)
    return report
