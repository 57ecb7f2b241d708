"""What the switch model does to a pre-trained network at the prior's mean, before any learning.

At s_l = 1/D_l (the mean of Dir(alpha0·1)) the paper's model (``simplex``) multiplies a layer's
output by 1/D_l and ``dim`` by D_l·(1/D_l) = 1. On LeNet-5 the shrunk output only scales the
logits; on a network with batch-norm the next normalisation subtracts its running mean from an
input shrunk D_l-fold, and the network's function is gone. This benchmark measures it: the
validation log-loss and error of each shipped network unswitched, with every layer at the
simplex prior mean, with each layer alone at it (the stages of the sequential schedule), and
with every layer at the ``dim`` prior mean.

    python benchmarks/switch_scale_prior.py --data-dir ../shared/data --models lenet5 vgg16 wrn-16-1 \\
        --out benchmarks/results/switch_scale_prior_fashion.json
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from pyro_dirichlet_prune.data import load_data
from pyro_dirichlet_prune.inputs import fit_to_network
from pyro_dirichlet_prune.models.checkpoint import load_checkpoint, shipped_checkpoint
from pyro_dirichlet_prune.models.common import evaluating
from pyro_dirichlet_prune.models.switched import SwitchedNetwork, switch_factors
from pyro_dirichlet_prune.report import versions, write_json


def prior_mean_losses(model: str, dataset: str, data_dir: str | None, examples: int) -> dict:
    """Validation log-loss and error of the shipped ``model`` at the prior means (module docstring)."""
    net, info = load_checkpoint(shipped_checkpoint(model, dataset), model)
    data = fit_to_network(load_data(dataset, data_dir, 5000, 0), info["input_shape"])
    x, y = data.val.x[:examples], data.val.y[:examples]
    switched = SwitchedNetwork(net)
    widths = {p.name: p.width for p in switched.points}

    def measure(scale: str, layers: list[str]) -> dict:
        factors = switch_factors(widths, scale)
        scales = {k: torch.full((widths[k],), factors[k] / widths[k]) for k in layers}
        with torch.no_grad(), evaluating(net), switched.scaled(scales):
            out = net(x)
        return {"nll": float(F.cross_entropy(out, y)), "error": float((out.argmax(1) != y).float().mean())}

    names = list(widths)
    return {
        "model": model, "widths": widths, "examples": len(y),
        "unswitched": measure("dim", []),
        "simplex_all": measure("simplex", names),
        "simplex_one": {k: measure("simplex", [k]) for k in names},
        "dim_all": measure("dim", names),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--models", nargs="+", default=["lenet5", "vgg16", "wrn-16-1"])
    ap.add_argument("--examples", type=int, default=2000, help="validation examples (the first ones)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/switch_scale_prior_fashion.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for model in args.models:
        t0 = time.perf_counter()
        r = prior_mean_losses(model, args.dataset, args.data_dir, args.examples)
        r["seconds"] = time.perf_counter() - t0
        rows.append(r)
        one = r["simplex_one"].values()
        print(f"{model}: unswitched nll {r['unswitched']['nll']:.3f} error {r['unswitched']['error']:.4f}; simplex all "
              f"{r['simplex_all']['nll']:.3f} / {r['simplex_all']['error']:.4f}; simplex one layer at a time nll "
              f"{min(v['nll'] for v in one):.3f}-{max(v['nll'] for v in one):.3f}, error "
              f"{min(v['error'] for v in one):.4f}-{max(v['error'] for v in one):.4f}; dim all "
              f"{r['dim_all']['nll']:.3f} / {r['dim_all']['error']:.4f}")
    write_json(args.out, {"config": vars(args), "rows": rows, "versions": versions()})
    print(args.out)


if __name__ == "__main__":
    main()
