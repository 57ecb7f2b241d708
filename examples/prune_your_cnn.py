"""Prune your own CNN: a small residual network with batch-norm, by the uncertainty cut-off and
by a MAC budget.

The network is defined here (any ``nn.Module`` works): its prunable layers are discovered with
Torch-Pruning's dependency graph (the convolutions tied by the residual addition are left out),
it is trained briefly on MNIST, its switch posterior is fitted with ``fit``, and it is pruned
twice: by ``uncertainty_cutoff`` and by ``budget_cutoff`` at half its MACs. Each pruned network
is checked against the masked one by ``prune`` and fine-tuned.

    python examples/prune_your_cnn.py --data-dir DATA [--examples 3000] [--epochs 1]
"""
from __future__ import annotations

import argparse
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from pyro_dirichlet_prune import (DirichletGuide, SwitchModel, budget_cutoff, count_macs, evaluate, finetune, fit,
                                  normalisation, posterior_of, prune, uncertainty_cutoff)

SHAPE = (1, 28, 28)


class ResidualCNN(nn.Module):
    """conv-bn-relu, a residual block (two 3×3 convs with batch-norm, identity shortcut), conv, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
                                   nn.Conv2d(24, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.down = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 10))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(self.down(x))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "data"))
    ap.add_argument("--examples", type=int, default=None, help="use the first N training examples (default all)")
    ap.add_argument("--epochs", type=int, default=2, help="pre-training and fine-tuning epochs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    to_input = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*normalisation("mnist"))])
    train_set = datasets.MNIST(args.data_dir, train=True, transform=to_input, download=True)
    test_set = datasets.MNIST(args.data_dir, train=False, transform=to_input, download=True)
    if args.examples:
        train_set, test_set = Subset(train_set, range(args.examples)), Subset(test_set, range(args.examples // 3))
    loader = DataLoader(train_set, batch_size=128, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=1000)

    net = ResidualCNN()
    finetune(net, loader, epochs=args.epochs, lr=1e-2)  # stands in for your own pre-training
    base_macs = count_macs(net, SHAPE)
    print(f"trained: test error {evaluate(net, test_loader)['error']:.4f}, {base_macs} MACs")

    model = SwitchModel(net, input_shape=SHAPE, num_data=len(train_set))  # discovers the prunable layers
    print("switched layers:", model.widths)
    guide = DirichletGuide(model)
    fit(model, guide, loader, schedule="sequential", seed=args.seed)
    post = posterior_of(model, guide)

    cuts = {"uncertainty": uncertainty_cutoff(post, tau=0.5, delta=0.05),
            "budget": budget_cutoff(post, net, SHAPE, macs=base_macs // 2, points=model.points)}
    for name, keep in cuts.items():
        small = prune(net, keep, SHAPE, points=model.points)  # checked against the masked network
        macs = count_macs(small, SHAPE)
        finetune(small, loader, epochs=args.epochs, lr=1e-3)
        print(f"{name:11s} kept {'-'.join(str(len(v)) for v in keep.values())}: {macs} MACs "
              f"({macs / base_macs:.2f} of the base), test error {evaluate(small, test_loader)['error']:.4f}")


if __name__ == "__main__":
    main()
