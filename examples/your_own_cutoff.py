"""Your own cut-off, run by the library's prune pipeline.

A cut-off is one class: ``kind`` and ``choose(posterior, net, input_shape, points, train, seed,
fit)``, returning the units every layer keeps. This one reads the posterior's uncertainty through
its credible intervals: unit j of layer l goes when even the upper end of its 95% interval,
D_l · upper(s_lj), lies below ``tau`` (by default 1: the posterior is confident the unit carries
less than its uniform share of the layer); a layer keeps at least its unit of highest posterior mean. Given
as ``PruneConfig(cutoff=...)``, it replaces the built-in cut-offs in ``run_prune``: the switches
are fitted, the cut-off chooses, the network is pruned physically, fine-tuned and evaluated, and
``report.json`` describes the cut-off (``describe()``).

    python examples/your_own_cutoff.py --data-dir DATA [--examples 5000] [--out runs/your-cutoff]
"""
from __future__ import annotations

import argparse
import os
import tempfile

import torch

from pyro_dirichlet_prune.prune_config import PruneConfig
from pyro_dirichlet_prune.pipeline import run_prune
from pyro_dirichlet_prune.pruning.cutoffs import Cutoff
from pyro_dirichlet_prune.training import TrainConfig


class IntervalCutoff(Cutoff):
    """Remove unit j of layer l when D_l times the upper end of its credible interval is below tau."""

    kind = "interval"

    def __init__(self, tau: float = 1.0) -> None:
        super().__init__()
        self.tau = float(tau)

    def settings(self) -> dict:
        return {"tau": self.tau}

    def choose(self, posterior, net, input_shape, points, train, seed, fit) -> dict[str, list[int]]:
        keep = {}
        for layer, upper in posterior.upper.items():
            d = upper.numel()
            kept = [j for j in range(d) if d * float(upper[j]) >= self.tau]
            keep[layer] = kept or [int(torch.argmax(posterior.means[layer]))]
        self.details = {"credible_level": posterior.level}
        return keep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "data"))
    ap.add_argument("--examples", type=int, default=5000, help="training examples used (default 5000)")
    ap.add_argument("--tau", type=float, default=1.0)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    cfg = PruneConfig(dataset="mnist", data_dir=args.data_dir, cutoff=IntervalCutoff(args.tau),
                      max_train_examples=args.examples, latency=False,
                      finetune=TrainConfig(epochs=args.finetune_epochs, lr=2e-3, augment_shift=2))
    out = args.out or tempfile.mkdtemp(prefix="your-cutoff-")
    report = run_prune(cfg, out, overwrite=True)
    print(f"cut-off {report['cutoff']}")
    print(f"{report['architecture']['base']} -> {report['architecture']['pruned']}: MACs {report['base']['macs']} -> "
          f"{report['finetuned']['macs']}, test error {report['base']['test']['error']:.4f} -> "
          f"{report['finetuned']['test']['error']:.4f}")


if __name__ == "__main__":
    main()
