"""Every guide against an exact reference: NUTS on a reduced switch model that fits a CPU.

    python benchmarks/nuts_reference.py --data-dir DATA [--n 300 1000 3000] [--layers fc2 fc1+fc2] \
        [--chains 4] [--warmup 300] [--samples 500] [--steps 3000] [--out benchmarks/results/nuts_reference.json]

The reduced problem: the shipped LeNet-5 (MNIST), frozen; only fc2 switched (one layer, D = 25),
or fc1 and fc2 (two layers, D = 100 and 25), under the switch model of ``--scale`` (``simplex``,
the paper's and the default; ``dim``, D·s, the coherent joint model), alpha0 = 0.5, on the first N
training examples. The frozen layers below fc1 (conv1, conv2) do not
depend on any switch, so their output is computed once and the model runs on it (``LeNetTail``:
fc1 → fc2 → fc3 with the same weights, switches on fc1/fc2 as in the whole network).

Reference: Pyro's NUTS on the whole-data posterior p(s | D) (the plate's N/B is 1), ``--chains``
independent chains run one after another (seeds 0..), ``--warmup`` adaptation steps and
``--samples`` draws each; R-hat and bulk/tail ESS by ArviZ (``mcmc_inference_data``).

Guides: ``dirichlet`` (Trace_ELBO, sampled switches), ``dirichlet-mean`` (the paper's mean
variant, whose objective hardly moves phi_0: its intervals are not the posterior's), ``normal``
(AutoNormal), ``lowrank`` (AutoLowRankMultivariateNormal), ``delta`` (AutoDelta: a point, no
interval), each fitted jointly on the whole data (one minibatch of N) for ``--steps`` Adam steps at
the default lr, from the default initial values. Scored per unit against the reference draws:
the error of the mean, the coverage (share of reference draws inside the guide's 95% equal-tailed
interval; 0.95 is right), the width ratio (guide's interval width / reference's), the marginal
Wasserstein-1 distance, and the ELBO (full data; mean and standard error of 8 estimates of 8
particles; none for ``delta``, a point mass, whose Trace_ELBO is the log joint at the point). A
JSON report. ``dirichlet+quadratic`` is the Dirichlet guide so fitted and then settled by
``concentration="quadratic"`` (every phi_j at the optimum of the ELBO's quadratic expansion, on all
N examples); ``dirichlet-short+quadratic`` the same after only ``--short-steps`` steps.
``--figure PATH`` draws the mean 95% interval width of each layer against N,
reference and guides, from the rows of ``--out`` (``--figure-only`` draws it without running).
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import pyro
import torch
import torch.nn.functional as F
from pyro.infer import MCMC, NUTS
from scipy.stats import wasserstein_distance
from torch import nn

from pyro_dirichlet_prune import fit, load_pretrained
from pyro_dirichlet_prune.data import load_data
from pyro_dirichlet_prune.inference.arviz_data import guide_draws, mcmc_inference_data
from pyro_dirichlet_prune.inference.concentration import settle_concentrations
from pyro_dirichlet_prune.inference.posterior import estimate_elbo
from pyro_dirichlet_prune.inference.svi import SwitchConfig, make_elbo, make_guide, switch_model
from pyro_dirichlet_prune.models import SwitchedNetwork
from pyro_dirichlet_prune.models.switch_points import SwitchPoint
from pyro_dirichlet_prune.models.switched import switch_site
from pyro_dirichlet_prune.report import versions, write_json

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

SETTLED = ("dirichlet+quadratic", "dirichlet-short+quadratic")
GUIDES = ("dirichlet", "dirichlet-mean", "normal", "lowrank", "delta") + SETTLED


class LeNetTail(nn.Module):
    """fc1 → ReLU → fc2 → ReLU → fc3 of a LeNet-5, on the flattened output of its conv layers."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = net.fc1, net.fc2, net.fc3

    def switch_points(self) -> list[SwitchPoint]:
        return [SwitchPoint(n, getattr(self, n)) for n in ("fc1", "fc2")]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(h)))))


