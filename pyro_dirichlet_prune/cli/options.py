"""What the sub-commands share: the parser whose errors are one line, value types that check
ranges, the data/output/training/switch options, and the translation of library argument names
in error messages into the command line's flags."""
from __future__ import annotations

import argparse
import json
import re
import sys
from typing import NoReturn

from ..data import DATASETS
from ..inference.builders import GUIDES
from ..inference.svi import CONCENTRATIONS, ELBOS, EPOCH_CURVATURE_EXAMPLES, SCHEDULES, SwitchConfig
from ..models.switched import SAMPLINGS, SCALES
from ..training import OPTIMIZERS

PROG = "dirichlet-prune"


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose errors (a bad value, an unknown option, a missing
    one) are the one line ``dirichlet-prune: error: <message>`` on stderr and exit status 2, as
    for every other error of the command line; ``-h``/``--help`` show the full usage. The
    sub-command parsers are of this class too (``add_subparsers`` uses the parent's class)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str) -> NoReturn:
        command = self.prog[len(PROG):].strip() if self.prog.startswith(PROG) else ""
        hint = f" (see {PROG} {command} --help)" if command else f" (see {PROG} --help)"
        self.exit(2, f"{PROG}: error: {message}{hint}\n")


def number(kind: type, ok, expected: str):
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


positive_int = number(int, lambda v: v >= 1, "a positive integer")
nonneg_int = number(int, lambda v: v >= 0, "a non-negative integer")
positive_float = number(float, lambda v: 0 < v < float("inf"), "a positive finite number")
nonneg_float = number(float, lambda v: 0 <= v < float("inf"), "a non-negative finite number")
rate = number(float, lambda v: 0.0 <= v < 1.0, "a fraction in [0, 1)")
unit_interval = number(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def choice_list(choices):
    """An argparse type: a comma-separated list of distinct ``choices``."""

    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if not items or bad or len(set(items)) != len(items):
            raise argparse.ArgumentTypeError(
                f"expected distinct names from {', '.join(choices)}, got {text!r}")
        return items

    return parse


def parse_seeds(text: str) -> list[int]:
    """``"3"`` → seeds 0, 1, 2 (a count); ``"0,4,7"`` → those seeds; ``"5,"`` → seed 5 alone."""
    text = text.strip()
    try:
        if "," not in text:
            n = int(text)
            if n < 1:
                raise argparse.ArgumentTypeError(f"expected a positive count of seeds, got {text!r}")
            return list(range(n))
        seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or comma-separated seeds, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct non-negative seeds, got {text!r}")
    return seeds


def parse_json_object(text: str) -> dict:
    """An argparse type: a JSON object such as ``'{"lr": 0.01}'``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


# ----------------------------------------------------------------------------- library messages

_ARGUMENT = re.compile(r"(?<![\w/.\-])(?:([a-z][a-z0-9_]*)=(True|[A-Z][A-Z_]*|'[\w.\-]+')"
                       r"|([a-z][a-z0-9]*(?:_[a-z0-9]+)+))(?![\w/\-]|\.\w)")


def _flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``{dest: "--flag"}`` of the options of ``parser``."""
    out = {}
    for action in parser._actions:
        long = [s for s in action.option_strings if s.startswith("--")]
        if long and action.dest not in out:
            out[action.dest] = long[0]
    return out


def flag_words(message: str, parser: ArgumentParser, command: str | None = None) -> str:
    """A library message in the command line's words. The library names the arguments a caller
    can set (``resume=True``, ``checkpoint=PATH``, ``elbo='trace'``, ``input_shape``); here they
    become the flags that set them (``--resume``, ``--checkpoint PATH``, ``--elbo trace``,
    ``--input-shape``). A bare name (with an underscore) is translated only when it is an option
    of ``command``; a ``name=VALUE`` also when it is an option of another sub-command. Anything
    else stays as it is."""
    own = _flags(parser.commands[command]) if command in parser.commands else {}
    flags: dict[str, str] = {}
    for name, sub in parser.commands.items():
        if name != command:
            flags.update(_flags(sub))
    flags.update(own)

    def replace(m: re.Match) -> str:
        if m.group(1):
            flag = flags.get(m.group(1))
            if flag is None:
                return m.group(0)
            value = m.group(2).strip("'")
            return flag if value == "True" else f"{flag} {value}"
        return own.get(m.group(3), m.group(0))

    return _ARGUMENT.sub(replace, message)


def set_threads(n: int | None) -> int:
    """torch's CPU threads: ``n``, else torch's own default (``OMP_NUM_THREADS`` when set, else the
    machine's cores) capped at the cores this process may run on (its CPU affinity). Returns the
    number set."""
    import torch

    from ..latency import all_threads

    n = n or min(torch.get_num_threads(), all_threads())
    torch.set_num_threads(n)
    return n


def print_error(kind: str, message: str) -> None:
    print(f"{PROG}: {kind}: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------- shared options


def add_data_args(p: argparse.ArgumentParser, dataset_default: str | None = "mnist", split: bool = True) -> None:
    p.add_argument("--dataset", choices=DATASETS, default=dataset_default,
                   help="data set (fake-* are torchvision FakeData, for runs with no data)"
                   + (f"; default {dataset_default}" if dataset_default else "; default: the checkpoint's"))
    p.add_argument("--data-dir", default=None,
                   help="folder in torchvision's layout (default $DATA_DIR, else ./data); Fashion-MNIST is also "
                        "found under /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist)")
    if not split:
        return
    p.add_argument("--val-size", type=positive_int, default=5000,
                   help="examples of the training set held out for validation (default 5000)")
    p.add_argument("--split-seed", type=nonneg_int, default=0,
                   help="seed of the train/validation split, shared by pre-training and pruning (default 0)")
    p.add_argument("--max-train-examples", type=positive_int, default=None,
                   help="use only the first N training examples (quick runs and smoke tests)")


def add_checkpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None,
                   help="pre-trained network (from `pretrain`); default: the one shipped for --model/--dataset")


def add_allow_pickle_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-pickle", action="store_true",
                   help="also load a pickled network (the pruned.pt of a --model-file run, or a torch.save(model) "
                        "file); this UNPICKLES AND RUNS ARBITRARY CODE: only for files you trust")


def add_seed_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default 0)")


