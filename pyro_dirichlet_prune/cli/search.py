"""``dirichlet-prune search``: the command line of the sub-architecture search (the library is
``pyro_dirichlet_prune.search``; this module only parses options, calls it and prints)."""
from __future__ import annotations

import argparse

import torch

from ..data import DATASETS
from ..inference.svi import SCHEDULES
from ..models.registry import MODEL_NAMES
from ..models.switched import SCALES
from ..pruning.baselines import FISHER_BATCH_SIZE, FISHER_BATCHES
from ..pruning.cutoff import TAU
from ..pruning.ranking import RANKINGS
from ..search import (AUGMENT_SHIFT, DEFAULT_FINETUNE_EPOCHS, FINETUNE_LR, METHODS, SearchConfig, describe,
                      run_search)
from .options import (add_checkpoint_arg, add_runner_args, choice_list, nonneg_int, parse_json_object, parse_seeds,
                      positive_int)

parse_methods = choice_list(tuple(RANKINGS))
"""``"l1,random"`` → ``["l1", "random"]``; distinct names of registered rankings (``RANKINGS``)."""


def add_search_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``search`` sub-command to an argparse ``subparsers`` object; returns its parser."""
    p = subparsers.add_parser(
        "search", help="Fig. 3: rank units by every method, prune to every architecture of a pool, fine-tune",
        description="The sub-architecture search of Adamczewski & Park (2021), Fig. 3: for every seed each method "
                    "ranks the units of the pre-trained network once; for every architecture of the pool the top "
                    "units are kept, the network is physically pruned, fine-tuned briefly and tested. Writes one "
                    "record per (method, seed, architecture) as soon as it is finished (records/), the rankings "
                    "(scores/), summary.json, summary.md (wins, ties, paired comparison with the best baseline) "
                    "and report.json.")
    p.add_argument("--model", default="lenet5", help=f"network: {', '.join(MODEL_NAMES)} (wrn-D-K: e.g. wrn-16-1) (default lenet5)")
    p.add_argument("--dataset", choices=DATASETS, default="mnist", help="data set (default mnist)")
    p.add_argument("--data-dir", default=None, help="folder in torchvision's layout (default $DATA_DIR, else ./data)")
    add_checkpoint_arg(p)
    p.add_argument("--pool", default="lenet5-108",
                   help="architectures to search: lenet5-108 (c1,c2,f1,f2 in {4,5,6}x{6,7,8}x{35,40,45,50}x"
                        "{15,17,20}, 108 in all), rates:R1,R2,... (every layer keeps round(D*(1-R)) units, one "
                        "architecture per rate: the uniform-rate pool of any network), macs:F1,F2,... (for each F the "
                        "uniform rate, to 0.001, that first has F times fewer MACs) or a text file with one "
                        "architecture such as 6-8-40-20 per line (# comments and blank lines ignored) "
                        "(default lenet5-108)")
    p.add_argument("--every", type=positive_int, default=1,
                   help="keep every N-th architecture of the pool, starting with the first (default 1: all)")
    p.add_argument("--methods", type=parse_methods, default=list(METHODS),
                   help=f"comma-separated ranking methods (default {','.join(METHODS)}): dirichlet (switch posterior "
                        f"means, sampled guide), dirichlet-mean (the mean-guide variant), l1/l2 (norm of each unit's "
                        f"incoming weights), fisher (Theis et al. 2018), greedy (loss-based greedy elimination, layer by "
                        f"layer, on 1,000 training examples), random; also dirichlet-weights (the posterior means of the "
                        f"model whose weights learn with the switches: sigma 0.05, dim scale, joint schedule; the "
                        f"pre-trained network is pruned), posterior-mean (as dirichlet) "
                        f"and prob-below (1 - P(D_l*s_lj < {TAU:g}) under the Dirichlet guide)")
    p.add_argument("--seeds", type=parse_seeds, default=[0, 1, 2],
                   help="a count N (seeds 0..N-1) or comma-separated seeds such as 0,4,7 (a single seed s is "
                        "written 's,'); each seed re-ranks (switch fit, fisher batches, random) and re-fine-tunes "
                        "(default 3)")
    p.add_argument("--finetune-epochs", type=nonneg_int, default=DEFAULT_FINETUNE_EPOCHS,
                   help=f"fine-tuning epochs per record, Adam lr {FINETUNE_LR:g}, cosine decay, random shifts of "
                        f"{AUGMENT_SHIFT} px, best validation epoch kept; 0 tests the network right after surgery "
                        f"(default {DEFAULT_FINETUNE_EPOCHS}: a brief, cheap fine-tune that lets the ranking, not the "
                        f"training, decide)")
    p.add_argument("--finetune-config", type=parse_json_object, default={}, metavar="JSON",
                   help="training settings over every record's fine-tuning, as a JSON object of TrainConfig "
                        "fields, e.g. '{\"optimizer\": \"sgd\", \"lr\": 0.01, \"weight_decay\": 5e-4, "
                        "\"channels_last\": true}' (the fine-tuning recipe of VGG-16 and the WRNs); the epochs come "
                        "from --finetune-epochs (default {}: the brief Adam fine-tune above)")
    p.add_argument("--switch-scale", choices=SCALES, default=None,
                   help="switch model of the Dirichlet methods: simplex (a layer's output times s_l, the paper's) "
                        "or dim (times D_l*s_l) (default: SwitchConfig's)")
    p.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help="switch learning of the Dirichlet methods: sequential (one layer at a time) or joint "
                        "(default: SwitchConfig's)")
    p.add_argument("--fisher-batches", type=positive_int, default=FISHER_BATCHES,
                   help=f"minibatches of {FISHER_BATCH_SIZE} training examples that the fisher scores average over "
                        f"(default {FISHER_BATCHES})")
    p.add_argument("--val-size", type=positive_int, default=5000,
                   help="validation examples split off the training set, as for the shipped checkpoints (default 5000)")
    p.add_argument("--max-train-examples", type=positive_int, default=None,
                   help="use only the first N training examples (quick runs and smoke tests)")
    p.add_argument("--out", required=True, help="output folder; records are kept there as they finish")
    p.add_argument("--overwrite", action="store_true", help="replace a finished or interrupted search in --out")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted search in --out (same options): finished records are kept, "
                        "never recomputed")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: OMP_NUM_THREADS when set, else the cores this process may run on; idle threads spin only briefly, GOMP_SPINCOUNT=1000, so that runs side by side do not spin against each other)")
    add_runner_args(p, "rankings and records")
    return p


add_parser = add_search_parser


def search_config_from_args(args: argparse.Namespace) -> SearchConfig:
    switch = {k: v for k, v in (("scale", args.switch_scale), ("schedule", args.schedule)) if v is not None}
    return SearchConfig(
        model=args.model, dataset=args.dataset, data_dir=args.data_dir, checkpoint=args.checkpoint, pool=args.pool,
        every=args.every, methods=list(args.methods), seeds=list(args.seeds), finetune_epochs=args.finetune_epochs,
        switch=switch, finetune=dict(args.finetune_config), fisher_batches=args.fisher_batches, val_size=args.val_size,
        max_train_examples=args.max_train_examples,
    )


def run_search_cli(args: argparse.Namespace) -> dict:
    """Run the ``search`` sub-command from parsed arguments; prints a one-paragraph summary."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    report = run_search(search_config_from_args(args), args.out, args.overwrite, args.resume, args.jobs,
                        args.scheduler)
    print(describe(report, args.out))
    return report


run = run_search_cli
