"""``evaluate_checkpoint``: the test error and size of a saved network, read in a fresh process.

    from pyro_dirichlet_prune.evaluation import evaluate_checkpoint
    result = evaluate_checkpoint("runs/prune/pruned.pt")          # data set from the checkpoint
    result["test"]["error"], result["arch"], result["params"], result["macs"]
"""
from __future__ import annotations

import os

from .data import load_data
from .inputs import fit_to_network
from .errors import UserError
from .metrics import count_macs, count_params
from .models.checkpoint import load_checkpoint
from .models.discovery import discover_switch_points
from .models.user import check_model_io
from .training import evaluate


def evaluate_checkpoint(
    path: str | os.PathLike, dataset: str | None = None, data_dir: str | os.PathLike | None = None,
    allow_pickle: bool = False,
) -> dict:
    """Load the network saved at ``path`` (a ``model.pt`` or ``pruned.pt`` of ``pretrain`` or
    ``prune``) and measure it on the test split of ``dataset`` (default: the data set the
    checkpoint names) from ``data_dir`` (default ``$DATA_DIR``, else ``./data``).

    A pickled network (the ``pruned.pt`` of a run on a user's model, or a ``torch.save(model)``
    file) is loaded only with ``allow_pickle=True``: unpickling runs arbitrary code, so only for
    files you trust. Returns ``{"checkpoint", "model", "dataset", "arch", "params", "macs",
    "test": {"error", "nll", ...}}``; ``arch`` is the widths of the switched (prunable) layers.
    Raises ``UserError`` (a ``ValueError``) for an unreadable checkpoint, an unknown data set, or
    a network that does not take the data set's inputs.
    """
    net, info = load_checkpoint(path, allow_pickle=allow_pickle)
    dataset = dataset or info.get("dataset")
    if dataset is None:
        raise UserError(f"{path} does not say which data set it takes; give dataset=NAME")
    data = load_data(dataset, data_dir, val_size=0)
    if "input_shape" not in info:  # a bare pickled network: check that it takes the data
        check_model_io(net, data.input_shape, data.num_classes, what=f"the network of {path}")
    else:
        data = fit_to_network(data, info["input_shape"])
        if tuple(info["input_shape"]) != tuple(data.input_shape) or info["num_classes"] != data.num_classes:
            raise UserError(f"checkpoint {path} does not take {dataset} inputs")
    if hasattr(net, "switch_points"):
        points = net.switch_points()
    else:  # a user's network: the layers it was pruned at, else the prunable ones
        points = discover_switch_points(net, data.input_shape, info.get("layers"))
    return {
        "checkpoint": os.fspath(path),
        "model": info.get("model", "user"),
        "dataset": dataset,
        "arch": "-".join(str(p.width) for p in points),
        "params": count_params(net),
        "macs": count_macs(net, data.input_shape),
        "test": evaluate(net, data.test),
    }