def add_out_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder; written only when the run succeeds")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output folder (and discard an interrupted run of it)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same --out from its last saved state (same options)")
    p.add_argument("--checkpoint-every", type=positive_int, default=100,
                   help="save the state of training loops every N steps, for --resume (default 100)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: OMP_NUM_THREADS when set, else the cores this process may run on; idle threads spin only briefly, GOMP_SPINCOUNT=1000, so that runs side by side do not spin against each other)")


def add_train_args(p: argparse.ArgumentParser, prefix: str, what: str) -> None:
    """Optimiser and augmentation options of pre-training (``prefix`` "") or fine-tuning
    (``prefix`` "finetune-"); None where the model's default applies (``pipeline.train_defaults``)."""
    p.add_argument(f"--{prefix}optimizer", choices=OPTIMIZERS, default=None,
                   help=f"{what} optimiser: adam, or sgd with Nesterov momentum 0.9 (default: adam for the LeNets, "
                        f"sgd otherwise)")
    p.add_argument(f"--{prefix}weight-decay", type=nonneg_float, default=None,
                   help=f"{what} weight decay (default 0 for the LeNets, 5e-4 otherwise)")
    p.add_argument("--augment-shift", type=nonneg_int, default=None,
                   help=f"random translation during {what} by up to N pixels, edges repeated (default 2 for "
                        f"1-channel images, 0 for CIFAR; 0 turns it off)")
    p.add_argument("--augment-crop", type=nonneg_int, default=None,
                   help=f"random crop during {what} of the image zero-padded by N pixels (default 4 for CIFAR, "
                        f"0 otherwise)")
    p.add_argument("--augment-flip", action=argparse.BooleanOptionalAction, default=None,
                   help=f"random horizontal flips during {what} (default: on for CIFAR, off otherwise)")
    p.add_argument("--device", default="cpu",
                   help=f"cpu, or cuda (cuda:N) to run {what} on a GPU (default cpu)")


def train_config(args: argparse.Namespace, model: str | None, stage: str, prefix: str = "", **given):
    """A ``TrainConfig`` from the options given, the model's defaults for the others."""
    from ..pipeline import train_defaults
    from ..training import TrainConfig

    d = train_defaults(model, args.dataset, stage)
    dest = prefix.replace("-", "_")
    options = {"optimizer": getattr(args, f"{dest}optimizer"), "weight_decay": getattr(args, f"{dest}weight_decay"),
               "augment_shift": args.augment_shift, "augment_crop": args.augment_crop,
               "augment_flip": args.augment_flip, **given}
    return TrainConfig(**(d | {k: v for k, v in options.items() if v is not None}), seed=args.seed, device=args.device)


