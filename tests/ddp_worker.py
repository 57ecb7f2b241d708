"""Run by ``torchrun`` in tests/test_distributed.py: switch learning and fine-tuning of the shipped
LeNet-5 on a small training set, data-parallel over the launched processes; rank 0 writes what
the test compares (the ELBO trajectory, the concentrations, the units kept, the fine-tuned
network's history and weights) to the JSON file named by the first argument.

    torchrun --nproc-per-node 2 tests/ddp_worker.py OUT.json DATASET DATA_DIR|- MAX_TRAIN
"""
from __future__ import annotations

import dataclasses
import json
import sys

import torch

from pyro_dirichlet_prune import distributed
from pyro_dirichlet_prune.data import Split, load_data
from pyro_dirichlet_prune.inference.svi import SwitchConfig, fit_switches
from pyro_dirichlet_prune.models import SwitchedNetwork
from pyro_dirichlet_prune.models.checkpoint import load_checkpoint, shipped_checkpoint
from pyro_dirichlet_prune.prune_step import prune_and_finetune
from pyro_dirichlet_prune.pruning.cutoff import keep_top, parse_arch
from pyro_dirichlet_prune.training import TrainConfig


def main(out: str, dataset: str, data_dir: str, max_train: int) -> None:
    torch.set_num_threads(1)
    distributed.init_from_env("cpu")
    data = load_data(dataset, None if data_dir == "-" else data_dir, 1000, 0)
    data = dataclasses.replace(data, train=Split(data.train.x[:max_train], data.train.y[:max_train]),
                               test=Split(data.test.x[:1000], data.test.y[:1000]))
    net, _ = load_checkpoint(shipped_checkpoint("lenet5", "mnist"), "lenet5")
    cfg = SwitchConfig(batch_size=200, seed=3, schedule="joint", scale="dim", lr=0.1, epochs=2)
    switched = SwitchedNetwork(net, net.switch_points())
    fit = fit_switches(switched, data.train, cfg)
    layerwise = fit_switches(switched, data.train, dataclasses.replace(cfg, schedule="sequential", scale="simplex",
                                                                        epochs=1, lr=0.05))
    means = fit.posterior_means()
    keep = keep_top(means, parse_arch("6-8-40-20", {k: v.numel() for k, v in means.items()}))
    ft = TrainConfig(epochs=2, lr=2e-3, batch_size=100, augment_shift=2, seed=5)
    result = prune_and_finetune(net, keep, data, ft, seed=5, splits=("val",))
    if distributed.is_main():
        with open(out, "w") as f:
            json.dump({
                "world": distributed.world_size(), "losses": fit.losses, "layerwise_losses": layerwise.losses,
                "layerwise_concentrations": {k: v.tolist() for k, v in layerwise.concentrations.items()},
                "concentrations": {k: v.tolist() for k, v in fit.concentrations.items()},
                "keep": {k: sorted(v) for k, v in keep.items()},
                "history": result.training.history, "val_error": result.finetuned["val"]["error"],
                "weights": {k: v.flatten()[:50].tolist() for k, v in result.net.state_dict().items()},
            }, f)
    distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
