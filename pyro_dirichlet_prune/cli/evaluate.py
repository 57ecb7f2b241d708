"""``dirichlet-prune evaluate``: the test error and size of a saved network, as JSON on stdout
(``evaluation.evaluate_checkpoint``)."""
from __future__ import annotations

import argparse
import json

from .options import add_allow_pickle_arg, add_data_args


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="test error and size of a saved network",
                       description="Load a checkpoint (pre-trained or pruned) in a fresh process and report its "
                                   "test error, parameters and MACs as JSON on stdout.")
    p.add_argument("checkpoint", help="a model.pt or pruned.pt written by pretrain or prune")
    add_data_args(p, dataset_default=None, split=False)
    add_allow_pickle_arg(p)
    return p


def run(args: argparse.Namespace) -> dict:
    from ..evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, args.dataset, args.data_dir, args.allow_pickle)
    print(json.dumps(result))
    return result