def _option(p: argparse.ArgumentParser, flag: str, default, what: str, after: str = "", shown: str | None = None,
            **kwargs) -> None:
    """Add ``flag`` with help ``WHAT (default DEFAULT AFTER)`` (``shown`` in place of DEFAULT if given)."""
    shown = default if shown is None else shown
    p.add_argument(flag, default=default, help=f"{what} (default {shown}{after})", **kwargs)


def add_switch_args(p: argparse.ArgumentParser, guide: bool = True) -> None:
    """Options of switch learning (``SwitchConfig``)."""
    d = SwitchConfig()
    if guide:
        _option(p, "--guide", d.guide, "dirichlet: sampled switches; dirichlet-mean: likelihood at the Dirichlet mean "
                "plus closed-form KL; normal, delta, lowrank: Pyro's AutoNormal (logistic-normal switches), AutoDelta "
                "(MAP), AutoLowRankMultivariateNormal, fitted with Trace_ELBO", choices=GUIDES)
    _option(p, "--elbo", d.elbo, "trace: Trace_ELBO (Monte-Carlo KL); meanfield: TraceMeanField_ELBO (closed-form KL)",
            "; ignored by dirichlet-mean", choices=ELBOS)
    _option(p, "--particles", d.particles, "Monte-Carlo switch samples per step", type=positive_int)
    _option(p, "--switch-scale", d.scale, "simplex: a layer's output is multiplied by GAIN*s_l, as written in the paper "
            "(the likelihood then pushes the switch mass onto the units that matter); dim: multiplied by D_l*s_l, so "
            "the prior mean is the pre-trained network", choices=SCALES)
    _option(p, "--switch-gain", d.gain, "with --switch-scale simplex, multiply a layer's output by GAIN*s_l: the units "
            "that carry the switch mass, and so the widths the uncertainty cut-off keeps, grow with it "
            "(benchmarks/switch_gain.py)", ", the paper's", shown=f"{d.gain:g}", type=positive_float)
    _option(p, "--schedule", d.schedule, "sequential: the layers learn one at a time, input first, the others carrying "
            "no switch (the pre-trained network), as in the paper; joint: all layers' switches at once",
            choices=SCHEDULES)
    _option(p, "--alpha0", d.alpha0, "concentration of the symmetric Dirichlet prior", type=positive_float)
    _option(p, "--init-concentration", d.init_concentration, "initial guide concentration of every unit",
            type=positive_float)
    _option(p, "--concentration", d.concentration, "auto: quadratic for the dirichlet and dirichlet-mean guides on "
            "frozen weights when switched units x MACs per example <= 2e8 (LeNet-5, not VGG-16), fitted otherwise; "
            "fitted: the guide's concentrations as switch learning left them "
            "(their total still carries --init-concentration and the epoch budget); settled: each layer's total set "
            "after the fit to the ELBO's optimum given the fitted means, from the likelihood's curvature "
            "(inference/concentration.py; dirichlet and dirichlet-mean guides, frozen weights); quadratic: every "
            "concentration set after the fit to the optimum of the ELBO's quadratic expansion about the fitted means "
            "(the gradient of every training example, the exact Hessian on --curvature-examples; the step kept, "
            "whole or a quarter, only where it raises the whole training set's ELBO, in up to --settle-rounds rounds; "
            "with iterate averaging and 3 epochs a stage, the recipe of docs/convergence.md: on LeNet-5 its widths "
            "move by at most 4%% with --init-concentration or the budget)",
            choices=CONCENTRATIONS)
    p.add_argument("--switch-until-converged", action="store_true",
                   help="end each stage of switch learning when it has converged (inference/convergence.py: the "
                        "loss and each layer's total concentration, or its means with --concentration settled, "
                        "steady over epochs), --switch-epochs being the cap; report.json's switches.convergence "
                        "has the traces, and a stage that hits the cap unconverged is named on stderr")
    _option(p, "--curvature-probes", d.curvature_probes, "with --concentration settled, estimate each layer's "
            "curvature from this many random probes a minibatch instead of exactly (one backward pass per unit)",
            type=positive_int)
    p.add_argument("--curvature-examples", type=positive_int, default=d.curvature_examples, metavar="N",
                   help=f"with --concentration settled or quadratic, the first N training examples give the "
                        f"curvature that settles the concentrations after the fit, scaled to the whole split (default "
                        f"{d.curvature_examples}; at every epoch end the first {EPOCH_CURVATURE_EXAMPLES} do)")
    _option(p, "--settle-rounds", d.settle_rounds, "with --concentration quadratic, up to this many checked Newton "
            "steps a layer, each from where the last landed, ending at the first that takes none or gains under a "
            "nat on the whole training set (inference/concentration.py)", type=positive_int)
    _option(p, "--switch-lr-decay", d.lr_decay, "step t of a stage of switch learning is taken at "
            "lr*(1+t/T)^-DECAY, T one epoch: 0 keeps the rate constant (its iterates jitter for ever), 1 decays it "
            "as 1/t (Robbins-Monro), so that the means settle", type=unit_interval)
    p.add_argument("--switch-average", action=argparse.BooleanOptionalAction, default=d.average,
                   help="end each stage of switch learning at the mean of the guide's parameters over its last epoch "
                        "(iterate averaging; the default) instead of the last iterate, which wanders about the "
                        "optimum (inference/averaging.py); --no-switch-average: the last iterate")
    _option(p, "--floor", d.floor, "lower bound of guide concentrations", type=positive_float)
    _option(p, "--switch-lr", d.lr, "Adam learning rate of the concentrations", type=positive_float)
    _option(p, "--switch-epochs", d.epochs, "epochs of switch learning, per stage", ", as in the authors' code",
            type=positive_int)
    _option(p, "--switch-batch-size", d.batch_size, "minibatch size of switch learning", type=positive_int)
    _option(p, "--switch-sampling", d.sampling, "shared: one switch draw per layer for the whole minibatch; "
            "per-example: an independent draw for every example (same ELBO, lower-variance gradients; dirichlet "
            "guide only)", choices=SAMPLINGS)
    p.add_argument("--learn-weights", dest="weight_scale", metavar="SIGMA", type=positive_float, default=None,
                   help="learn the network's weights with the switches, as MAP estimates under the prior "
                        "Normal(pre-trained weights, SIGMA^2) (models/weight_prior.py); needs --schedule joint and a "
                        "dirichlet guide (default: the weights stay frozen, the paper's model)")
    _option(p, "--weight-lr", d.weight_lr, "Adam learning rate of the learned weights (--learn-weights)",
            type=positive_float)


