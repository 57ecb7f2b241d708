"""Choosing the fine-tuning recipe (epochs, schedule, batch size, distillation) on the
validation split.

For every seed: fit the switch posterior of the shipped LeNet-5 (the default switch settings)
and keep the units of ``--arch`` with the highest posterior means, as ``prune --arch`` does; then
for every recipe prune and fine-tune with ``prune_and_finetune`` (the one path every command
uses) and record the validation error (and with ``--test`` the test error) and the seconds.
Recipes are ``TrainConfig`` fields over the pipeline's LeNet recipe (Adam 2e-3, cosine, batch
128, shifts of 2 pixels), given as a JSON list; each is a job on Dask (``pyro_dirichlet_prune.jobs``: ``--jobs``
workers), one thread each (or ``--threads``).

    python benchmarks/finetune_recipe.py --data-dir ../shared/data --seeds 0 \\
        --recipes '[{"epochs": 10}, {"epochs": 10, "distill": true}]' --jobs 2

Writes a JSON report (``--out``) with one row per (seed, recipe) and prints one line per row.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from pyro_dirichlet_prune import prune_and_finetune
from pyro_dirichlet_prune.data import load_data
from pyro_dirichlet_prune.jobs import cached, collect, dask_client
from pyro_dirichlet_prune.inference.svi import SwitchConfig, fit_switches
from pyro_dirichlet_prune.models import SwitchedNetwork
from pyro_dirichlet_prune.models.checkpoint import load_checkpoint, shipped_checkpoint
from pyro_dirichlet_prune.pipeline import train_defaults
from pyro_dirichlet_prune.pruning.cutoff import keep_top, parse_arch
from pyro_dirichlet_prune.report import versions, write_json
from pyro_dirichlet_prune.training import TrainConfig



def _inputs(args: argparse.Namespace):
    """The shipped LeNet-5 and the data, loaded once per process (Dask worker)."""
    return cached(("finetune_recipe", args.dataset, args.data_dir),
                  lambda: (load_checkpoint(shipped_checkpoint("lenet5", args.dataset))[0],
                           load_data(args.dataset, args.data_dir)))


def _keep(args: argparse.Namespace, seed: int) -> dict[str, list[int]]:
    """The units ``--arch`` keeps by the posterior means of the switches fitted with ``seed``."""
    torch.set_num_threads(args.threads)
    net, data = _inputs(args)
    switched = SwitchedNetwork(net)
    fit = fit_switches(switched, data.train, SwitchConfig(seed=seed))
    widths = {p.name: p.width for p in net.switch_points()}
    return keep_top(fit.posterior_means(), parse_arch(args.arch, widths))


def _run(args: argparse.Namespace, keep: dict[str, list[int]], job: tuple[int, int, dict]) -> dict:
    seed, index, recipe = job
    net, data = _inputs(args)
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(**{**train_defaults("lenet5", args.dataset, "finetune"), **recipe, "seed": seed})
    t = time.perf_counter()
    splits = ("val", "test") if args.test else ("val",)
    result = prune_and_finetune(net, keep, data, cfg, seed=seed, splits=splits, desc=f"recipe {index}")
    row = {"seed": seed, "recipe": index, **recipe, "val_error": result.finetuned["val"]["error"],
           "best_epoch": result.training.best_epoch, "epochs_run": len(result.training.history),
           "history": result.training.history, "seconds": time.perf_counter() - t}
    if args.test:
        row["test_error"] = result.finetuned["test"]["error"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--arch", default="6-8-40-20")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--recipes", required=True, help="JSON list of TrainConfig fields, one object per recipe")
    ap.add_argument("--test", action="store_true", help="also record the test error")
    ap.add_argument("--jobs", type=int, default=1, help="Dask workers (1: in this process)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per job")
    ap.add_argument("--out", default="benchmarks/results/finetune_recipe.json")
    args = ap.parse_args()
    recipes = json.loads(args.recipes)
    t0 = time.perf_counter()
    with dask_client(args.jobs) as (client, _):
        keeps = dict(zip(args.seeds, client.gather(client.map(_keep, [args] * len(args.seeds), args.seeds,
                                                                    pure=False))))
        rows = []

        def show(_, row: dict) -> None:
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "history"}), flush=True)

        collect(client, {client.submit(_run, args, keeps[s], (s, i, r), pure=False): (s, i)
                         for s in args.seeds for i, r in enumerate(recipes)}, show)
    rows.sort(key=lambda r: (args.seeds.index(r["seed"]), r["recipe"]))
    summary = []
    for i, recipe in enumerate(recipes):
        rs = [r for r in rows if r["recipe"] == i]
        s = {"recipe": i, **recipe}
        for key in ("val_error", "test_error", "epochs_run", "seconds"):
            vals = [r[key] for r in rs if key in r]
            if vals:
                s[key] = statistics.fmean(vals)
                s[key + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        summary.append(s)
        print(f"recipe {i} {json.dumps(recipe)}: val {s['val_error']:.4f} ± {s['val_error_sd']:.4f}"
              + (f", test {s['test_error']:.4f} ± {s['test_error_sd']:.4f}" if "test_error" in s else "")
              + f", {s['seconds']:.1f} s")
    write_json(args.out, {"config": vars(args), "keep": keeps, "rows": rows, "summary": summary,
                          "wall_seconds": time.perf_counter() - t0, "versions": versions()})


if __name__ == "__main__":
    main()
