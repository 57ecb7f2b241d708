"""Choosing tau and delta of the uncertainty cut-off on the validation split, next to the
``--rate`` sweep and the budget cut-off, from the same switch posterior.

For every seed: fit the switch posterior of the shipped LeNet-5 once; for every (tau, delta) of a
grid apply the uncertainty cut-off P(D·s < tau) >= 1 - delta; for every rate the ``--rate``
cut-off; for every budget the budget cut-off; prune, fine-tune ``--ft-epochs`` epochs and record
MACs, params and the validation error (the test set is not touched).

    python benchmarks/cutoff_selection.py --data-dir ../shared/data \\
        --config '{"scale": "simplex", "schedule": "sequential"}' --seeds 0 1

Writes a JSON report (``--out``) and prints one line per (seed, cut-off).
"""
from __future__ import annotations

import argparse
import itertools
import json
import time

import torch

from pyro_dirichlet_prune.data import load_data
from pyro_dirichlet_prune.inference.svi import SwitchConfig, fit_switches, switch_posterior
from pyro_dirichlet_prune.metrics import count_macs, count_params
from pyro_dirichlet_prune.models import SwitchedNetwork
from pyro_dirichlet_prune.models.checkpoint import load_checkpoint, shipped_checkpoint
from pyro_dirichlet_prune.pruning.budget import budget_keep, size_function
from pyro_dirichlet_prune.pruning.cutoff import arch_string, keep_top, rate_widths, removal_order, uncertainty_keep
from pyro_dirichlet_prune.pruning.surgery import prune_units
from pyro_dirichlet_prune.report import versions, write_json
from pyro_dirichlet_prune.training import TrainConfig, evaluate, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--config", default="{}", help="JSON SwitchConfig fields")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--taus", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--deltas", type=float, nargs="+", default=[0.01, 0.05, 0.2])
    ap.add_argument("--rates", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7])
    ap.add_argument("--budget", default="169320,7554", help="MACs,params of the budget cut-off (default: 6-8-40-20's)")
    ap.add_argument("--ft-epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/cutoff_selection.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(args.dataset, args.data_dir)
    net, _ = load_checkpoint(shipped_checkpoint("lenet5", args.dataset))
    widths = {p.name: p.width for p in net.switch_points()}
    size = size_function(net, data.input_shape)
    macs, params = (int(v) for v in args.budget.split(","))
    rows = []
    for seed in args.seeds:
        cfg = SwitchConfig(**{**json.loads(args.config), "seed": seed})
        torch.manual_seed(seed)
        switched = SwitchedNetwork(net)
        t = time.perf_counter()
        fit = fit_switches(switched, data.train, cfg)
        post = switch_posterior(fit, cfg, switched, data.train, elbo_particles=0)
        switched.remove_hooks()
        fit_seconds = time.perf_counter() - t
        means = fit.posterior_means()
        cuts = []
        for tau, delta in itertools.product(args.taus, args.deltas):
            cuts.append(({"cutoff": "uncertainty", "tau": tau, "delta": delta},
                         uncertainty_keep(post.prob_below(tau), means, delta)[0]))
        for rate in args.rates:
            cuts.append(({"cutoff": "rate", "rate": rate}, keep_top(means, rate_widths(rate, widths))))
        for tau in args.taus:
            keep, _ = budget_keep(removal_order(post.prob_below(tau), means), widths, size, {"macs": macs, "params": params})
            cuts.append(({"cutoff": "budget", "tau": tau, "macs": macs, "params": params}, keep))
        done: dict[str, dict] = {}
        for desc, keep in cuts:
            key = json.dumps(keep, sort_keys=True)
            if key not in done:
                pruned = prune_units(net, keep, data.input_shape)
                before = evaluate(pruned, data.val)["error"]
                for p in pruned.parameters():
                    p.requires_grad_(True)
                t = time.perf_counter()
                train(pruned, data, TrainConfig(epochs=args.ft_epochs, lr=2e-3, augment_shift=2, seed=seed))
                done[key] = {"arch": arch_string(keep), "macs": count_macs(pruned, data.input_shape),
                             "params": count_params(pruned), "val_error_pruned": before,
                             "val_error": evaluate(pruned, data.val)["error"], "ft_seconds": time.perf_counter() - t}
            row = {"seed": seed, **desc, **done[key], "fit_seconds": fit_seconds}
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_json(args.out, {"config": vars(args), "rows": rows, "versions": versions()})


if __name__ == "__main__":
    main()
