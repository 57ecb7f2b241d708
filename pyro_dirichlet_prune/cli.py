"""Command line: ``dirichlet-prune pretrain|prune|evaluate``."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from . import __version__
from .data import DATASETS, load_data
from .errors import NumericalError, UserError
from .inference.svi import ELBOS, GUIDES, SCHEDULES, SwitchConfig
from .models.switched import SAMPLINGS, SCALES
from .models import MODELS, MODEL_NAMES
from .training import OPTIMIZERS
from .search import parse_seeds

PROG = "dirichlet-prune"


def _number(kind: type, ok, expected: str):
    """An argparse type: parse ``kind`` and require ``ok(value)``, else say what was ``expected``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _number(int, lambda v: v >= 0, "a non-negative integer")
_positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive finite number")
_nonneg_float = _number(float, lambda v: 0 <= v < float("inf"), "a non-negative finite number")
_rate = _number(float, lambda v: 0.0 <= v < 1.0, "a fraction in [0, 1)")


def _choice_list(choices):
    """An argparse type: a comma-separated list of distinct ``choices``."""

    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if not items or bad or len(set(items)) != len(items):
            raise argparse.ArgumentTypeError(
                f"expected distinct names from {', '.join(choices)}, got {text!r}")
        return items

    return parse


def _add_data_args(p: argparse.ArgumentParser, dataset_default: str | None = "mnist", split: bool = True) -> None:
    p.add_argument("--dataset", choices=DATASETS, default=dataset_default,
                   help="data set (fake-* are torchvision FakeData, for runs with no data)"
                   + (f"; default {dataset_default}" if dataset_default else "; default: the checkpoint's"))
    p.add_argument("--data-dir", default=None,
                   help="folder in torchvision's layout (default $DATA_DIR, else ./data); Fashion-MNIST is also "
                        "found under /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist)")
    if not split:
        return
    p.add_argument("--val-size", type=_positive_int, default=5000,
                   help="examples of the training set held out for validation (default 5000)")
    p.add_argument("--split-seed", type=_nonneg_int, default=0,
                   help="seed of the train/validation split, shared by pre-training and pruning (default 0)")
    p.add_argument("--max-train-examples", type=_positive_int, default=None,
                   help="use only the first N training examples (quick runs and smoke tests)")


def _add_out_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder; written only when the run succeeds")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output folder (and discard an interrupted run of it)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same --out from its last saved state (same options)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=100,
                   help="save the state of training loops every N steps, for --resume (default 100)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's)")


def _add_train_args(p: argparse.ArgumentParser, prefix: str, what: str) -> None:
    """Optimiser and augmentation options of pre-training (``prefix`` "") or fine-tuning
    (``prefix`` "finetune-"); None where the model's default applies (``pipeline.train_defaults``)."""
    p.add_argument(f"--{prefix}optimizer", choices=OPTIMIZERS, default=None,
                   help=f"{what} optimiser: adam, or sgd with Nesterov momentum 0.9 (default: adam for the LeNets, "
                        f"sgd otherwise)")
    p.add_argument(f"--{prefix}weight-decay", type=_nonneg_float, default=None,
                   help=f"{what} weight decay (default 0 for the LeNets, 5e-4 otherwise)")
    p.add_argument("--augment-shift", type=_nonneg_int, default=None,
                   help=f"random translation during {what} by up to N pixels, edges repeated (default 2 for "
                        f"1-channel images, 0 for CIFAR; 0 turns it off)")
    p.add_argument("--augment-crop", type=_nonneg_int, default=None,
                   help=f"random crop during {what} of the image zero-padded by N pixels (default 4 for CIFAR, "
                        f"0 otherwise)")
    p.add_argument("--augment-flip", action=argparse.BooleanOptionalAction, default=None,
                   help=f"random horizontal flips during {what} (default: on for CIFAR, off otherwise)")
    p.add_argument("--device", default="cpu",
                   help=f"cpu, or cuda (cuda:N) to run {what} on a GPU (default cpu)")


def _train_config(args: argparse.Namespace, model: str | None, stage: str, prefix: str = "", **given):
    """A ``TrainConfig`` from the options given, the model's defaults for the others."""
    from .pipeline import train_defaults
    from .training import TrainConfig

    d = train_defaults(model, args.dataset, stage)
    dest = prefix.replace("-", "_")
    options = {"optimizer": getattr(args, f"{dest}optimizer"), "weight_decay": getattr(args, f"{dest}weight_decay"),
               "augment_shift": args.augment_shift, "augment_crop": args.augment_crop,
               "augment_flip": args.augment_flip, **given}
    return TrainConfig(**(d | {k: v for k, v in options.items() if v is not None}), seed=args.seed, device=args.device)


