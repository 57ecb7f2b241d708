"""Do the switch posterior's intervals depend on the initial value and the budget? Issue 25's test.

    python benchmarks/interval_stability.py --data-dir DATA [--recipe default|fitted|converged ...] \
        [--inits 1 10] [--seed 0] [--examples N] [--out PATH]

The shipped LeNet-5 (MNIST), frozen, with the default switch model, layer by layer, on the whole
MNIST training split (or its first ``--examples``), minibatches of 256 seeded by ``--seed``: the
switch learning of the default ``prune`` run. For every recipe it fits from both initial
concentrations with the recipe's own stopping, and from the default init (the second) once more,
allowed twice as long (twice the epochs of the first run's longest stage, no rule). The recipes:

* ``default``: ``SwitchConfig()``'s own settings at the commit that runs (the report records it);
  since the recipe below became the default, the same as ``quadratic``;
* ``fitted``: the default until then, a fixed budget of one epoch a layer, the last iterate, the
  concentrations as fitted;
* ``converged``: a step decaying as 1/t, concentrations settled at every epoch end and after the
  fit, ``ConvergenceRule`` on the loss and the means ending each stage, 10 epochs the cap;
* ``settled3``: the same for a fixed 3 epochs a layer, the rule only watching;
* ``averaged``: a constant step, concentrations settled, each stage ending at its last epoch's
  iterate average (``IterateAverage``), the rule ending the stages, 10 epochs the cap;
* ``quadratic``: a constant step for 3 epochs a layer, each stage ending at its last epoch's
  average, then every concentration set to the optimum of the ELBO's quadratic expansion
  (``concentration="quadratic"``);
* ``rounds``: the same with up to 4 checked Newton steps a layer, each from where the last landed
  (``settle_rounds=4``).

Per layer it records phi_0, the means, the mean 95% interval width, the units the
default uncertainty cut-off (``pruning.cutoff.TAU``, ``DELTA``) keeps, whether the stage converged, and the
times; the summary gives, per recipe, the largest ratio between the widths of the two inits and
between the run and the one twice as long (and the largest gap between their posterior means, in
posterior standard deviations): a posterior that is the ELBO's, not the optimiser's,
keeps every pair within 10%.
"""
from __future__ import annotations

import argparse
import time

import torch

from pyro_dirichlet_prune import load_pretrained, posterior_of, uncertainty_cutoff
from pyro_dirichlet_prune.data import Split, load_data
from pyro_dirichlet_prune.inference.svi import SwitchConfig, fit_switches
from pyro_dirichlet_prune.models import SwitchedNetwork
from pyro_dirichlet_prune.report import versions, write_json

RECIPES = {
    "default": {},
    "fitted": {"epochs": 1, "average": False, "concentration": "fitted"},
    "converged": {"lr_decay": 1.0, "until_converged": True, "concentration": "settled", "epochs": 10},
    "settled3": {"lr_decay": 1.0, "concentration": "settled", "epochs": 3},
    "averaged": {"average": True, "until_converged": True, "concentration": "settled", "epochs": 10},
    "quadratic": {"average": True, "concentration": "quadratic", "epochs": 3},
    "rounds": {"average": True, "concentration": "quadratic", "epochs": 3, "settle_rounds": 4},
}


def run(net, train: Split, recipe: dict, init: float, seed: int, **override) -> dict:
    cfg = SwitchConfig(init_concentration=init, seed=seed, **{**recipe, **override})
    t = time.perf_counter()
    done = fit_switches(SwitchedNetwork(net), train, cfg)
    seconds = time.perf_counter() - t
    post = posterior_of(done.model, done.guide)
    kept = uncertainty_cutoff(post)
    layers = {}
    for k, stage in zip(done.model.layers, done.stages):
        phi = done.guide.concentration(k).detach()
        layers[k] = {"phi0": float(phi.sum()), "width": float((post.upper[k] - post.lower[k]).mean()),
                     "means": (phi / phi.sum()).tolist(),
                     "kept": len(kept[k]), "epochs": stage["epochs"], "steps": stage["steps"],
                     "fit_seconds": stage["seconds"]}
        if done.convergence is not None:
            layers[k]["converged"] = next(s["converged"] for s in done.convergence["stages"] if s["layers"] == [k])
    return {"config": {**recipe, **override, "init_concentration": init}, "seconds": seconds,
            "fit_seconds": done.seconds, "layers": layers,
            "settled": done.settled, "convergence": done.convergence}


