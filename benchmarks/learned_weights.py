"""How the switch posterior changes when the weights learn with the switches.

For every switch configuration given (JSON ``SwitchConfig`` fields, e.g. ``{"scale": "dim",
"schedule": "joint", "weight_scale": 0.05, "epochs": 4}``): fit the shipped LeNet-5's switches
(seed ``--seed``), then on the validation split, without fine-tuning, record

* the error of the fitted network (its learned weights and the switches' posterior means folded
  in; for a frozen fit, the pre-trained network itself),
* the widths and MACs the uncertainty cut-off keeps (tau 0.5, delta 0.05, and looser settings),
* how many units have D_l·E[s_lj] below 0.2 and 0.5 (how sparse the posterior mean is),
* the error right after surgery to 6-8-40-20 by posterior mean (how much of the network the
  posterior has already moved into the kept units).

    python benchmarks/learned_weights.py --data-dir ../shared/data \\
        '{"scale": "dim", "schedule": "joint", "epochs": 4}' \\
        '{"scale": "dim", "schedule": "joint", "weight_scale": 0.05, "epochs": 4}'

Writes ``--out`` (JSON: one row per configuration, the versions) and prints each row.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from pyro_dirichlet_prune.data import load_data
from pyro_dirichlet_prune.inference.svi import SwitchConfig, fit_switches, switch_posterior
from pyro_dirichlet_prune.metrics import count_macs
from pyro_dirichlet_prune.models import SwitchedNetwork, load_pretrained
from pyro_dirichlet_prune.pretraining import seed_everything
from pyro_dirichlet_prune.pruning.cutoff import arch_string, keep_top, parse_arch, uncertainty_keep
from pyro_dirichlet_prune.pruning.surgery import prune
from pyro_dirichlet_prune.report import versions, write_json
from pyro_dirichlet_prune.training import evaluate

SETTINGS = ((0.5, 0.05), (0.5, 0.2), (1.0, 0.05))


def row(config: dict, data, dataset: str, seed: int) -> dict:
    seed_everything(seed)
    net = load_pretrained("lenet5", dataset)
    cfg = SwitchConfig(**{**config, "seed": seed})
    switched = SwitchedNetwork(net)
    t = time.perf_counter()
    fit = fit_switches(switched, data.train, cfg)
    seconds = time.perf_counter() - t
    post = switch_posterior(fit, cfg, data.train, elbo_particles=0)
    fitted = fit.fitted_network()
    means = fit.posterior_means()
    shape = tuple(data.input_shape)
    out = {"config": config, "seed": seed, "fit_seconds": seconds, "fitted_val_error": evaluate(fitted, data.val)["error"]}
    for tau, delta in SETTINGS:
        keep, _ = uncertainty_keep(post.prob_below(tau), means, delta)
        out[f"uncertainty_tau{tau}_delta{delta}"] = {"arch": arch_string(keep),
                                                      "macs": count_macs(prune(fitted, keep, shape), shape)}
    for bound in (0.2, 0.5):
        out[f"units_below_{bound}"] = {k: int((v * v.numel() < bound).sum()) for k, v in means.items()}
    keep = keep_top(means, parse_arch("6-8-40-20", fit.model.widths))
    out["val_error_after_surgery_6-8-40-20"] = evaluate(prune(fitted, keep, shape), data.val)["error"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="+", help="JSON SwitchConfig fields, one configuration each")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/learned_weights.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(args.dataset, args.data_dir)
    rows = []
    for config in args.configs:
        rows.append(row(json.loads(config), data, args.dataset, args.seed))
        print(json.dumps(rows[-1]), flush=True)
    write_json(args.out, {"config": vars(args), "rows": rows, "versions": versions()})


if __name__ == "__main__":
    main()