def _add_switch_args(p: argparse.ArgumentParser, guide: bool = True) -> None:
    """Options of switch learning (``SwitchConfig``)."""
    d = SwitchConfig()
    if guide:
        p.add_argument("--guide", choices=GUIDES, default=d.guide,
                        help="dirichlet: sampled switches; dirichlet-mean: likelihood at the Dirichlet mean plus "
                             "closed-form KL; normal, delta, lowrank: Pyro's AutoNormal (logistic-normal switches), "
                             f"AutoDelta (MAP), AutoLowRankMultivariateNormal, fitted with Trace_ELBO (default {d.guide})")
    p.add_argument("--elbo", choices=ELBOS, default=d.elbo,
                    help="trace: Trace_ELBO (Monte-Carlo KL); meanfield: TraceMeanField_ELBO (closed-form KL) "
                         f"(default {d.elbo}; ignored by dirichlet-mean)")
    p.add_argument("--particles", type=_positive_int, default=d.particles,
                    help=f"Monte-Carlo switch samples per step (default {d.particles})")
    p.add_argument("--switch-scale", choices=SCALES, default=d.scale,
                    help="dim: a layer's output is multiplied by D*s, so the prior mean is the pre-trained network; "
                         "simplex: multiplied by s itself, as written in the paper (the likelihood then pushes the "
                         f"switch mass onto the units that matter) (default {d.scale})")
    p.add_argument("--switch-gain", type=_positive_float, default=d.gain,
                    help="with --switch-scale simplex, multiply a layer's output by GAIN*s: the units that carry "
                         "the switch mass, and so the widths the uncertainty cut-off keeps, grow with it "
                         f"(benchmarks/switch_gain.py) (default {d.gain:g}, the paper's)")
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule,
                    help="joint: all layers' switches at once; sequential: one layer at a time, input first "
                         f"(default {d.schedule})")
    p.add_argument("--alpha0", type=_positive_float, default=d.alpha0,
                    help=f"concentration of the symmetric Dirichlet prior (default {d.alpha0})")
    p.add_argument("--init-concentration", type=_positive_float, default=d.init_concentration,
                    help=f"initial guide concentration of every unit (default {d.init_concentration})")
    p.add_argument("--floor", type=_positive_float, default=d.floor,
                    help=f"lower bound of guide concentrations (default {d.floor})")
    p.add_argument("--switch-lr", type=_positive_float, default=d.lr,
                    help=f"Adam learning rate of the concentrations (default {d.lr})")
    p.add_argument("--switch-epochs", type=_positive_int, default=d.epochs,
                    help=f"epochs of switch learning, per stage (default {d.epochs}, as in the paper)")
    p.add_argument("--switch-batch-size", type=_positive_int, default=d.batch_size,
                    help=f"minibatch size of switch learning (default {d.batch_size})")
    p.add_argument("--switch-sampling", choices=SAMPLINGS, default=d.sampling,
                    help="shared: one switch draw per layer for the whole minibatch; per-example: an independent "
                         "draw for every example (same ELBO, lower-variance gradients; dirichlet guide only) "
                         f"(default {d.sampling})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Dirichlet pruning of pre-trained CNNs as a Pyro program (Adamczewski & Park, 2021).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pre = sub.add_parser("pretrain", help="train a network from scratch",
                         description="Train a network with cosine learning-rate decay; keep the epoch of lowest "
                                     "validation error. LeNets: Adam, lr 2e-3, 20 epochs, shifts by up to 2 pixels. "
                                     "vgg16 and wrn-D-K: SGD with Nesterov momentum 0.9, lr 0.1, weight decay 5e-4, "
                                     "200 epochs, CIFAR augmentation (random crop with 4-pixel padding, flips).")
    pre.add_argument("--model", default="lenet5",
                     help=f"network: {', '.join(MODEL_NAMES)}, e.g. wrn-28-10, wrn-16-4 (default lenet5)")
    pre.add_argument("--widths", default=None,
                     help="prunable widths, e.g. 10-20-100-25 for lenet5, 14 numbers for vgg16, the conv1 width of "
                          "every block for a WRN (default: the model's)")
    pre.add_argument("--width-multiplier", type=_positive_float, default=None,
                     help="the model's default widths times this factor, rounded (e.g. 0.125 for a narrow vgg16)")
    _add_data_args(pre)
    pre.add_argument("--epochs", type=_positive_int, default=None, help="training epochs (default 20 for the "
                                                                         "LeNets, 200 otherwise)")
    pre.add_argument("--lr", type=_positive_float, default=None,
                     help="learning rate (default 2e-3 for the LeNets, 0.1 otherwise)")
    pre.add_argument("--batch-size", type=_positive_int, default=128, help="minibatch size (default 128)")
    _add_train_args(pre, "", "training")
    pre.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (default 0)")
    _add_out_args(pre)

    pr = sub.add_parser("prune", help="learn switches, prune physically, fine-tune",
                        description="Fit Dirichlet switch posteriors to a frozen pre-trained network by SVI, "
                                    "rank units by posterior mean, remove the others physically and fine-tune. "
                                    "The network is a registered one (--model, --checkpoint) or your own "
                                    "(--model-file).")
    pr.add_argument("--model", default=None,
                    help=f"network: {', '.join(MODEL_NAMES)} (default lenet5, unless --model-file is given)")
    _add_data_args(pr)
    pr.add_argument("--checkpoint", default=None,
                    help="pre-trained network (from `pretrain`); default: the one shipped for --model/--dataset")
    pr.add_argument("--model-file", default=None,
                    help="your own pre-trained network instead of --model: a whole nn.Module saved with "
                         "torch.save(model) (its classes importable). It is loaded with torch.load(weights_only="
                         "False), which UNPICKLES AND RUNS ARBITRARY CODE: only give files you trust. Its prunable "
                         "layers are found automatically (see --layers); the pruned network is saved the same way")
    pr.add_argument("--input-shape", default=None,
                    help="input shape of --model-file without the batch dimension, e.g. 3,32,32; must be the data "
                         "set's (default: the data set's)")
    pr.add_argument("--layers", type=lambda t: [x.strip() for x in t.split(",") if x.strip()], default=None,
                    help="comma-separated names of the layers to switch and prune (module names for --model-file, "
                         "switch-point names for --model); default: every prunable layer")
    _add_switch_args(pr)
    from .pipeline import CUTOFFS, DELTA, TAU

    pr.add_argument("--cutoff", choices=CUTOFFS, default=None,
                    help="which units go. uncertainty (the default when no --arch/--rate/--target-* is given): "
                         "unit j of layer l is removed when the posterior is confident it is unimportant, "
                         "P(D_l*s_lj < TAU) >= 1 - DELTA; a layer always keeps its most important unit. "
                         "budget: remove units across all layers in order of that probability until "
                         "--target-macs/--target-params are met. arch, rate: see --arch, --rate")
    pr.add_argument("--tau", type=_positive_float, default=TAU,
                    help=f"a unit whose switch D_l*s_lj is below TAU counts as unimportant (1 = its uniform share "
                         f"of the layer; default {TAU}, chosen on the validation split: see README)")
    pr.add_argument("--delta", type=_number(float, lambda v: 0 < v < 1, "a number in (0, 1)"), default=DELTA,
                    help=f"the uncertainty cut-off removes a unit when P(D_l*s_lj < TAU) >= 1 - DELTA (default {DELTA})")
    pr.add_argument("--target-macs", type=_positive_int, default=None,
                    help="budget cut-off: largest multiply-accumulates per input of the pruned network")
    pr.add_argument("--target-params", type=_positive_int, default=None,
                    help="budget cut-off: largest number of conv/linear weights and biases of the pruned network")
    cut = pr.add_mutually_exclusive_group()
    cut.add_argument("--arch", help="kept units per prunable layer, ranked by posterior mean, e.g. 6-8-40-20")
    cut.add_argument("--rate", type=_rate, help="fraction of every layer's units to remove (lowest posterior "
                                                 "means), e.g. 0.5")
    pr.add_argument("--finetune-epochs", type=_nonneg_int, default=40,
                    help="fine-tuning epochs with cosine decay, best validation epoch kept (default 40: "
                         "LeNet-5/MNIST 6-8-40-20 reached 1.08%% validation error, against 1.23%% with 20)")
    pr.add_argument("--finetune-lr", type=_positive_float, default=None,
                    help="fine-tuning learning rate (default 2e-3 for the LeNets (Adam), 0.01 otherwise (SGD))")
    _add_train_args(pr, "finetune-", "fine-tuning")
    pr.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (default 0)")
    _add_out_args(pr)

    cg = sub.add_parser("compare-guides", help="every switch guide on the same network, data and seeds",
                        description="Fit every switch guide (Dirichlet, its mean variant and Pyro's AutoNormal, "
                                    "AutoDelta, AutoLowRankMultivariateNormal) to the same pre-trained network with the "
                                    "same seeds; tabulate the final ELBO, held-out log-likelihood and error at the "
                                    "posterior mean, test error after pruning to one architecture before and after "
                                    "fine-tuning, Kendall's tau between the guides' rankings and wall time "
                                    "(table.md, table.json, compare.png, kendall.png, report.json).")
    cg.add_argument("--model", default="lenet5", help=f"network: {', '.join(MODELS)} (default lenet5)")
    _add_data_args(cg)
    cg.add_argument("--checkpoint", default=None,
                    help="pre-trained network (from `pretrain`); default: the one shipped for --model/--dataset")
    cg.add_argument("--guides", type=_choice_list(GUIDES), default=list(GUIDES),
                    help=f"comma-separated guides (default all: {','.join(GUIDES)})")
    cg.add_argument("--seeds", type=parse_seeds, default=[0, 1, 2],
                    help="a count N (seeds 0..N-1) or comma-separated seeds, e.g. 5, for seed 5 alone (default 3)")
    _add_switch_args(cg, guide=False)
    cgcut = cg.add_mutually_exclusive_group()
    cgcut.add_argument("--arch", help="the common architecture every guide prunes to (default: --rate 0.5)")
    cgcut.add_argument("--rate", type=_rate, help="fraction of every layer's units to remove (default 0.5)")
    cg.add_argument("--finetune-epochs", type=_nonneg_int, default=5, help="fine-tuning epochs after pruning (default 5)")
    cg.add_argument("--finetune-lr", type=_positive_float, default=2e-3, help="fine-tuning Adam learning rate (default 2e-3)")
    cg.add_argument("--elbo-particles", type=_positive_int, default=16,
                    help="particles per minibatch of the final ELBO estimate (default 16)")
    cg.add_argument("--elbo-batches", type=_positive_int, default=20,
                    help="minibatches of the final ELBO estimate (default 20)")
    _add_out_args(cg)

    from .search import add_search_parser

    add_search_parser(sub)

    ev = sub.add_parser("evaluate", help="test error and size of a saved network",
                        description="Load a checkpoint (pre-trained or pruned) in a fresh process and report its "
                                    "test error, parameters and MACs as JSON on stdout.")
    ev.add_argument("checkpoint", help="a model.pt or pruned.pt written by pretrain or prune")
    _add_data_args(ev, dataset_default=None, split=False)
    ev.add_argument("--allow-pickle", action="store_true",
                    help="also load a pickled network (the pruned.pt of a --model-file run, or a torch.save(model) "
                         "file); this UNPICKLES AND RUNS ARBITRARY CODE: only for files you trust")
    return parser