@torch.no_grad()
def conv_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The flattened output of LeNet-5's conv layers (what fc1 reads)."""
    h = F.max_pool2d(F.relu(net.conv1(x)), 2)
    h = F.max_pool2d(F.relu(net.conv2(h)), 2)
    return torch.flatten(h, 1)


def reference(model, h, y, chains: int, warmup: int, samples: int) -> tuple[dict, dict, float]:
    """NUTS draws by site (chains × samples × D), ArviZ's diagnostics, seconds."""
    t = time.perf_counter()
    runs = []
    for chain in range(chains):
        pyro.set_rng_seed(chain)
        mcmc = MCMC(NUTS(model, target_accept_prob=0.8), num_samples=samples, warmup_steps=warmup,
                    disable_progbar=True)
        mcmc.run(h, y)
        runs.append(mcmc_inference_data(mcmc, model))
    idata = az.concat(runs, dim="chain")
    seconds = time.perf_counter() - t
    summary = az.summary(idata, kind="diagnostics", round_to="none")  # R-hat unrounded: 1.014 is not 1.01
    diag = {"r_hat_max": float(summary["r_hat"].max()), "ess_bulk_min": float(summary["ess_bulk"].min()),
            "ess_tail_min": float(summary["ess_tail"].min())}
    draws = {site: idata.posterior[site].values for site in idata.posterior.data_vars}
    return draws, diag, seconds


