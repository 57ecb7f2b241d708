"""``dirichlet-prune prune``: learn switches, prune physically, fine-tune (``pipeline.run_prune``)."""
from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from ..models import MODEL_NAMES
from .options import (PROG, add_checkpoint_arg, add_data_args, add_out_args, add_seed_arg, add_switch_args,
                      add_train_args, nonneg_int, number, positive_float, positive_int, rate, switch_config,
                      train_config, unit_interval)


def add_parser(sub) -> argparse.ArgumentParser:
    from ..pipeline import CUTOFFS, DELTA, TAU
    from ..pruning.decision import DEFAULT_EXAMPLES, DEFAULT_LAM, MEASURES
    from ..training import SCHEDULES
    from ..pruning.ranking import RANKINGS

    p = sub.add_parser(
        "prune", help="learn switches, prune physically, fine-tune",
        description="Fit a Dirichlet posterior over the importance switch s_l of every prunable layer l of a "
                    "frozen pre-trained network by SVI: by default (--switch-scale simplex, --schedule sequential, "
                    "the paper's model) the layer's output is multiplied by GAIN*s_l and the layers learn one at a "
                    "time, input first. Then choose the units to keep: by default the uncertainty cut-off removes "
                    "unit j of layer l when the posterior is confident that it is unimportant, "
                    "P(D_l*s_lj < TAU) >= 1 - DELTA; --arch and --rate keep the units with the highest posterior "
                    "means E[s_lj]; --target-macs/--target-params remove units until a budget is met. The other "
                    "units are removed physically and the network is fine-tuned. The network is a registered "
                    "one (--model, --checkpoint) or your own (--model-file).")
    p.add_argument("--model", default=None,
                   help=f"network: {', '.join(MODEL_NAMES)} (default lenet5, unless --model-file is given)")
    add_data_args(p)
    add_checkpoint_arg(p)
    p.add_argument("--model-file", default=None,
                   help="your own pre-trained network instead of --model: a whole nn.Module saved with "
                        "torch.save(model); the module that defines its class must be importable (on PYTHONPATH "
                        "or installed) when you run this. It is loaded with torch.load(weights_only=False), which "
                        "UNPICKLES AND RUNS ARBITRARY CODE: only give files you trust. Its prunable layers are "
                        "found automatically (see --layers); the pruned network is saved the same way")
    p.add_argument("--input-shape", default=None,
                   help="input shape of --model-file without the batch dimension, e.g. 3,32,32; must be the data "
                        "set's (default: the data set's)")
    p.add_argument("--layers", type=lambda t: [x.strip() for x in t.split(",") if x.strip()], default=None,
                   help="comma-separated names of the layers to switch and prune (module names for --model-file, "
                        "switch-point names for --model); default: every prunable layer")
    add_switch_args(p)
    p.add_argument("--cutoff", choices=CUTOFFS, default=None,
                   help="which units go. uncertainty (the default when no --arch/--rate/--target-* is given): "
                        "unit j of layer l is removed when the posterior is confident it is unimportant, "
                        "P(D_l*s_lj < TAU) >= 1 - DELTA; a layer always keeps its unit of highest posterior mean. "
                        "budget: remove units across all layers in order of that probability until "
                        "--target-macs/--target-params are met. decision: the units that maximise the expected "
                        "log-likelihood minus LAM times the network's share of its size (--lam), or that lose the least "
                        "log-likelihood per size saved until --target-macs/--target-params are met "
                        "(pruning/decision.py). arch, rate: see --arch, --rate")
    p.add_argument("--tau", type=positive_float, default=TAU,
                   help=f"a unit whose switch D_l*s_lj is below TAU counts as unimportant (1 = its uniform share "
                        f"of the layer; default {TAU}, chosen on the validation split: see README)")
    p.add_argument("--delta", type=number(float, lambda v: 0 < v < 1, "a number in (0, 1)"), default=DELTA,
                   help=f"the uncertainty cut-off removes a unit when P(D_l*s_lj < TAU) >= 1 - DELTA (default {DELTA})")
    p.add_argument("--target-macs", type=positive_int, default=None,
                   help="budget cut-off: largest multiply-accumulates per input of the pruned network")
    p.add_argument("--target-params", type=positive_int, default=None,
                   help="budget cut-off: largest number of conv/linear weights and biases of the pruned network")
    p.add_argument("--lam", type=number(float, lambda v: v >= 0, "a non-negative number"), default=None,
                   help=f"decision cut-off: the price of the network's whole size in nats per example of expected "
                        f"log-likelihood (default {DEFAULT_LAM} with --cutoff decision)")
    p.add_argument("--decision-measure", choices=MEASURES, default="macs+params",
                   help="decision cut-off: the size that --lam prices: the share of the MACs, of the params, or the "
                        "mean of the two (default macs+params)")
    p.add_argument("--decision-examples", type=positive_int, default=DEFAULT_EXAMPLES,
                   help=f"decision cut-off: training examples of the expected log-likelihood (default {DEFAULT_EXAMPLES})")
    p.add_argument("--decision-draws", type=nonneg_int, default=0,
                   help="decision cut-off with --learn-weights: posterior switch draws the log-likelihood is averaged "
                        "over (default 0: the network at the posterior mean)")
    p.add_argument("--rounds", type=positive_int, default=1,
                   help="rounds of switch learning and cut-off: after a round that removed units, the smaller "
                        "network is fitted again (its weights as they learned, with --learn-weights) until the cut-off "
                        "removes nothing or N rounds are done; each round is in the report (default 1)")
    cut = p.add_mutually_exclusive_group()
    cut.add_argument("--arch", help="units to keep per prunable layer, e.g. 6-8-40-20: those with the highest "
                                    "posterior means E[s_lj]")
    cut.add_argument("--rate", type=rate, help="fraction of every layer's units to remove, e.g. 0.5: the units "
                                               "with the lowest posterior means E[s_lj] go")
    p.add_argument("--ranking", choices=list(RANKINGS), default=None,
                   help="how --arch and --rate rank the units (default posterior-mean: the posterior means E[s_lj] "
                        "of the fitted switches). dirichlet, dirichlet-mean: the posterior means under that guide "
                        "(fitted again when --guide names another); prob-below: 1 - P(D_l*s_lj < TAU); l1, l2: the "
                        "norm of a unit's incoming weights; fisher: the loss increase Fisher pruning predicts for "
                        "removing the unit; greedy: loss-based greedy elimination, layer by layer, on 1,000 "
                        "training examples (no posterior); random: seeded uniform scores")
    p.add_argument("--finetune-epochs", type=nonneg_int, default=None,
                   help="fine-tuning epochs, best validation epoch kept; under the plateau schedule (the LeNets' "
                        "default) the most it may run (default 40; 80 for the LeNets on Fashion-MNIST: "
                        "docs/finetuning.md)")
    p.add_argument("--finetune-patience", type=positive_int, default=None,
                   help="stop fine-tuning once the validation error has not improved for N epochs (the best epoch "
                        "is kept; default: run all --finetune-epochs); with --finetune-schedule plateau, the epochs "
                        "without progress before each cut of the rate and before the end (default 2)")
    p.add_argument("--finetune-min-epochs", type=nonneg_int, default=None,
                   help="with --finetune-patience or the plateau schedule, fine-tune at least N epochs (default 0)")
    p.add_argument("--finetune-lr", type=positive_float, default=None,
                   help="fine-tuning (peak) learning rate (default 2e-3 for the LeNets (Adam), 0.01 otherwise (SGD))")
    p.add_argument("--finetune-batch-size", type=positive_int, default=None,
                   help="fine-tuning minibatch size (default 128)")
    p.add_argument("--finetune-schedule", choices=SCHEDULES, default=None,
                   help="learning-rate schedule of fine-tuning: cosine decay to zero, onecycle (up over the first "
                        "30%% of the steps, then down), or plateau (the rate held until the validation error stops "
                        "improving for --finetune-patience epochs, then cut tenfold, twice; the next plateau ends the "
                        "run, --finetune-epochs being the cap) (default plateau for the LeNets, cosine otherwise)")
    p.add_argument("--distill", action=argparse.BooleanOptionalAction, default=None,
                   help="fine-tune by distillation from the network before pruning: loss (1-W)*CE + W*T^2*KL(teacher "
                        "|| student) at temperature T (default off; on the plateau schedule it lowered a LeNet-5's validation error on MNIST by about 0.05 points at 1.6 times the time an epoch: docs/finetuning.md)")
    p.add_argument("--distill-temperature", type=positive_float, default=None, metavar="T",
                   help="temperature T of distillation (default 4)")
    p.add_argument("--distill-weight", type=unit_interval, default=None, metavar="W",
                   help="weight W of the distillation term, in [0, 1] (default 0.9)")
    add_train_args(p, "finetune-", "fine-tuning")
    p.add_argument("--no-latency", dest="latency", action="store_false",
                   help="do not time the base and the pruned network's forward passes (by default report.json's "
                        "latency holds their median times on the CPU at batch 1 and 256, one and all threads, and "
                        "on the GPU with --device cuda, with the speed-up against the MAC reduction)")
    add_seed_arg(p)
    add_out_args(p)
    return p