def _set_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _switch_config(args: argparse.Namespace) -> SwitchConfig:
    return SwitchConfig(
        guide=getattr(args, "guide", SwitchConfig.guide), elbo=args.elbo, particles=args.particles, alpha0=args.alpha0,
        init_concentration=args.init_concentration, floor=args.floor, lr=args.switch_lr,
        epochs=args.switch_epochs, batch_size=args.switch_batch_size, schedule=args.schedule,
        scale=args.switch_scale, sampling=args.switch_sampling, seed=getattr(args, "seed", 0), gain=args.switch_gain,
    )


def _pretrain(args: argparse.Namespace) -> dict:
    from .models import check_model_name
    from .pipeline import PretrainConfig, run_pretrain

    check_model_name(args.model)
    cfg = PretrainConfig(
        model=args.model, dataset=args.dataset, data_dir=args.data_dir, widths=args.widths,
        width_multiplier=args.width_multiplier,
        train=_train_config(args, args.model, "pretrain", epochs=args.epochs, lr=args.lr, batch_size=args.batch_size),
        val_size=args.val_size, split_seed=args.split_seed, max_train_examples=args.max_train_examples,
    )
    report = run_pretrain(cfg, args.out, args.overwrite, args.resume, args.checkpoint_every)
    m = report["metrics"]
    print(f"pretrained {args.model} on {args.dataset}: test error {m['test']['error']:.4f}, "
          f"{m['params']} params, {m['macs']} MACs -> {args.out}")
    return report


