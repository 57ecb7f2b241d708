"""Is the quadratic settle the ELBO's optimum? Each layer's ELBO on the whole training set, per way of
ending the fit, and how far a subsample's gradient moves the settle's means.

    python benchmarks/settle_elbo.py --data-dir DATA [--seed 0] [--init 10] [--draws 6] \
        [--examples 10000] [--out PATH]

The shipped LeNet-5 (MNIST), frozen, the default switch model, layer by layer, fitted with the
default recipe up to the settle (3 averaged epochs a layer, ``concentration="fitted"``). Then, per
layer, the Dirichlet q it ends with under each way of finishing:

* ``fitted``: the concentrations as SVI left them;
* ``settled``: the fitted means, phi_0 from the curvature (``concentration="settled"``);
* ``quadratic-subsample``: the Newton step of commit dc33c73's ``quadratic``: gradient and
  Hessian on the first ``--examples`` examples, scaled to the data, taken unchecked;
* ``quadratic``: the settle of this commit (``settle_concentrations(whole=True)``: the full-data
  gradient, the step checked on the whole data).

For each: ELBO = E_q[log p(D | s_l)] - KL(q || prior), the expectation over ``--draws`` draws of q
(its standard error from them), each draw's log-likelihood summed over all training examples; the
log-likelihood at q's mean; phi_0. And how much the step's means depend on the subsample: the
unchecked step from the first ``--examples`` examples against the same from examples 30,000 on,
with the subsample's gradient (dc33c73) and with the full-data gradient (this commit), as the
largest gap in posterior standard deviations (sqrt(m (1 - m) / (phi_0 + 1)) of the full-data step
from the first examples).
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from torch.distributions import Dirichlet, kl_divergence

from pyro_dirichlet_prune import load_pretrained
from pyro_dirichlet_prune.data import load_data
from pyro_dirichlet_prune.inference.concentration import (layer_gradient_hessian, layer_nll, optimal_concentrations,
                                                          optimal_phi0, settle_concentrations, _trace_term)
from pyro_dirichlet_prune.inference.svi import SwitchConfig, fit_switches
from pyro_dirichlet_prune.models import SwitchedNetwork
from pyro_dirichlet_prune.report import versions, write_json


def elbo(model, layer, phi, train, draws, seed) -> dict:
    torch.manual_seed(seed)
    q = Dirichlet(phi)
    lls = torch.tensor([-layer_nll(model, layer, q.sample(), train)[0] for _ in range(draws)], dtype=torch.float64)
    kl = float(kl_divergence(q, Dirichlet(torch.full_like(phi, model.alpha0))))
    return {"elbo": float(lls.mean()) - kl, "elbo_se": float(lls.std() / draws ** 0.5), "kl": kl,
            "loglik_at_mean": -layer_nll(model, layer, phi / phi.sum(), train)[0], "phi0": float(phi.sum())}


def subsample_step(model, layer, m, train, lo, hi, floor, g=None):
    """The unchecked Newton step with the Hessian (and, unless ``g`` is given, the gradient) of
    examples lo..hi-1, scaled to the data."""
    batches = [(train.x[a:min(a + 1000, hi)], train.y[a:min(a + 1000, hi)]) for a in range(lo, hi, 1000)]
    g_sub, h = layer_gradient_hessian(model, layer, m, batches)  # scaled by num_data / examples read
    phi0 = optimal_phi0(_trace_term(h, m), m, model.alpha0)
    return optimal_concentrations(g_sub if g is None else g, h, m, model.alpha0, phi0 * m, floor=floor)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", type=float, default=10.0)
    ap.add_argument("--draws", type=int, default=6)
    ap.add_argument("--examples", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/settle_elbo.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train = load_data("mnist", args.data_dir).train
    if len(train) < 40000:
        raise SystemExit("needs the whole MNIST training split")
    t = time.perf_counter()
    cfg = SwitchConfig(concentration="fitted", init_concentration=args.init, seed=args.seed)
    done = fit_switches(SwitchedNetwork(load_pretrained("lenet5", "mnist")), train, cfg)
    out = {"config": vars(args), "fit_seconds": time.perf_counter() - t, "layers": {}, "versions": versions()}
    model, guide = done.model, done.guide
    fitted = {k: v.detach().double().clone() for k, v in guide.concentrations().items()}
    for layer in model.layers:
        phi = fitted[layer]
        m = phi / phi.sum()
        row = {}
        settled_guide, whole_guide = copy.deepcopy(guide), copy.deepcopy(guide)
        settle_concentrations(model, settled_guide, train, layers=[layer], max_examples=args.examples)
        t = time.perf_counter()
        record = settle_concentrations(model, whole_guide, train, layers=[layer], max_examples=args.examples,
                                       whole=True)[layer]
        row["quadratic_seconds"] = time.perf_counter() - t
        row["quadratic_record"] = record
        ways = {"fitted": phi, "settled": settled_guide.concentration(layer).detach().double(),
                "quadratic-subsample": subsample_step(model, layer, m, train, 0, args.examples, guide.floor),
                "quadratic": whole_guide.concentration(layer).detach().double()}
        for name, value in ways.items():
            row[name] = {**elbo(model, layer, value, train, args.draws, args.seed), "means": (value / value.sum()).tolist()}
            print(layer, f"{name:20s}", f"ELBO {row[name]['elbo']:11.1f} ± {row[name]['elbo_se']:5.1f}",
                  f"log p(D|mean) {row[name]['loglik_at_mean']:11.1f}  phi0 {row[name]['phi0']:8.0f}", flush=True)
        _, g_full = layer_nll(model, layer, m, train, gradient=True)
        first, other = (0, args.examples), (30000, 30000 + args.examples)
        full_first = subsample_step(model, layer, m, train, *first, guide.floor, g=g_full)
        mref = full_first / full_first.sum()
        sd = (mref * (1 - mref) / (full_first.sum() + 1)).sqrt()

        def gap(a, b):
            return float(((a / a.sum() - b / b.sum()).abs() / sd).max())

        row["mean_gap_sd"] = {
            "subsample gradient and Hessian: first against other examples": gap(
                ways["quadratic-subsample"], subsample_step(model, layer, m, train, *other, guide.floor)),
            "full-data gradient, Hessian of first against other examples": gap(
                full_first, subsample_step(model, layer, m, train, *other, guide.floor, g=g_full)),
            "fitted means against the full-data step": gap(phi, full_first)}
        print(layer, "largest gap to quadratic, posterior sds:",
              ", ".join(f"{k} {v:.1f}" for k, v in row["mean_gap_sd"].items()), flush=True)
        out["layers"][layer] = row
        write_json(args.out, out)


if __name__ == "__main__":
    main()
