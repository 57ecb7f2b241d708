"""Gradient variance of per-example switch sampling against shared-sample particles, at equal cost.

For the shipped LeNet-5 and the ELBO of the switch model, the stochastic gradient with respect to
the guide's unconstrained concentrations is drawn ``--repeats`` times by each estimator:

* ``shared-k``: k particles, each one switch draw per layer shared by the minibatch (Trace_ELBO);
* ``per-example``: one particle with an independent switch draw per example.

Reported per estimator: the total variance (sum over coordinates of the per-coordinate variance),
the median wall time of one gradient, and the efficiency ratio against ``shared-1``,

    ratio = (variance × time) / (variance_shared-1 × time_shared-1),

i.e. the variance of each estimator when both are given the same wall time (averaging n
independent gradients divides the variance by n). Below 1, per-example sampling wins. Two noise
settings: the same minibatch every time (switch noise only) and a fresh minibatch every time.
At two guides: the initial one (all concentrations 10) and one fitted for an epoch.

    python benchmarks/grad_variance.py --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import statistics
import time

import pyro
import torch
from pyro.infer import Trace_ELBO

from pyro_dirichlet_prune.data import batches, load_data
from pyro_dirichlet_prune import DirichletGuide, SwitchModel
from pyro_dirichlet_prune.inference.svi import SwitchConfig, fit_switches
from pyro_dirichlet_prune.models import SwitchedNetwork
from pyro_dirichlet_prune.models.checkpoint import load_checkpoint, shipped_checkpoint
from pyro_dirichlet_prune.report import versions, write_json


def gradient_draws(model, guide, particles, minibatches, repeats):
    params = list(guide.parameters())  # the unconstrained concentrations
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=False)
    grads, seconds = [], []
    for r in range(repeats):
        x, y, idx = minibatches(r)
        t = time.perf_counter()
        loss = elbo.differentiable_loss(model, guide, x, y, idx)
        g = torch.autograd.grad(loss, params)
        seconds.append(time.perf_counter() - t)
        grads.append(torch.cat([v.flatten() for v in g]))
    return torch.stack(grads), statistics.median(seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--batch-size", type=int, default=SwitchConfig().batch_size)
    ap.add_argument("--particles", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=150)
    ap.add_argument("--scale", default=SwitchConfig().scale)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/grad_variance.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(args.dataset, args.data_dir)
    net, _ = load_checkpoint(shipped_checkpoint("lenet5", args.dataset))
    switched = SwitchedNetwork(net)
    pool = list(batches(data.train, args.batch_size, True, torch.Generator().manual_seed(args.seed)))
    settings = {"fixed minibatch": lambda r: pool[0], "fresh minibatch": lambda r: pool[r % len(pool)]}

    fitted = fit_switches(switched, data.train, SwitchConfig(scale=args.scale, seed=args.seed)).concentrations
    points = {"initial (phi = 10)": None, "fitted (1 epoch)": fitted}
    rows = []
    for point, phis in points.items():
        for setting, minibatches in settings.items():
            base = None
            for sampling, ks in (("shared", args.particles), ("per-example", [1])):
                for k in ks:
                    pyro.clear_param_store()
                    pyro.set_rng_seed(args.seed)
                    model = SwitchModel(switched, num_data=len(data.train), scale=args.scale, sampling=sampling)
                    guide = DirichletGuide(model)
                    if phis is not None:
                        guide.set_concentrations(phis)
                    g, sec = gradient_draws(model, guide, k, minibatches, args.repeats)
                    var = float(g.var(0).sum())
                    row = {"point": point, "noise": setting, "estimator": f"{sampling}-{k}", "total_variance": var,
                           "seconds_per_gradient": sec}
                    if base is None:
                        base = row
                    row["variance_ratio"] = var / base["total_variance"]
                    row["time_ratio"] = sec / base["seconds_per_gradient"]
                    row["equal_time_ratio"] = row["variance_ratio"] * row["time_ratio"]
                    rows.append(row)
                    print(f"{point:20s} {setting:16s} {row['estimator']:14s} var {var:10.4g}  "
                          f"{1000 * sec:6.1f} ms  var ratio {row['variance_ratio']:.3f}  "
                          f"equal-time ratio {row['equal_time_ratio']:.3f}", flush=True)
    write_json(args.out, {"config": vars(args), "rows": rows, "versions": versions()})


if __name__ == "__main__":
    main()