def _prune(args: argparse.Namespace) -> dict:
    from .pipeline import PruneConfig, run_prune

    if args.model_file is not None and (args.model is not None or args.checkpoint is not None):
        raise UserError("--model-file replaces --model and --checkpoint; give one or the other")
    if args.model_file is None and args.input_shape is not None:
        raise UserError("--input-shape goes with --model-file")
    model = None if args.model_file is not None else (args.model or "lenet5")
    cfg = PruneConfig(
        model=model, dataset=args.dataset, data_dir=args.data_dir, checkpoint=args.checkpoint,
        switch=_switch_config(args),
        cutoff=args.cutoff, arch=args.arch, rate=args.rate, tau=args.tau, delta=args.delta,
        target_macs=args.target_macs, target_params=args.target_params,
        finetune=_train_config(args, model, "finetune", "finetune-", epochs=args.finetune_epochs, lr=args.finetune_lr),
        seed=args.seed, val_size=args.val_size, split_seed=args.split_seed,
        max_train_examples=args.max_train_examples, model_file=args.model_file, input_shape=args.input_shape,
        layers=args.layers, device=args.device,
    )
    r = run_prune(cfg, args.out, args.overwrite, args.resume, args.checkpoint_every)
    if r["architecture"]["pruned"] == r["architecture"]["base"] and r["cutoff"]["kind"] == "uncertainty":
        hint = ("with --switch-scale dim this is the rule rather than the exception (README: uncertainty "
                "cut-off). Try the default --switch-scale simplex --schedule sequential, "
                if cfg.switch.scale == "dim" else "Try ")
        print(f"{PROG}: note: the posterior is confident that no unit is unimportant (P(D*s < {cfg.tau}) < "
              f"{1 - cfg.delta:g} for every unit), so nothing was removed; {hint}a larger --tau or --delta, or a "
              f"budget (--target-macs/--target-params).", file=sys.stderr)
    print(
        f"{r['architecture']['base']} -> {r['architecture']['pruned']}: test error "
        f"{r['base']['test']['error']:.4f} (base), {r['pruned']['test']['error']:.4f} (pruned), "
        f"{r['finetuned']['test']['error']:.4f} (fine-tuned); params {r['base']['params']} -> "
        f"{r['finetuned']['params']}, MACs {r['base']['macs']} -> {r['finetuned']['macs']}; "
        f"{r['timings_seconds']['total']:.1f} s -> {args.out}"
    )
    return r


