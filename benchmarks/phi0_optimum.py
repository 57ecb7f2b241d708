"""Where the ELBO's optimum puts a Dirichlet guide's total concentration phi_0, from the curvature.

    python benchmarks/phi0_optimum.py --data-dir DATA --problem tail [--n 300 1000 3000]
    python benchmarks/phi0_optimum.py --data-dir DATA --problem lenet [--examples 10000] [--mean-epochs 5]

For a layer with posterior mean m fixed, the ELBO as a function of phi_0 (q = Dirichlet(phi_0 m)) is

    L(phi_0) = E_q[log p(D | s)] - KL(Dirichlet(phi_0 m) || Dirichlet(alpha0 1))
             ~ log p(D | m) - c / (phi_0 + 1) - KL(phi_0),   c = 1/2 tr(H (diag(m) - m m^T)),

where H is the Hessian of the full-data negative log-likelihood in s at m (the Dirichlet's
covariance is exactly (diag(m) - m m^T) / (phi_0 + 1); the expectation is exact for a quadratic
log-likelihood, nearly so once phi_0 is large). The script computes c with the library's
``inference.concentration.layer_curvature`` (the exact Hessian, one backward pass per unit and
minibatch) and phi_0* with ``optimal_phi0`` (exact Dirichlet KL, bisection on log phi_0), and the
95% interval widths that phi_0* gives.

``--problem tail``: the reduced problem of ``benchmarks/nuts_reference.py`` (fc2 of the frozen
LeNet-5 on cached conv features, the first N examples), where a full-batch fit of 3000 steps reaches
its optimum: phi_0* is checked against that fit's phi_0 (and the NUTS widths are in
``nuts_reference.json``). ``--problem lenet``: the default layer-by-layer model on the first
``--examples`` MNIST training examples; the means come from a fit of ``--mean-epochs`` epochs a
layer in minibatches of ``--batch-size`` (the means settle within an epoch or two; phi_0 does not),
and phi_0* is each stage's optimum given those means, to compare with what a fixed budget reaches
(``concentration_trace.py``). With ``--batch-size`` equal to ``--examples`` the fit is full-batch
and, given steps enough, reaches the optimum itself: a check of phi_0* on the conv layers.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.distributions import Beta

from pyro_dirichlet_prune import DirichletGuide, SwitchModel, SplitLoader, fit, load_pretrained
from pyro_dirichlet_prune.data import Split, load_data
from pyro_dirichlet_prune.inference.concentration import layer_curvature, optimal_phi0
from pyro_dirichlet_prune.report import versions, write_json


def widths(m: torch.Tensor, phi0: float) -> float:
    """Mean 95% equal-tailed width of the Beta marginals of Dirichlet(phi0 m)."""
    m = m.double().clamp_min(1e-12)
    beta = Beta(phi0 * m, phi0 * (1 - m))
    draws = beta.sample((20000,))
    lo, hi = torch.quantile(draws, 0.025, dim=0), torch.quantile(draws, 0.975, dim=0)
    return float((hi - lo).mean())


def tail_problem(args, net, data) -> list[dict]:
    import sys
    sys.path.insert(0, "benchmarks")
    from nuts_reference import LeNetTail, conv_features
    from pyro_dirichlet_prune.models import SwitchedNetwork
    from pyro_dirichlet_prune.inference.svi import SwitchConfig, make_elbo, make_guide, switch_model
    rows = []
    for n in args.n:
        x, y = data.train.x[:n], data.train.y[:n]
        h = conv_features(net, x)
        tail = LeNetTail(net)
        cfg = SwitchConfig(schedule="joint", batch_size=n)
        model = switch_model(cfg, SwitchedNetwork(tail, [p for p in tail.switch_points() if p.name == "fc2"]), n)
        guide = make_guide(cfg, model)
        fit(model, guide, [(h, y)], epochs=3000, schedule="joint", loss=make_elbo(cfg), lr=cfg.lr, seed=0,
            progress=False)
        phi = guide.concentration("fc2").detach().double()
        m = phi / phi.sum()
        t = time.perf_counter()
        c = layer_curvature(model, "fc2", m, [(h, y)])
        star = optimal_phi0(c, m, model.alpha0)
        row = {"n": n, "c": c, "phi0_star": star, "phi0_fitted": float(phi.sum()), "seconds": time.perf_counter() - t,
               "width_star": widths(m, star), "width_fitted": widths(m, float(phi.sum()))}
        print(f"N={n}: phi0* {star:.0f}, full-batch fit's phi0 {row['phi0_fitted']:.0f}; mean 95% width "
              f"{row['width_star']:.4f} (phi0*) / {row['width_fitted']:.4f} (fit)", flush=True)
        rows.append(row)
    return rows


def lenet_problem(args, net, data) -> list[dict]:
    train = Split(data.train.x[:args.examples], data.train.y[:args.examples])
    model = SwitchModel(net, num_data=len(train))
    guide = DirichletGuide(model)
    loader = SplitLoader(train, args.batch_size, True, torch.Generator().manual_seed(0))
    fit(model, guide, loader, epochs=args.mean_epochs, seed=0, progress=False)
    rows = []
    for layer in model.layers:
        phi = guide.concentration(layer).detach().double()
        m = phi / phi.sum()
        t = time.perf_counter()
        c = layer_curvature(model, layer, m, train)
        star = optimal_phi0(c, m, model.alpha0)
        row = {"layer": layer, "c": c, "phi0_star": star, "phi0_after_mean_epochs": float(phi.sum()),
               "width_star": widths(m, star), "width_after_mean_epochs": widths(m, float(phi.sum())),
               "seconds": time.perf_counter() - t}
        print(f"{layer}: phi0* {star:.0f} (after {args.mean_epochs} epochs: {row['phi0_after_mean_epochs']:.0f}); "
              f"mean 95% width {row['width_star']:.4f} at phi0* / {row['width_after_mean_epochs']:.4f}", flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--problem", choices=("tail", "lenet"), default="tail")
    ap.add_argument("--n", type=int, nargs="+", default=[300, 1000, 3000])
    ap.add_argument("--examples", type=int, default=10000)
    ap.add_argument("--mean-epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128, help="of the fit (lenet); --examples for full batch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net = load_pretrained("lenet5", "mnist").eval()
    data = load_data("mnist", args.data_dir)
    rows = tail_problem(args, net, data) if args.problem == "tail" else lenet_problem(args, net, data)
    out = args.out or (f"benchmarks/results/phi0_optimum_{args.problem}.json" if args.problem == "tail" else
                       f"benchmarks/results/phi0_optimum_lenet_n{args.examples}_b{args.batch_size}"
                       f"_e{args.mean_epochs}.json")
    write_json(out, {"config": vars(args), "rows": rows, "versions": versions()})


if __name__ == "__main__":
    main()
