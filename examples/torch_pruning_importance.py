"""Dirichlet pruning's posterior as a Torch-Pruning importance.

Fits the switch posterior of the shipped pre-trained LeNet-5 for MNIST, then lets Torch-Pruning's
own pruner (``tp.pruner.BasePruner``, formerly ``MetaPruner``) remove a global fraction of the
channels and neurons of conv1, conv2, fc1 and fc2 (the classifier fc3 is kept whole), ranked by
``PosteriorImportance``: D_l · E_q[s_lj], where 1 is a unit's uniform share of its layer.
Prints the architecture, the MACs and the test error before and after, and after a short fine-tune.

    python examples/torch_pruning_importance.py --data-dir ../shared/data --quick

``--quick`` (or ``EXAMPLES_QUICK=1``) fits on 512 training examples and fine-tunes two epochs on
4,000; without it the posterior is fitted on the whole training set and fine-tuned for 3 epochs.
MNIST must be in torchvision's layout under ``--data-dir`` (default ``$DATA_DIR``, else ``./data``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch_pruning as tp
from torch.utils.data import DataLoader, TensorDataset
from torchvision.datasets import MNIST

from pyro_dirichlet_prune import (DirichletGuide, PosteriorImportance, SwitchModel, count_macs, evaluate, finetune,
                                  fit, load_pretrained, normalisation, posterior_of)

INPUT_SHAPE = (1, 28, 28)


def mnist_tensors(data_dir: str, train: bool) -> TensorDataset:
    """MNIST as normalised float images and labels, the way the shipped LeNet-5 was trained."""
    ds = MNIST(data_dir, train=train, download=False)
    (mean,), (std,) = normalisation("mnist")
    x = (ds.data.float().div(255.0).unsqueeze(1) - mean) / std
    return TensorDataset(x, ds.targets.long())


def widths(points) -> str:
    return " ".join(f"{p.name}={p.width}" for p in points)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "./data"),
                        help="folder holding MNIST in torchvision's layout (default: $DATA_DIR or ./data)")
    parser.add_argument("--quick", action="store_true", default=os.environ.get("EXAMPLES_QUICK") == "1",
                        help="a small fit and fine-tune (also EXAMPLES_QUICK=1)")
    parser.add_argument("--ratio", type=float, default=0.5, help="global fraction of the units to remove (0.5)")
    parser.add_argument("--score", choices=("mean", "prob_below"), default="mean",
                        help="D_l*E[s_lj] (mean) or 1 - P(D_l*s_lj < tau) (prob_below)")
    parser.add_argument("--tau", type=float, default=0.5, help="tau of --score prob_below (0.5)")
    args = parser.parse_args(argv)

    try:
        train_all, test = mnist_tensors(args.data_dir, True), mnist_tensors(args.data_dir, False)
    except RuntimeError as exc:
        print(f"error: no MNIST under {args.data_dir} ({exc}); pass --data-dir or set DATA_DIR", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    order = torch.randperm(len(train_all))
    n_fit, n_tune, n_val, epochs = (512, 4000, 1000, 2) if args.quick else (len(train_all) - 5000, len(train_all) - 5000, 5000, 3)
    x, y = train_all.tensors
    val = TensorDataset(x[order[-n_val:]], y[order[-n_val:]])
    fit_set = TensorDataset(x[order[:n_fit]], y[order[:n_fit]])
    tune_set = TensorDataset(x[order[:n_tune]], y[order[:n_tune]])
    test_loader = DataLoader(test, batch_size=1000)

    net = load_pretrained("lenet5", "mnist")
    points = net.switch_points()
    print(f"LeNet-5 (shipped, MNIST), {'quick' if args.quick else 'full'} run")
    print(f"before: {widths(points)}")
    macs_before = count_macs(net, INPUT_SHAPE)
    err_before = evaluate(net, test_loader)["error"]
    print(f"MACs before: {macs_before}")
    print(f"test error before: {err_before:.4f}")

    # 1. The switch posterior: one Dirichlet per layer, learned one layer after another.
    t0 = time.perf_counter()
    model = SwitchModel(net, input_shape=INPUT_SHAPE, num_data=n_fit)
    guide = DirichletGuide(model)
    loader = DataLoader(fit_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    fit(model, guide, loader, epochs=1, schedule="sequential", seed=0, progress=False)
    posterior = posterior_of(model, guide)
    print(f"posterior fitted on {n_fit} examples in {time.perf_counter() - t0:.1f} s")

    # 2. Torch-Pruning's pruner, ranking every unit of the four layers together by its score.
    importance = PosteriorImportance(posterior, model.points, score=args.score, tau=args.tau)
    for p in net.parameters():
        p.requires_grad_(True)  # Torch-Pruning traces the network through autograd
    pruner = tp.pruner.BasePruner(net, torch.zeros(1, *INPUT_SHAPE), importance, global_pruning=True,
                                  pruning_ratio=args.ratio, ignored_layers=[net.fc3])
    pruner.step()
    macs_after = count_macs(net, INPUT_SHAPE)
    err_pruned = evaluate(net, test_loader)["error"]
    print(f"after:  {widths(points)}")
    print(net)
    print(f"MACs after: {macs_after} ({macs_after / macs_before:.1%} of before)")
    print(f"test error after pruning: {err_pruned:.4f}")

    # 3. A short fine-tune of the pruned network.
    tune_loader = DataLoader(tune_set, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0))
    finetune(net, tune_loader, DataLoader(val, batch_size=1000), epochs=epochs, lr=1e-3, progress=False)
    print(f"test error after fine-tune ({epochs} epoch(s) on {n_tune} examples): {evaluate(net, test_loader)['error']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