def _compare(args: argparse.Namespace) -> dict:
    from .compare import CompareConfig, run_compare
    from .training import TrainConfig

    cfg = CompareConfig(
        model=args.model, dataset=args.dataset, data_dir=args.data_dir, checkpoint=args.checkpoint,
        guides=args.guides, seeds=args.seeds, switch=_switch_config(args), arch=args.arch, rate=args.rate,
        finetune=TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, augment_shift=2),
        elbo_particles=args.elbo_particles, elbo_batches=args.elbo_batches, val_size=args.val_size,
        split_seed=args.split_seed, max_train_examples=args.max_train_examples,
    )
    r = run_compare(cfg, args.out, args.overwrite, args.resume)
    print(f"compared {len(cfg.guides)} guides x {len(cfg.seeds)} seeds on {args.dataset} "
          f"(pruned to {r['architecture']}) in {r['seconds']:.0f} s -> {args.out}/table.md")
    return r


def _search(args: argparse.Namespace) -> dict:
    from .search import run_search_cli

    return run_search_cli(args)


def _evaluate(args: argparse.Namespace) -> dict:
    from .metrics import count_macs, count_params
    from .models import discover_switch_points
    from .models.checkpoint import load_checkpoint
    from .models.user import check_model_io
    from .training import evaluate

    net, info = load_checkpoint(args.checkpoint, allow_pickle=args.allow_pickle)
    dataset = args.dataset or info.get("dataset")
    if dataset is None:
        raise UserError(f"{args.checkpoint} does not say which data set it takes; pass --dataset")
    data = load_data(dataset, args.data_dir, val_size=0)
    if "input_shape" not in info:  # a bare pickled network: check that it takes the data
        check_model_io(net, data.input_shape, data.num_classes, what=f"the network of {args.checkpoint}")
    elif tuple(info["input_shape"]) != tuple(data.input_shape) or info["num_classes"] != data.num_classes:
        raise UserError(f"checkpoint {args.checkpoint} does not take {dataset} inputs")
    if hasattr(net, "switch_points"):
        points = net.switch_points()
    else:  # a user's network: the layers it was pruned at, else the prunable ones
        points = discover_switch_points(net, data.input_shape, info.get("layers"))
    result = {
        "checkpoint": args.checkpoint,
        "model": info.get("model", "user"),
        "dataset": dataset,
        "arch": "-".join(str(p.width) for p in points),
        "params": count_params(net),
        "macs": count_macs(net, data.input_shape),
        "test": evaluate(net, data.test),
    }
    print(json.dumps(result))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _set_threads(getattr(args, "threads", None))
        {"pretrain": _pretrain, "prune": _prune, "compare-guides": _compare, "search": _search,
         "evaluate": _evaluate}[args.command](args)
    except UserError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except NumericalError as exc:
        print(f"{PROG}: numerical error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
