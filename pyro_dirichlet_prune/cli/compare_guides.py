"""``dirichlet-prune compare-guides``: every switch guide on the same network, data and seeds
(``compare.run_compare``)."""
from __future__ import annotations

import argparse

from ..inference.builders import GUIDES
from ..models import MODELS
from .options import (add_checkpoint_arg, add_data_args, add_out_args, add_runner_args, add_switch_args, choice_list,
                      nonneg_int, parse_seeds, positive_float, positive_int, rate, switch_config)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("compare-guides", help="every switch guide on the same network, data and seeds",
                       description="Fit every switch guide (Dirichlet, its mean variant and Pyro's AutoNormal, "
                                   "AutoDelta, AutoLowRankMultivariateNormal) to the same pre-trained network with "
                                   "the same seeds; tabulate the final ELBO, held-out log-likelihood and error at "
                                   "the posterior mean, test error after pruning to one architecture before and "
                                   "after fine-tuning, Kendall's tau between the guides' rankings and wall time "
                                   "(table.md, table.json, compare.png, kendall.png, report.json).")
    p.add_argument("--model", default="lenet5", help=f"network: {', '.join(MODELS)} (default lenet5)")
    add_data_args(p)
    add_checkpoint_arg(p)
    p.add_argument("--guides", type=choice_list(GUIDES), default=list(GUIDES),
                   help=f"comma-separated guides (default all: {','.join(GUIDES)})")
    p.add_argument("--seeds", type=parse_seeds, default=[0, 1, 2],
                   help="a count N (seeds 0..N-1) or comma-separated seeds, e.g. 5, for seed 5 alone (default 3)")
    add_switch_args(p, guide=False)
    cut = p.add_mutually_exclusive_group()
    cut.add_argument("--arch", help="the common architecture every guide prunes to (default: --rate 0.5)")
    cut.add_argument("--rate", type=rate, help="fraction of every layer's units to remove (default 0.5)")
    p.add_argument("--finetune-epochs", type=nonneg_int, default=5, help="fine-tuning epochs after pruning (default 5)")
    p.add_argument("--finetune-lr", type=positive_float, default=2e-3,
                   help="fine-tuning Adam learning rate (default 2e-3)")
    p.add_argument("--elbo-particles", type=positive_int, default=16,
                   help="particles per minibatch of the final ELBO estimate (default 16)")
    p.add_argument("--elbo-batches", type=positive_int, default=20,
                   help="minibatches of the final ELBO estimate (default 20)")
    p.add_argument("--predictive-draws", type=positive_int, default=32,
                   help="posterior draws of the held-out predictive check, per stage of a layer-by-layer fit "
                        "(default 32)")
    add_out_args(p)
    add_runner_args(p, "(guide, seed) fits")
    return p


def run(args: argparse.Namespace) -> dict:
    from ..compare import CompareConfig, run_compare
    from ..training import TrainConfig

    cfg = CompareConfig(
        model=args.model, dataset=args.dataset, data_dir=args.data_dir, checkpoint=args.checkpoint,
        guides=args.guides, seeds=args.seeds, switch=switch_config(args), arch=args.arch, rate=args.rate,
        finetune=TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, augment_shift=2),
        elbo_particles=args.elbo_particles, elbo_batches=args.elbo_batches,
        predictive_draws=args.predictive_draws, val_size=args.val_size,
        split_seed=args.split_seed, max_train_examples=args.max_train_examples,
    )
    r = run_compare(cfg, args.out, args.overwrite, args.resume, args.jobs, args.scheduler)
    print(f"compared {len(cfg.guides)} guides x {len(cfg.seeds)} seeds on {args.dataset} "
          f"(pruned to {r['architecture']}) in {r['seconds']:.0f} s -> {args.out}/table.md")
    return r
