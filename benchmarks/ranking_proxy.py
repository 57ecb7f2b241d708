"""Quick proxy of how well a ranking picks channels: prune the shipped LeNet-5/MNIST to one
architecture by each ranking, then measure the validation error right after surgery and after
one fine-tuning epoch (lower is better). Baselines: random ranking and L1 norm of the weights.

    python benchmarks/ranking_proxy.py --data-dir ../shared/data \\
        --config '{}' --config '{"scale": "simplex", "schedule": "sequential"}'

Each ``--config`` is a JSON dict of ``SwitchConfig`` fields. Writes a JSON report (``--out``).
Uses only the training and validation splits; the test set is not touched.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from pyro_dirichlet_prune.data import load_data
from pyro_dirichlet_prune.inference.svi import SwitchConfig, fit_switches
from pyro_dirichlet_prune.models import SwitchedNetwork
from pyro_dirichlet_prune.models.checkpoint import load_checkpoint, shipped_checkpoint
from pyro_dirichlet_prune.pruning.cutoff import keep_top, parse_arch
from pyro_dirichlet_prune.pruning.surgery import prune_units
from pyro_dirichlet_prune.report import versions, write_json
from pyro_dirichlet_prune.training import TrainConfig, evaluate, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--arch", default="6-8-40-20")
    ap.add_argument("--config", action="append", default=[], help="JSON SwitchConfig fields (repeatable)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/ranking_proxy.json")
    args = ap.parse_args()
    data = load_data(args.dataset, args.data_dir)
    net, _ = load_checkpoint(shipped_checkpoint("lenet5", args.dataset))
    names = [p.name for p in net.switch_points()]
    kept = parse_arch(args.arch, dict(zip(names, net.widths)))

    def score(scores: dict, seed: int) -> dict:
        pruned = prune_units(net, keep_top(scores, kept), data.input_shape)
        before = evaluate(pruned, data.val)["error"]
        for p in pruned.parameters():
            p.requires_grad_(True)
        train(pruned, data, TrainConfig(epochs=1, lr=2e-3, augment_shift=2, seed=seed))
        return {"val_error_pruned": before, "val_error_1_epoch": evaluate(pruned, data.val)["error"]}

    rows = []
    for seed in range(args.seeds):
        g = torch.Generator().manual_seed(seed)
        random_scores = {n: torch.rand(w, generator=g) for n, w in zip(names, net.widths)}
        rows.append({"method": "random", "seed": seed, **score(random_scores, seed)})
    rows.append({"method": "l1", "seed": 0, **score({n: getattr(net, n).weight.abs().flatten(1).sum(1) for n in names}, 0)})
    for text in args.config or ["{}"]:
        for seed in range(args.seeds):
            cfg = SwitchConfig(**{**json.loads(text), "seed": seed})
            switched = SwitchedNetwork(net)
            t = time.perf_counter()
            fit = fit_switches(switched, data.train, cfg)
            seconds = time.perf_counter() - t
            rows.append({"method": "dirichlet", "config": json.loads(text), "seed": seed, "switch_seconds": seconds,
                         **score(fit.posterior_means(), seed)})
    for r in rows:
        print(f"{r['method']:10s} {json.dumps(r.get('config', {})):55s} seed {r['seed']}: "
              f"pruned {r['val_error_pruned']:.4f}  after 1 epoch {r['val_error_1_epoch']:.4f}")
    write_json(args.out, {"config": vars(args), "rows": rows, "versions": versions()})


if __name__ == "__main__":
    main()
