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
from .models import MODELS
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
                         description="Train a network with Adam and cosine decay; keep the epoch of lowest validation error.")
    pre.add_argument("--model", default="lenet5", help=f"network: {', '.join(MODELS)} (default lenet5)")
    pre.add_argument("--widths", default=None, help="prunable widths, e.g. 10-20-100-25 (default: the model's)")
    _add_data_args(pre)
    pre.add_argument("--epochs", type=_positive_int, default=20, help="training epochs (default 20)")
    pre.add_argument("--lr", type=_positive_float, default=2e-3, help="Adam learning rate (default 2e-3)")
    pre.add_argument("--batch-size", type=_positive_int, default=128, help="minibatch size (default 128)")
    pre.add_argument("--weight-decay", type=_nonneg_float, default=0.0, help="Adam weight decay (default 0)")
    pre.add_argument("--augment-shift", type=_nonneg_int, default=2,
                     help="random translation by up to N pixels (default 2; 0 turns it off)")
    pre.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (default 0)")
    _add_out_args(pre)

    pr = sub.add_parser("prune", help="learn switches, prune physically, fine-tune",
                        description="Fit Dirichlet switch posteriors to a frozen pre-trained network by SVI, "
                                    "rank units by posterior mean, remove the others physically and fine-tune.")
    pr.add_argument("--model", default="lenet5", help=f"network: {', '.join(MODELS)} (default lenet5)")
    _add_data_args(pr)
    pr.add_argument("--checkpoint", default=None,
                    help="pre-trained network (from `pretrain`); default: the one shipped for --model/--dataset")
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
                    help="fine-tuning epochs, Adam with cosine decay, best validation epoch kept (default 40: "
                         "LeNet-5/MNIST 6-8-40-20 reached 1.08%% validation error, against 1.23%% with 20)")
    pr.add_argument("--finetune-lr", type=_positive_float, default=2e-3, help="fine-tuning Adam learning rate (default 2e-3)")
    pr.add_argument("--augment-shift", type=_nonneg_int, default=2,
                    help="random translation during fine-tuning, in pixels (default 2)")
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
        scale=args.switch_scale, sampling=args.switch_sampling, seed=getattr(args, "seed", 0),
    )


def _pretrain(args: argparse.Namespace) -> dict:
    from .pipeline import PretrainConfig, run_pretrain
    from .training import TrainConfig

    cfg = PretrainConfig(
        model=args.model, dataset=args.dataset, data_dir=args.data_dir, widths=args.widths,
        train=TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                          weight_decay=args.weight_decay, augment_shift=args.augment_shift, seed=args.seed),
        val_size=args.val_size, split_seed=args.split_seed, max_train_examples=args.max_train_examples,
    )
    report = run_pretrain(cfg, args.out, args.overwrite, args.resume, args.checkpoint_every)
    m = report["metrics"]
    print(f"pretrained {args.model} on {args.dataset}: test error {m['test']['error']:.4f}, "
          f"{m['params']} params, {m['macs']} MACs -> {args.out}")
    return report


def _prune(args: argparse.Namespace) -> dict:
    from .pipeline import PruneConfig, run_prune
    from .training import TrainConfig

    cfg = PruneConfig(
        model=args.model, dataset=args.dataset, data_dir=args.data_dir, checkpoint=args.checkpoint,
        switch=_switch_config(args),
        cutoff=args.cutoff, arch=args.arch, rate=args.rate, tau=args.tau, delta=args.delta,
        target_macs=args.target_macs, target_params=args.target_params,
        finetune=TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, augment_shift=args.augment_shift,
                             seed=args.seed),
        seed=args.seed, val_size=args.val_size, split_seed=args.split_seed,
        max_train_examples=args.max_train_examples,
    )
    r = run_prune(cfg, args.out, args.overwrite, args.resume, args.checkpoint_every)
    if r["architecture"]["pruned"] == r["architecture"]["base"] and r["cutoff"]["kind"] == "uncertainty":
        print(f"{PROG}: note: the posterior is confident that no unit is unimportant (P(D*s < {cfg.tau}) < "
              f"{1 - cfg.delta:g} for every unit), so nothing was removed; with --switch-scale dim this is the rule "
              f"rather than the exception (README: uncertainty cut-off). Try --switch-scale simplex --schedule "
              f"sequential, a larger --tau or --delta, or a budget (--target-macs/--target-params).", file=sys.stderr)
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
    from .models.checkpoint import load_checkpoint
    from .training import evaluate

    net, info = load_checkpoint(args.checkpoint)
    dataset = args.dataset or info.get("dataset")
    data = load_data(dataset, args.data_dir, val_size=0)
    if tuple(info["input_shape"]) != tuple(data.input_shape) or info["num_classes"] != data.num_classes:
        raise UserError(f"checkpoint {args.checkpoint} does not take {dataset} inputs")
    result = {
        "checkpoint": args.checkpoint,
        "model": info["model"],
        "dataset": dataset,
        "arch": "-".join(map(str, net.widths)),
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
