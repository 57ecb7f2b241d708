"""Choosing tau and delta of the uncertainty cut-off on the validation split, next to the
``--rate`` sweep and the budget cut-off, from the same switch posterior.

For every seed: fit the switch posterior of a shipped network (``--model``, default LeNet-5) once
(``--config``: any ``SwitchConfig``, e.g. learned weights); for every (tau, delta) of a grid apply the uncertainty
cut-off P(D·s < tau) >= 1 - delta; for every rate the ``--rate`` cut-off; for the budget (and for every
``--mac-factors`` F, the budget of F times fewer MACs than the network's) the budget cut-off; for every ``--lams`` the decision cut-off (and under ``--decision-budget``); for
every rate and every ``--baselines`` ranking (default ``greedy``: loss-based greedy elimination,
which is what the decision cut-off of a frozen network amounts to) that ranking's units; prune
the fitted network (with its learned weights, when they learned), fine-tune ``--ft-epochs`` epochs (the
pipeline's recipe, ``PruneConfig().finetune_recipe()``: Adam 2e-3, cosine decay, shifts of 2 pixels, best
validation epoch kept; with ``--finetune-config`` the recipe of a ``search`` with that setting,
``SearchConfig.train_config``, so that the rows compare with a search's records) and
record MACs, params and the validation error. Selection uses the validation error only; with
``--test`` the test error of every pruned network is recorded too, for the closing table.
Distinct pruned networks are fine-tuned once each, as jobs on Dask (``pyro_dirichlet_prune.jobs``:
``--jobs`` workers of one thread each); each is logged as it finishes, and ``--resume`` keeps
those of an interrupted run.

    python benchmarks/cutoff_selection.py --data-dir ../shared/data \\
        --config '{"scale": "simplex", "schedule": "sequential"}' --seeds 0 1 2 --jobs 2
    python benchmarks/cutoff_selection.py --model vgg16 --dataset fashion-mnist --data-dir ../shared/data \
        --config '{"scale": "dim", "schedule": "joint"}' --taus 1 --deltas 0.05 --rates --baselines \
        --budget '' --mac-factors 2 4 --ft-epochs 5 --test --seeds 0 1 2 \
        --finetune-config '{"optimizer": "sgd", "lr": 0.01, "weight_decay": 5e-4, "channels_last": true}'

Writes a JSON report (``--out``) with one row per (seed, cut-off) and a summary per cut-off
(mean ± sd over seeds), and prints one line per row.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from pyro_dirichlet_prune.data import load_data
from pyro_dirichlet_prune.inputs import fit_to_network
from pyro_dirichlet_prune.jobs import cached, collect, dask_client, in_this_process, job_threads
from pyro_dirichlet_prune.inference.svi import SwitchConfig, fit_switches, switch_posterior
from pyro_dirichlet_prune.models import SwitchedNetwork, switch_points
from pyro_dirichlet_prune.models.checkpoint import load_checkpoint, shipped_checkpoint
from pyro_dirichlet_prune.pruning.budget import budget_keep, size_function
from pyro_dirichlet_prune.pruning.decision import decision_cutoff, decision_examples
from pyro_dirichlet_prune.pruning.cutoff import arch_string, keep_top, rate_widths, removal_order, uncertainty_keep
from pyro_dirichlet_prune.pipeline import PruneConfig
from pyro_dirichlet_prune.pruning.ranking import get_ranking
from pyro_dirichlet_prune.report import versions, write_json
from pyro_dirichlet_prune.prune_step import prune_and_finetune
from pyro_dirichlet_prune.search import SearchConfig



def inputs(dataset: str, data_dir: str | None, model: str = "lenet5"):
    """The data (fitted to the network's input size) and the shipped ``model`` of ``dataset``,
    loaded once per process (Dask worker)."""
    def load():
        net, info = load_checkpoint(shipped_checkpoint(model, dataset), model)
        return fit_to_network(load_data(dataset, data_dir), info["input_shape"]), net
    return cached(("cutoff_selection", dataset, data_dir, model), load)


def parse_budget(budget: str | None) -> tuple[int, int] | None:
    """``"MACS,PARAMS"`` as two integers, or ``None`` for an empty string or ``None`` (no budget)."""
    if not budget:
        return None
    try:
        macs, params = (int(v) for v in budget.split(","))
    except ValueError:
        raise ValueError(f"budget must be 'MACS,PARAMS' (two integers), got {budget!r}") from None
    return macs, params


def _cutoffs(args: argparse.Namespace, seed: int, threads: int | None) -> tuple[list[tuple[dict, dict]], float]:
    """Fit the posterior for ``seed`` and return every cut-off's kept indices."""
    job_threads(threads)
    data, net = inputs(args.dataset, args.data_dir, args.model)
    widths = {p.name: p.width for p in switch_points(net)}
    cfg = SwitchConfig(**{**json.loads(args.config), "seed": seed})
    torch.manual_seed(seed)
    switched = SwitchedNetwork(net)
    t = time.perf_counter()
    fit = fit_switches(switched, data.train, cfg)
    post = switch_posterior(fit, cfg, data.train, elbo_particles=0)
    fit_seconds = time.perf_counter() - t
    means = fit.posterior_means()
    pruned_from = fit.fitted_network()  # the network itself, or with its learned weights
    state = pruned_from.state_dict() if fit.learns_weights else None
    cuts = []
    x, y = decision_examples(data.train, args.decision_examples, seed)
    points = switch_points(pruned_from)
    for lam in args.lams:
        keep = decision_cutoff(pruned_from, points, x, y, data.input_shape, lam=lam, measure=args.decision_measure).keep
        cuts.append(({"cutoff": "decision", "lam": lam, "measure": args.decision_measure}, keep))
    if args.decision_budget:
        macs, params = parse_budget(args.decision_budget)
        keep = decision_cutoff(pruned_from, points, x, y, data.input_shape, target={"macs": macs, "params": params},
                               measure=args.decision_measure).keep
        cuts.append(({"cutoff": "decision", "macs": macs, "params": params, "measure": args.decision_measure}, keep))
    for tau, delta in itertools.product(args.taus, args.deltas):
        cuts.append(({"cutoff": "uncertainty", "tau": tau, "delta": delta},
                     uncertainty_keep(post.prob_below(tau), means, delta)[0]))
    for rate in args.rates:
        cuts.append(({"cutoff": "rate", "rate": rate}, keep_top(means, rate_widths(rate, widths))))
    for name in args.baselines:  # rankings that read no posterior, on the network pruned
        scores = get_ranking(name)(pruned_from, points, data.train, seed=seed)
        for rate in args.rates:
            cuts.append(({"cutoff": "rate", "rate": rate, "ranking": name}, keep_top(scores, rate_widths(rate, widths))))
    size = size_function(net, data.input_shape)
    orders = {tau: removal_order(post.prob_below(tau), means) for tau in args.taus}
    if args.budget:
        macs, params = parse_budget(args.budget)
        for tau in args.taus:
            keep, _ = budget_keep(orders[tau], widths, size, {"macs": macs, "params": params})
            cuts.append(({"cutoff": "budget", "tau": tau, "macs": macs, "params": params}, keep))
    for factor in args.mac_factors:
        macs = int(size(dict(widths))["macs"] / factor)
        for tau in args.taus:
            keep, _ = budget_keep(orders[tau], widths, size, {"macs": macs})
            cuts.append(({"cutoff": "budget", "tau": tau, "mac_factor": factor, "macs": macs}, keep))
    return cuts, fit_seconds, state


def _finetune(args: argparse.Namespace, job: tuple[int, dict, dict | None], threads: int | None = None) -> dict:
    """Prune to ``keep``, fine-tune, and measure (``prune_and_finetune``); ``state``: the learned
    weights (switch means folded in) of a fit with learned weights, else None."""
    job_threads(threads)
    seed, keep, state = job
    data, net = inputs(args.dataset, args.data_dir, args.model)
    if state is not None:
        net = copy.deepcopy(net)
        net.load_state_dict(state)
    if args.finetune_config is None:
        recipe = dataclasses.replace(PruneConfig().finetune_recipe(), epochs=args.ft_epochs, seed=seed,
                                     device=args.device)
    else:  # a search's records' recipe
        finetune = {**json.loads(args.finetune_config), "device": args.device}
        recipe = SearchConfig(finetune=finetune, finetune_epochs=args.ft_epochs).train_config(seed)
    r = prune_and_finetune(net, keep, data, recipe, seed=seed, splits=("val", "test") if args.test else ("val",))
    out = {"seed": seed, "arch": arch_string(keep), "macs": r.size["macs"], "params": r.size["params"],
           "val_error_pruned": r.pruned["val"]["error"], "val_error": r.finetuned["val"]["error"],
           "ft_seconds": r.seconds["finetune"]}
    if args.test:
        out["test_error"] = r.finetuned["test"]["error"]
    return out


def _resumed(partial: Path) -> dict:
    """The fine-tuned networks an interrupted run logged, by (seed, kept units)."""
    out = {}
    if partial.is_file():
        for line in partial.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line cut by the interruption
                continue
            if "key" in row:
                out[(row["key"][0], row["key"][1])] = {k: v for k, v in row.items() if k != "key"}
    return out


def _label(desc: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in desc.items() if k not in ("macs", "params"))


def by_setting(rows: Sequence[Mapping]) -> dict[str, list[Mapping]]:
    """The rows grouped by cut-off setting (``label``), in their first order."""
    out: dict[str, list[Mapping]] = {}
    for r in rows:
        out.setdefault(r["label"], []).append(r)
    return out


def within(rows: Sequence[Mapping], budget: tuple[int, int] | None) -> bool:
    """Whether every row's network (``macs``, ``params``) is within the budget (always, without one)."""
    return budget is None or all(r["macs"] <= budget[0] and r["params"] <= budget[1] for r in rows)


def summarise(rows: Sequence[Mapping]) -> list[dict]:
    """Mean ± sd over seeds of every cut-off's error, MACs and params."""
    out = []
    for label, rs in by_setting(rows).items():
        s = {"label": label, "seeds": len(rs), "archs": sorted({r["arch"] for r in rs})}
        for key in ("macs", "params", "val_error", "test_error"):
            vals = [r[key] for r in rs if key in r]
            if vals:
                s[key] = statistics.fmean(vals)
                s[key + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(s)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet5", help="a network shipped for --dataset")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--config", default="{}", help="JSON SwitchConfig fields")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--taus", type=float, nargs="*", default=[0.25, 0.5, 1.0],
                    help="taus of the uncertainty and budget cut-offs; none given: neither runs")
    ap.add_argument("--deltas", type=float, nargs="+", default=[0.01, 0.05, 0.2])
    ap.add_argument("--rates", type=float, nargs="*", default=[0.3, 0.4, 0.5, 0.6, 0.7],
                    help="rates of the rate sweep; none given: no sweep")
    ap.add_argument("--budget", default="169320,7554",
                    help="MACs,params of the budget cut-off (default: 6-8-40-20's); '' for none")
    ap.add_argument("--lams", type=float, nargs="*", default=[],
                    help="lambdas of the decision cut-off (pruning/decision.py)")
    ap.add_argument("--decision-budget", default="",
                    help="MACs,params of the decision cut-off under a budget; '' for none")
    ap.add_argument("--decision-measure", default="macs+params")
    ap.add_argument("--decision-examples", type=int, default=1000)
    ap.add_argument("--baselines", nargs="*", default=["greedy"],
                    help="rankings of pruning.ranking.RANKINGS cut at every --rates beside the posterior means "
                         "(default greedy); none given: none")
    ap.add_argument("--mac-factors", type=float, nargs="*", default=[],
                    help="budget cut-offs (each --taus) at F times fewer MACs than the network's, MACs only")
    ap.add_argument("--ft-epochs", type=int, default=5)
    ap.add_argument("--finetune-config", default=None,
                    help="JSON TrainConfig fields: fine-tune as a search with this --finetune-config does")
    ap.add_argument("--test", action="store_true", help="also record every pruned network's test error")
    ap.add_argument("--jobs", type=int, default=1,
                    help="Dask workers, one thread each: 1 runs in this process, N a local cluster of N processes")
    ap.add_argument("--resume", action="store_true",
                    help="keep the fine-tuned networks of an interrupted run's --out .partial.jsonl (same options)")
    ap.add_argument("--device", default="cpu", help="where fine-tuning runs (cpu, cuda)")
    ap.add_argument("--out", default="benchmarks/results/cutoff_selection.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    partial = Path(args.out).with_suffix(".partial.jsonl")  # each network as it finishes
    results = _resumed(partial) if args.resume else {}
    partial.parent.mkdir(parents=True, exist_ok=True)
    with dask_client(args.jobs) as (client, threads), open(partial, "a" if args.resume else "w") as log:
        if in_this_process(client):
            torch.set_num_threads(1)
        fits = client.map(_cutoffs, [args] * len(args.seeds), args.seeds, [threads] * len(args.seeds), pure=False)
        fitted = dict(zip(args.seeds, client.gather(fits)))
        jobs = {}
        for seed, (cuts, _, state) in fitted.items():
            for _, keep in cuts:
                jobs.setdefault((seed, json.dumps(keep, sort_keys=True)), (seed, keep, state))

        def keep_result(key, result) -> None:
            results[key] = result
            log.write(json.dumps({"key": list(key), **result}) + "\n")
            log.flush()

        collect(client, {client.submit(_finetune, args, job, threads, pure=False): key
                         for key, job in jobs.items() if key not in results}, keep_result)
    rows = []
    for seed, (cuts, fit_seconds, _) in fitted.items():
        for desc, keep in cuts:
            row = {"seed": seed, "label": _label(desc), **desc,
                   **results[(seed, json.dumps(keep, sort_keys=True))], "fit_seconds": fit_seconds}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = summarise(rows)
    for s in summary:
        print(json.dumps(s), flush=True)
    write_json(args.out, {"config": vars(args), "rows": rows, "summary": summary, "versions": versions(),
                          "seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