def score(ref: np.ndarray, q: np.ndarray) -> dict:
    """Per-unit comparison of guide draws ``q`` (S × D) with reference draws ``ref`` (S' × D)."""
    lo, hi = np.quantile(q, [0.025, 0.975], axis=0)
    rlo, rhi = np.quantile(ref, [0.025, 0.975], axis=0)
    coverage = ((ref >= lo) & (ref <= hi)).mean(0)
    width = (hi - lo) / (rhi - rlo)
    w1 = np.array([wasserstein_distance(ref[:, j], q[:, j]) for j in range(ref.shape[1])])
    mean_err = np.abs(q.mean(0) - ref.mean(0))
    return {"coverage_mean": float(coverage.mean()), "coverage_min": float(coverage.min()),
            "width_ratio_mean": float(width.mean()), "width_ratio_median": float(np.median(width)),
            "w1_mean": float(w1.mean()), "mean_abs_error_mean": float(mean_err.mean()),
            "mean_abs_error_max": float(mean_err.max()), "reference_width_mean": float((rhi - rlo).mean()),
            "guide_width_mean": float((hi - lo).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--n", type=int, nargs="+", default=[300, 1000, 3000])
    ap.add_argument("--layers", nargs="+", default=["fc2", "fc1+fc2"])
    ap.add_argument("--guides", nargs="+", default=list(GUIDES), choices=GUIDES)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--steps", type=int, default=3000, help="Adam steps of each guide (full data, one minibatch)")
    ap.add_argument("--short-steps", type=int, default=100,
                    help="Adam steps of dirichlet-short+quadratic before its quadratic settle")
    ap.add_argument("--draws", type=int, default=4000, help="guide draws scored against the reference")
    ap.add_argument("--scale", default="simplex", choices=("simplex", "dim"), help="the switch model's scale")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--figure", default=None, help="PNG of the interval widths against N")
    ap.add_argument("--figure-only", action="store_true", help="draw --figure from --out's rows and stop")
    ap.add_argument("--out", default="benchmarks/results/nuts_reference.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.figure_only:
        with open(args.out) as f:
            figure(json.load(f)["rows"], args.figure)
        return
    net = load_pretrained("lenet5", "mnist").eval()
    data = load_data("mnist", args.data_dir)
    rows = []
    for n in args.n:
        x, y = data.train.x[:n], data.train.y[:n]
        h = conv_features(net, x)
        for layers in args.layers:
            names = layers.split("+")
            tail = LeNetTail(net)
            points = [p for p in tail.switch_points() if p.name in names]
            cfg = SwitchConfig(schedule="joint", batch_size=n, scale=args.scale)
            model = switch_model(cfg, SwitchedNetwork(tail, points), n)
            ref, diag, ref_seconds = reference(model, h, y, args.chains, args.warmup, args.samples)
            print(f"N={n} {layers}: NUTS {ref_seconds:.0f} s, R-hat max {diag['r_hat_max']:.3f}, "
                  f"ESS bulk min {diag['ess_bulk_min']:.0f}", flush=True)
            row = {"n": n, "layers": layers, "scale": args.scale, "reference": {**diag, "seconds": ref_seconds}, "guides": {}}
            for name in args.guides:
                gcfg = SwitchConfig(guide="dirichlet" if name in SETTLED else name, schedule="joint", batch_size=n,
                                    scale=args.scale)
                guide = make_guide(gcfg, model)
                t = time.perf_counter()
                steps = args.short_steps if name.startswith("dirichlet-short") else args.steps
                result = fit(model, guide, [(h, y)], epochs=steps, schedule="joint", loss=make_elbo(gcfg),
                             lr=gcfg.lr, seed=0, progress=False)
                if name in SETTLED:  # then every concentration to the optimum of the ELBO's expansion
                    settle_concentrations(model, guide, [(h, y)], schedule="joint", batch_size=n, whole=True)
                seconds = time.perf_counter() - t
                q = guide_draws(model, guide, args.draws, seed=0)
                elbo, elbo_se = estimate_elbo(model, guide, [(h, y)] * 8, num_particles=8, seed=0)
                if name == "delta":  # a point mass has no density against Lebesgue: no ELBO
                    elbo, elbo_se = None, None
                tail_losses = result.losses[-100:]
                entry = {"seconds": seconds, "elbo": elbo, "elbo_se": elbo_se,
                         "final_loss_mean_last_100": float(np.mean(tail_losses)),
                         "loss_change_last_half": float(np.mean(result.losses[-len(result.losses) // 4:])
                                                        - np.mean(result.losses[len(result.losses) // 2:
                                                                                -len(result.losses) // 4])),
                         "layers": {}}
                for layer in names:
                    site = switch_site(layer)
                    entry["layers"][layer] = score(ref[site].reshape(-1, ref[site].shape[-1]), q[site])
                row["guides"][name] = entry
                s = entry["layers"][names[-1]]
                shown = "n/a" if elbo is None else f"{elbo:.1f}"
                print(f"  {name:15s} ELBO {shown:>10s}  {names[-1]}: coverage {s['coverage_mean']:.3f}  width "
                      f"ratio {s['width_ratio_median']:.3f}  W1 {s['w1_mean']:.4f}  ({seconds:.0f} s)", flush=True)
            rows.append(row)
            write_json(args.out, {"config": vars(args), "rows": rows, "versions": versions()})
    if args.figure:
        figure(rows, args.figure)


def figure(rows: list[dict], path: str) -> None:
    """Mean 95% interval width against N, one panel per (switched layers, layer): the reference's
    (black) and each guide's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = sorted({(r["layers"], r.get("scale", "simplex"), layer) for r in rows
                     for layer in r["layers"].split("+")})
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, (layers, scale, layer) in zip(axes[0], panels):
        sub = sorted((r for r in rows if r["layers"] == layers and r.get("scale", "simplex") == scale),
                     key=lambda r: r["n"])
        ns = [r["n"] for r in sub]
        ref = [next(iter(r["guides"].values()))["layers"][layer]["reference_width_mean"] for r in sub]
        ax.plot(ns, ref, "k-o", lw=2, label="NUTS")
        for g in sub[0]["guides"]:
            if g == "delta":
                continue
            ax.plot(ns, [r["guides"][g]["layers"][layer]["guide_width_mean"] for r in sub], "--.", label=g)
        ax.set(xscale="log", yscale="log", xlabel="N", title=f"{layer} ({layers}, {scale})")
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
    axes[0][0].set_ylabel("mean 95% interval width")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