def run(args: argparse.Namespace) -> dict:
    from ..pipeline import PruneConfig, run_prune

    if args.model_file is not None and (args.model is not None or args.checkpoint is not None):
        raise UserError("--model-file replaces --model and --checkpoint; give one or the other")
    if args.model_file is None and args.input_shape is not None:
        raise UserError("--input-shape goes with --model-file")
    model = None if args.model_file is not None else (args.model or "lenet5")
    finetune = train_config(args, model, "finetune", "finetune-", epochs=args.finetune_epochs, lr=args.finetune_lr,
                            batch_size=args.finetune_batch_size, schedule=args.finetune_schedule,
                            distill=args.distill, temperature=args.distill_temperature,
                            distill_weight=args.distill_weight, patience=args.finetune_patience,
                            min_epochs=args.finetune_min_epochs)
    if args.finetune_min_epochs is not None and args.finetune_patience is None and finetune.schedule != "plateau":
        raise UserError("--finetune-min-epochs goes with --finetune-patience or --finetune-schedule plateau")
    cfg = PruneConfig(
        model=model, dataset=args.dataset, data_dir=args.data_dir, checkpoint=args.checkpoint,
        switch=switch_config(args),
        cutoff=args.cutoff, arch=args.arch, rate=args.rate, tau=args.tau, delta=args.delta,
        target_macs=args.target_macs, target_params=args.target_params,
        finetune=finetune,
        seed=args.seed, val_size=args.val_size, split_seed=args.split_seed,
        max_train_examples=args.max_train_examples, model_file=args.model_file, input_shape=args.input_shape,
        layers=args.layers, device=args.device, ranking=args.ranking, latency=args.latency, lam=args.lam,
        decision_measure=args.decision_measure, decision_examples=args.decision_examples,
        decision_draws=args.decision_draws, rounds=args.rounds,
    )
    r = run_prune(cfg, args.out, args.overwrite, args.resume, args.checkpoint_every)
    if r["architecture"]["pruned"] == r["architecture"]["base"] and r["cutoff"]["kind"] == "uncertainty":
        hint = ("with --switch-scale dim this is the rule rather than the exception (README: uncertainty "
                "cut-off). Try the default --switch-scale simplex --schedule sequential, "
                if cfg.switch.scale == "dim" else "Try ")
        print(f"{PROG}: note: the posterior is confident that no unit is unimportant (P(D*s < {cfg.tau}) < "
              f"{1 - cfg.delta:g} for every unit), so nothing was removed; {hint}a larger --tau or --delta, or a "
              f"budget (--target-macs/--target-params).", file=sys.stderr)
    if r["cutoff"]["kind"] == "decision" and not r["cutoff"].get("reads_posterior", True):
        print(f"{PROG}: note: the decision cut-off read no posterior here: it is loss-based greedy elimination on "
              f"the network's own log-likelihood (the posterior enters only with --learn-weights and "
              f"--decision-draws); posterior.json still reports the switch fit", file=sys.stderr)
    convergence = r["switches"].get("convergence")
    if convergence is not None:
        unsettled = ["+".join(st["layers"]) for st in convergence["stages"] if not st["converged"]]
        if unsettled:
            then = ("the quadratic settle then set every concentration, which is "
                    "what the intervals rest on" if r["posterior"]["intervals"].startswith("quadratic") else
                    "what it reports still moves with the optimiser's budget")
            print(f"{PROG}: warning: switch learning did not converge within --switch-epochs "
                  f"{convergence['cap_epochs']} in {', '.join(unsettled)}: {then} (report.json: switches.convergence)",
                  file=sys.stderr)
        else:
            print("switch learning converged: " + ", ".join(f"{'+'.join(st['layers'])} after {st['steps']} steps"
                                                           for st in convergence["stages"]))
    if r["left_out_layers"]:
        print("left out of switching: " + "; ".join(f"{e['layer']} ({e['reason']})" for e in r["left_out_layers"]))
    print(
        f"{r['architecture']['base']} -> {r['architecture']['pruned']}: test error "
        f"{r['base']['test']['error']:.4f} (base), {r['pruned']['test']['error']:.4f} (pruned), "
        f"{r['finetuned']['test']['error']:.4f} (fine-tuned); params {r['base']['params']} -> "
        f"{r['finetuned']['params']}, MACs {r['base']['macs']} -> {r['finetuned']['macs']}; "
        f"{r['timings_seconds']['total']:.1f} s -> {args.out}"
    )
    if "latency" in r:
        print(latency_line(r["latency"]["cpu"]))
    return r


def latency_line(cpu: dict) -> str:
    """One line of a report's CPU latency: the speed-up at one thread per batch size."""
    cells = [c for c in cpu["cells"] if c["threads"] == 1]
    speedups = ", ".join(f"{c['speedup']:.2f}x at batch {c['batch']}" for c in cells)
    reduction = cells[0]["mac_reduction"] if cells else float("nan")
    return (f"measured CPU speed-up, one thread (median of interleaved repeats): {speedups}; "
            f"MACs {reduction:.2f}x fewer")