def mean_gap_sd(a: dict, b: dict) -> float:
    """The largest difference between two runs' posterior means of a unit, in units of the
    posterior standard deviation (the larger of the two runs')."""
    ma, mb = torch.tensor(a["means"]), torch.tensor(b["means"])
    sd = torch.maximum(ma * (1 - ma) / (a["phi0"] + 1), mb * (1 - mb) / (b["phi0"] + 1)).sqrt()
    return float(((ma - mb).abs() / sd).max())


def ratio(a: float, b: float) -> float:
    return max(a, b) / min(a, b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--examples", type=int, default=None, help="the first N training examples (default: all)")
    ap.add_argument("--recipe", nargs="+", choices=sorted(RECIPES), default=sorted(RECIPES))
    ap.add_argument("--inits", type=float, nargs=2, default=[1.0, 10.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/interval_stability.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net = load_pretrained("lenet5", "mnist").eval()
    data = load_data("mnist", args.data_dir)
    train = data.train if args.examples is None else Split(data.train.x[:args.examples], data.train.y[:args.examples])
    out = {"config": {**vars(args), "train_examples": len(train)}, "recipes": {}, "versions": versions()}
    for name in args.recipe:
        recipe = RECIPES[name]
        runs = {}
        for init in args.inits:
            first = run(net, train, recipe, init, args.seed)
            runs[str(init)] = {"run": first}
            if init == args.inits[-1]:  # the default's
                longest = max(v["epochs"] for v in first["layers"].values())
                runs[str(init)]["twice_as_long"] = run(net, train, recipe, init, args.seed, epochs=2 * longest,
                                                       until_converged=False)
            for label, r in runs[str(init)].items():
                print(f"{name} init {init:g} {label}: {r['seconds']:.0f} s; " + "; ".join(
                    f"{k} phi0 {v['phi0']:.0f} width {v['width']:.4f} kept {v['kept']} epochs {v['epochs']}"
                    + (f" conv {v['converged']}" if "converged" in v else "") for k, v in r["layers"].items()),
                    flush=True)
        a, b = (runs[str(i)] for i in args.inits)
        layers = list(a["run"]["layers"])
        summary = {
            "init_width_ratio": {k: ratio(a["run"]["layers"][k]["width"], b["run"]["layers"][k]["width"]) for k in layers},
            "budget_width_ratio": {k: ratio(b["run"]["layers"][k]["width"], b["twice_as_long"]["layers"][k]["width"])
                                   for k in layers},
            "seconds": {f"init {i:g}": runs[str(i)]["run"]["seconds"] for i in args.inits},
        }
        summary["init_mean_gap_sd"] = {k: mean_gap_sd(a["run"]["layers"][k], b["run"]["layers"][k]) for k in layers}
        summary["budget_mean_gap_sd"] = {k: mean_gap_sd(b["run"]["layers"][k], b["twice_as_long"]["layers"][k])
                                         for k in layers}
        worst = max([*summary["init_width_ratio"].values(),
                     *summary["budget_width_ratio"].values()])
        summary["worst_ratio"] = worst
        print(f"{name}: worst width ratio {worst:.3f}; inits {summary['init_width_ratio']}; "
              f"budget {summary['budget_width_ratio']}; largest mean gap in posterior sds: inits "
              f"{summary['init_mean_gap_sd']}, budget {summary['budget_mean_gap_sd']}", flush=True)
        out["recipes"][name] = {"runs": runs, "summary": summary}
        write_json(args.out, out)


if __name__ == "__main__":
    main()
