"""``dirichlet-prune evaluate``: the test error and size of a saved network, as JSON on stdout."""
from __future__ import annotations

import argparse
import json

from ..data import load_data
from ..errors import UserError
from .options import add_data_args


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="test error and size of a saved network",
                       description="Load a checkpoint (pre-trained or pruned) in a fresh process and report its "
                                   "test error, parameters and MACs as JSON on stdout.")
    p.add_argument("checkpoint", help="a model.pt or pruned.pt written by pretrain or prune")
    add_data_args(p, dataset_default=None, split=False)
    p.add_argument("--allow-pickle", action="store_true",
                   help="also load a pickled network (the pruned.pt of a --model-file run, or a torch.save(model) "
                        "file); this UNPICKLES AND RUNS ARBITRARY CODE: only for files you trust")
    return p


def run(args: argparse.Namespace) -> dict:
    from ..metrics import count_macs, count_params
    from ..models import discover_switch_points
    from ..models.checkpoint import load_checkpoint
    from ..models.user import check_model_io
    from ..training import evaluate

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
