"""The end-to-end pipelines behind ``dirichlet-prune pretrain`` and ``dirichlet-prune prune``.

prune: pre-trained network → switch posterior q(s) = prod_l Dir(phi_l) by SVI → cut-off →
physical surgery → fine-tuning, with a JSON report. Cut-offs (``CUTOFFS``):

* ``uncertainty`` (default): remove unit j of layer l when P(D_l · s_lj < tau) >= 1 - delta;
* ``budget``: remove units across layers in order of that probability until the MACs and/or
  params fit ``target_macs`` / ``target_params``;
* ``arch`` / ``rate``: keep the given number of units per layer, ranked by E_q[s_l].

The network is a registered one (``--model`` and a checkpoint) or a user's whole pickled
``nn.Module`` (``model_file``), whose prunable layers and switch placements are discovered
(``models.discovery``) or named (``layers``). With ``device="cuda"``, switch learning and
fine-tuning run on the GPU; surgery always runs on the CPU.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch

from .data import DataBundle, Split, dataset_spec, load_data
from .errors import UserError
from .inference.fit import collapsed_fraction
from .inference.svi import SwitchConfig, fit_switches, guide_parameters, switch_posterior
from .plots import plot_posterior
from .metrics import count_macs, count_params
from .models import SwitchedNetwork, build_model, check_model_name, default_widths, discover_switch_points
from .models.checkpoint import (load_checkpoint, load_model_file, save_checkpoint, save_module_checkpoint,
                                shipped_checkpoint)
from .models.common import scale_widths
from .models.switch_points import SwitchPoint, point_widths, rebind
from .models.user import check_model_io, parse_input_shape
from .pruning.budget import budget_keep, check_reachable, size_function
from .pruning.cutoff import (arch_string, keep_top, parse_arch, parse_widths, rate_widths, removal_order,
                             uncertainty_keep)
from .pruning.surgery import prune_units, verify_surgery
from .report import check_output, now, output_folder, versions, write_json
from .runstate import RunState
from .training import TrainConfig, check_device, evaluate, train


def seed_everything(seed: int) -> None:
    """Seed torch, Pyro, Python's and NumPy's generators."""
    pyro.set_rng_seed(seed)
    torch.manual_seed(seed)


def _subset(data: DataBundle, max_train: int | None) -> DataBundle:
    if not max_train or max_train >= len(data.train):
        return data
    if max_train < 1:
        raise UserError(f"--max-train-examples must be positive, got {max_train}")
    return dataclasses.replace(data, train=Split(data.train.x[:max_train], data.train.y[:max_train]))


def train_defaults(model: str | None, dataset: str, stage: str) -> dict:
    """The training options a model gets unless told otherwise (``stage``: ``pretrain`` or
    ``finetune``). The LeNets: Adam, lr 2e-3, no weight decay, 20 pre-training and 40
    fine-tuning epochs. VGG-16, WRNs and user networks (``model`` None): SGD with Nesterov
    momentum 0.9, weight decay 5e-4, lr 0.1 for 200 pre-training epochs and 0.01 for 40
    fine-tuning epochs. Augmentation follows the data: random crop of the 4-pixel zero-padded
    image and horizontal flip for 3-channel (CIFAR) images, a random shift by up to 2 pixels
    otherwise. Always cosine decay of the learning rate to zero."""
    if stage not in ("pretrain", "finetune"):
        raise ValueError(f"unknown training stage {stage!r}")
    cifar = dataset_spec(dataset)[0][0] == 3
    augment = {"augment_shift": 0, "augment_crop": 4, "augment_flip": True} if cifar else \
        {"augment_shift": 2, "augment_crop": 0, "augment_flip": False}
    if model is not None and model.startswith("lenet5"):
        optim = {"optimizer": "adam", "lr": 2e-3, "weight_decay": 0.0, "epochs": 20 if stage == "pretrain" else 40}
    else:
        optim = {"optimizer": "sgd", "lr": 0.1 if stage == "pretrain" else 0.01, "weight_decay": 5e-4,
                 "epochs": 200 if stage == "pretrain" else 40}
    return optim | augment


@dataclass
class PretrainConfig:
    model: str = "lenet5"
    dataset: str = "mnist"
    data_dir: str | None = None
    widths: str | None = None
    width_multiplier: float | None = None
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, lr=2e-3, augment_shift=2))
    val_size: int = 5000
    split_seed: int = 0
    max_train_examples: int | None = None


def run_pretrain(
    cfg: PretrainConfig, out: str | Path, overwrite: bool = False, resume: bool = False, checkpoint_every: int = 100
) -> dict:
    """Train ``cfg.model`` from scratch; writes ``model.pt`` and ``report.json`` into ``out``.
    Training saves its state every ``checkpoint_every`` steps; ``resume`` continues a killed run."""
    check_model_name(cfg.model)
    widths = None
    if cfg.widths and cfg.width_multiplier is not None:
        raise UserError("give --widths or --width-multiplier, not both")
    if cfg.width_multiplier is not None:
        try:
            widths = list(scale_widths(default_widths(cfg.model), cfg.width_multiplier))
        except ValueError as exc:
            raise UserError(f"--width-multiplier: {exc}") from None
    if cfg.widths:
        widths = parse_widths(cfg.widths)
        try:
            build_model(cfg.model, widths)
        except ValueError as exc:
            raise UserError(f"--widths {cfg.widths}: {exc}") from None
    try:
        cfg.train.validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    check_device(cfg.train.device)
    check_output(out, overwrite, resume)
    seed_everything(cfg.train.seed)
    data = _subset(load_data(cfg.dataset, cfg.data_dir, cfg.val_size, cfg.split_seed), cfg.max_train_examples)
    with output_folder(out, overwrite, resume) as tmp:
        state = RunState(tmp, checkpoint_every, config=dataclasses.asdict(cfg))
        if resume:
            state.load()
        net = build_model(cfg.model, widths, data.num_classes, data.input_shape[0])
        t0 = time.perf_counter()
        result = train(net, data, cfg.train, desc=f"pretrain {cfg.model}", state=state, loop="pretrain")
        seconds = time.perf_counter() - t0
        metrics = {
            "val": evaluate(net, data.val),
            "test": evaluate(net, data.test),
            "params": count_params(net),
            "macs": count_macs(net, data.input_shape),
            "widths": list(net.widths),
            "best_epoch": result.best_epoch,
            "history": result.history,
            "seconds": seconds,
        }
        save_checkpoint(
            tmp / "model.pt", net, cfg.model, cfg.dataset, data.num_classes, data.input_shape,
            meta={"test_error": metrics["test"]["error"], "train_config": dataclasses.asdict(cfg.train)},
        )
        report = {
            "command": "pretrain",
            "created": now(),
            "config": dataclasses.asdict(cfg),
            "data": {"source": data.source, "train": len(data.train), "val": len(data.val), "test": len(data.test)},
            "metrics": metrics,
            "resumed": resume,
            "resumed_from": state.resumed_from,
            "versions": versions(),
        }
        write_json(tmp / "report.json", report)
    return report


CUTOFFS = ("uncertainty", "budget", "arch", "rate")
TAU = 0.5
DELTA = 0.05


def resolve_cutoff(cfg: "PruneConfig") -> str:
    """The cut-off a configuration asks for: the one named, or the one its options imply
    (``arch``, ``rate``, ``target_*`` → budget), else ``uncertainty``; conflicts are errors."""
    implied = [name for name, given in (("arch", cfg.arch is not None), ("rate", cfg.rate is not None),
                                        ("budget", cfg.target_macs is not None or cfg.target_params is not None)) if given]
    if len(implied) > 1:
        raise UserError(f"give one cut-off, not {' and '.join(implied)} (--arch, --rate, --target-macs/--target-params)")
    if cfg.cutoff is not None and cfg.cutoff not in CUTOFFS:
        raise UserError(f"unknown cut-off {cfg.cutoff!r}; choose one of {', '.join(CUTOFFS)}")
    kind = cfg.cutoff or (implied[0] if implied else "uncertainty")
    if implied and implied[0] != kind:
        raise UserError(f"--cutoff {kind} does not take the options of the {implied[0]} cut-off")
    if kind in ("arch", "rate", "budget") and not implied:
        need = {"arch": "--arch", "rate": "--rate", "budget": "--target-macs and/or --target-params"}[kind]
        raise UserError(f"--cutoff {kind} needs {need}")
    if not (cfg.tau > 0 and cfg.tau < float("inf")):
        raise UserError(f"--tau must be a positive number, got {cfg.tau}")
    if not 0 < cfg.delta < 1:
        raise UserError(f"--delta must be in (0, 1), got {cfg.delta}")
    for key in ("target_macs", "target_params"):
        value = getattr(cfg, key)
        if value is not None and not (isinstance(value, int) and value > 0):
            raise UserError(f"--{key.replace('_', '-')} must be a positive integer, got {value!r}")
    return kind


@dataclass
class PruneConfig:
    """Options of ``run_prune``. ``model_file`` (a whole pickled ``nn.Module``; unpickling runs
    arbitrary code, so only a trusted file) replaces ``model`` and ``checkpoint``; its input
    shape is ``input_shape`` (e.g. ``"3,32,32"``; default the data set's). ``layers`` names the
    layers to switch (default: all that the model declares, or that discovery finds)."""

    model: str | None = "lenet5"
    dataset: str = "mnist"
    data_dir: str | None = None
    checkpoint: str | None = None
    switch: SwitchConfig = field(default_factory=SwitchConfig)
    cutoff: str | None = None
    arch: str | None = None
    rate: float | None = None
    tau: float = TAU
    delta: float = DELTA
    target_macs: int | None = None
    target_params: int | None = None
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=40, lr=2e-3, augment_shift=2))
    seed: int = 0
    val_size: int = 5000
    split_seed: int = 0
    max_train_examples: int | None = None
    model_file: str | None = None
    input_shape: str | None = None
    layers: list[str] | None = None
    device: str = "cpu"


def _budget(cfg: PruneConfig) -> dict[str, int]:
    """The budget cut-off's targets that were given: ``{"macs": M, "params": P}``."""
    return {k: v for k, v in (("macs", cfg.target_macs), ("params", cfg.target_params)) if v is not None}


def _resolve_checkpoint(cfg: PruneConfig) -> Path:
    if cfg.checkpoint:
        return Path(cfg.checkpoint)
    path = shipped_checkpoint(cfg.model, cfg.dataset)
    if path is None:
        raise UserError(
            f"no pre-trained {cfg.model} for {cfg.dataset} ships with the package; "
            f"run `dirichlet-prune pretrain --model {cfg.model} --dataset {cfg.dataset} --out DIR` "
            f"and pass --checkpoint DIR/model.pt"
        )
    return path


def _size(net, shape, points: list[SwitchPoint]) -> dict:
    """Parameters, MACs and the widths of the switched layers (``arch``) of ``net``."""
    return {"params": count_params(net), "macs": count_macs(net, shape),
            "arch": "-".join(str(p.width) for p in points)}


def _load_user_model(cfg: PruneConfig) -> tuple[torch.nn.Module, dict, list[SwitchPoint]]:
    """The user's network of ``cfg.model_file``, checked against the data set, its facts and
    its switch points (discovered, or the ``cfg.layers`` named)."""
    if cfg.checkpoint:
        raise UserError("give --model-file or --checkpoint, not both")
    shape, classes = dataset_spec(cfg.dataset)
    if cfg.input_shape is not None:
        given = parse_input_shape(cfg.input_shape)
        if given != tuple(shape):
            raise UserError(f"--input-shape {','.join(map(str, given))} does not match {cfg.dataset}, whose "
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
        raise UserError(f"--layers {','.join(layers)}: choose distinct layers among {', '.join(names)}")
    return [p for p in points if p.name in set(layers)]


def _point_table(net: torch.nn.Module, points: list[SwitchPoint]) -> list[dict]:
    """Where every switch sits, for the report."""
    names = {m: n for n, m in net.named_modules()}
    return [{"name": p.name, "layer": names.get(p.module), "hooked": names.get(p.hooked), "width": p.width}
            for p in points]


def run_prune(
    cfg: PruneConfig, out: str | Path, overwrite: bool = False, resume: bool = False, checkpoint_every: int = 100
) -> dict:
    """Dirichlet-prune a pre-trained network (module docstring); returns the report written to
    ``out/report.json``. Nothing is written to ``out`` unless the whole run succeeds.

    Switch learning and fine-tuning save their state every ``checkpoint_every`` steps in the
    hidden work folder ``.<out>.partial``; after a crash or a kill, ``resume`` continues the
    run and reaches the same result as an uninterrupted run with the same seed."""
    cutoff = resolve_cutoff(cfg)
    try:
        cfg.switch.validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        cfg.finetune.validate()
    except ValueError as exc:
        raise UserError(f"fine-tuning: {exc}") from None
    device = check_device(cfg.device)
    if cfg.model_file is not None:  # a user's network: the model name does not apply
        cfg = dataclasses.replace(cfg, model=None)
        net, info, points = _load_user_model(cfg)
        ckpt, label = Path(cfg.model_file), Path(cfg.model_file).name
    else:
        check_model_name(cfg.model)  # unknown model → clear error before any work
        ckpt, label = _resolve_checkpoint(cfg), cfg.model
        net, info = load_checkpoint(ckpt, cfg.model)
        points = _select_layers(net.switch_points(), cfg.layers)
    widths = point_widths(points)
    kept_counts = {"arch": lambda: parse_arch(cfg.arch, widths), "rate": lambda: rate_widths(cfg.rate, widths)}.get(
        cutoff, lambda: None)()
    if cutoff == "budget":  # refuse an unreachable budget before any work
        check_reachable(size_function(net, info["input_shape"], points), widths, _budget(cfg))
    check_output(out, overwrite, resume)

    timings: dict[str, float] = {}
    t = time.perf_counter()
    data = _subset(load_data(cfg.dataset, cfg.data_dir, cfg.val_size, cfg.split_seed), cfg.max_train_examples)
    if tuple(info["input_shape"]) != tuple(data.input_shape) or info["num_classes"] != data.num_classes:
        raise UserError(
            f"checkpoint {ckpt} expects inputs {tuple(info['input_shape'])} and {info['num_classes']} classes; "
            f"{cfg.dataset} has {tuple(data.input_shape)} and {data.num_classes}"
        )
    timings["load"] = time.perf_counter() - t
    seed_everything(cfg.seed)
    switch_cfg = dataclasses.replace(cfg.switch, seed=cfg.seed)
    finetune_cfg = dataclasses.replace(cfg.finetune, seed=cfg.seed, device=cfg.device)

    with output_folder(out, overwrite, resume) as tmp:
        state = RunState(tmp, checkpoint_every, config=dataclasses.asdict(cfg))
        if resume:
            state.load()
        net.to(device)  # the data and the switches stay on the CPU (SwitchedNetwork.forward)
        base = {**_size(net, data.input_shape, points), "test": evaluate(net, data.test), "val": evaluate(net, data.val)}

        t = time.perf_counter()
        switched = SwitchedNetwork(net, points)
        fit = fit_switches(switched, data.train, switch_cfg, state=state)
        post = switch_posterior(fit, switch_cfg, data.train)
        switched.remove_hooks()
        net.cpu()
        timings["switches"] = time.perf_counter() - t

        t = time.perf_counter()
        means = fit.posterior_means()
        prob_below = post.prob_below(cfg.tau)
        cut = {"kind": cutoff}
        if cutoff == "uncertainty":
            keep, guarded = uncertainty_keep(prob_below, means, cfg.delta)
            cut.update(tau=cfg.tau, delta=cfg.delta, guarded_layers=guarded)
        elif cutoff == "budget":
            keep, _ = budget_keep(removal_order(prob_below, means), widths,
                                  size_function(net, data.input_shape, points), _budget(cfg))
            cut.update(tau=cfg.tau, target=_budget(cfg))
        else:
            keep = keep_top(means, kept_counts)
            cut.update({cutoff: cfg.arch if cutoff == "arch" else cfg.rate})
        pruned = prune_units(net, keep, data.input_shape, points)
        surgery_diff = verify_surgery(net, pruned, keep, data.input_shape, seed=cfg.seed, points=points)
        pruned_points = rebind(points, net, pruned)
        timings["surgery"] = time.perf_counter() - t
        pruned.to(device)
        after_surgery = {**_size(pruned, data.input_shape, pruned_points), "test": evaluate(pruned, data.test),
                         "val": evaluate(pruned, data.val)}

        t = time.perf_counter()
        for p in pruned.parameters():
            p.requires_grad_(True)
        ft = train(pruned, data, finetune_cfg, desc="fine-tune", state=state)
        timings["finetune"] = time.perf_counter() - t
        finetuned = {**_size(pruned, data.input_shape, pruned_points), "test": evaluate(pruned, data.test),
                     "val": evaluate(pruned, data.val)}
        pruned.cpu()

        meta = {"base_checkpoint": str(ckpt), "kept": keep, "test_error": finetuned["test"]["error"]}
        if cfg.model_file is None:
            save_checkpoint(tmp / "pruned.pt", pruned, cfg.model, cfg.dataset, data.num_classes, data.input_shape, meta=meta)
        else:
            save_module_checkpoint(tmp / "pruned.pt", pruned, cfg.dataset, data.num_classes, data.input_shape,
                                   [p.name for p in points], meta=meta)
        posterior = {
            layer: {
                **({"concentration": fit.concentrations[layer].tolist()} if layer in fit.concentrations else {}),
                "mean": means[layer].tolist(),
                "lower": post.lower[layer].tolist(),
                "upper": post.upper[layer].tolist(),
                "prob_below_tau": prob_below[layer].tolist(),
                "kept": keep[layer],
            }
            for layer in means
        }
        write_json(tmp / "posterior.json", posterior)
        plot_posterior(post, tmp / "posterior.png", keep,
                       title=f"{label} on {cfg.dataset}: switch posterior ({switch_cfg.guide}), kept {arch_string(keep)}")
        if not fit.concentrations:  # an autoguide: keep its fitted parameters too
            write_json(tmp / "guide_params.json", guide_parameters(fit.guide))
        report = {
            "command": "prune",
            "created": now(),
            "config": dataclasses.asdict(cfg) | {"switch": dataclasses.asdict(switch_cfg), "finetune": dataclasses.asdict(finetune_cfg)},
            "checkpoint": str(ckpt),
            "data": {"source": data.source, "train": len(data.train), "val": len(data.val), "test": len(data.test)},
            "architecture": {"base": base["arch"], "pruned": arch_string(keep), "cutoff": cutoff},
            "switch_points": _point_table(net, points),
            "base": base,
            "pruned": after_surgery,
            "finetuned": finetuned | {"best_epoch": ft.best_epoch, "history": ft.history},
            "compression": {
                "params_ratio": base["params"] / finetuned["params"],
                "macs_ratio": base["macs"] / finetuned["macs"],
            },
            "switches": {
                "steps": len(fit.losses),
                "stages": fit.stages,
                "final_loss": sum(fit.losses[-20:]) / len(fit.losses[-20:]),
                "losses": fit.losses,
            },
            "posterior": {
                "elbo": post.elbo,
                "elbo_standard_error": post.elbo_se,
                "stage_elbos": post.stage_elbos_json(),
                "credible_level": post.level,
                "exact_marginals": post.exact,
            },
            "cutoff": cut,
            "kept": keep,
            "checks": {
                "surgery_max_abs_diff_vs_masked": surgery_diff,
                "concentrations_at_floor": collapsed_fraction(fit.concentrations, switch_cfg.floor),
            },
            "resumed": resume,
            "resumed_from": state.resumed_from,
            "timings_seconds": timings | {"total": sum(timings.values())},
            "versions": versions(),
        }
        write_json(tmp / "report.json", report)
    return report