def switch_config(args: argparse.Namespace) -> SwitchConfig:
    """The ``SwitchConfig`` of the switch options (``add_switch_args``)."""
    return SwitchConfig(
        guide=getattr(args, "guide", SwitchConfig.guide), elbo=args.elbo, particles=args.particles, alpha0=args.alpha0,
        init_concentration=args.init_concentration, floor=args.floor, lr=args.switch_lr,
        epochs=args.switch_epochs, batch_size=args.switch_batch_size, schedule=args.schedule,
        scale=args.switch_scale, sampling=args.switch_sampling, seed=getattr(args, "seed", 0), gain=args.switch_gain,
        weight_scale=args.weight_scale, weight_lr=args.weight_lr, concentration=args.concentration,
        until_converged=args.switch_until_converged, lr_decay=args.switch_lr_decay,
        curvature_probes=args.curvature_probes, curvature_examples=args.curvature_examples,
        average=args.switch_average, settle_rounds=args.settle_rounds,
    )


def add_runner_args(p: argparse.ArgumentParser, what: str) -> None:
    """``--jobs`` and ``--scheduler``: where the independent jobs of a command run
    (``pyro_dirichlet_prune.jobs``)."""
    p.add_argument("--jobs", type=positive_int, default=1,
                   help=f"Dask workers that compute the {what}: 1 (default) runs them in this process; N starts a "
                        f"local cluster of N worker processes, one torch thread each; the results do not depend on it")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the jobs on an existing Dask cluster instead, e.g. tcp://host:8786 (start one with "
                        "`dask scheduler` and `dask worker ADDRESS --nthreads 1` on every host, or dask-jobqueue "
                        "on SLURM); workers need the data folder and checkpoint at the same paths. This process "
                        "writes every result")
