"""``dirichlet-prune compare-guides``: every switch guide on the same pre-trained network, data and seeds.

For every (guide, seed) the switch posterior is fitted, then measured by

* the ELBO of the objective the guide was fitted to, with many particles: for a joint fit the
  whole model's, for a layer-by-layer fit (the default) the sum over layers of each stage's ELBO,
  the model with only that layer switched (``svi.switch_posterior``; for ``delta``, whose entropy
  is -inf, this is the MAP objective log p(y, s) at the point, not a bound). The whole model's
  ELBO is kept in the records as ``elbo_whole_model``;
* the held-out (test) log-likelihood and error of the switched network at the posterior mean:
  for a joint fit every layer multiplied by its scale factor times E_q[s_l]; for a layer-by-layer
  fit the average over layers of the network with only that layer so switched (per layer in
  ``heldout_by_layer``);
* a posterior predictive check on the same held-out data: the log pointwise predictive density
  under ``predictive_draws`` draws s ~ q, lppd = (1/N) sum_n log (1/S) sum_s p(y_n | x_n, s), and
  the error of that predictive (``predictive_check``), per stage for a layer-by-layer fit (the
  others pre-trained), for the whole model for a joint one. Unlike the plug-in at the mean it
  tells a guide whose draws stray from the data (too wide, or centred wrong) from a good one;
* the test error after pruning to one common architecture by posterior mean (the
  ``posterior-mean`` ranking), before and after fine-tuning (``prune_step.prune_and_finetune``);
* the rank agreement of the posterior means between guides: Kendall's tau per layer;
* the wall time of fitting.

Results are kept per (guide, seed) in the run's resumable state; tables (Markdown, JSON) and
figures summarise them as mean ± sd over the seeds.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.stats import kendalltau
from tqdm.auto import tqdm

from .data import load_data
from .heldout import heldout_at_mean, predictive_check, predictive_scales
from .inputs import fit_to_network
from .errors import UserError
from .jobs import cached, check_runner, collect, dask_client, job_threads
from .inference.builders import GUIDES, GuideBuilder, guide_builder, guide_name
from .inference.svi import SwitchConfig, fit_switches, switch_posterior
from .models import SwitchedNetwork, build_model
from .models.switched import switch_factors
from .models.checkpoint import load_checkpoint
from .pipeline import PruneConfig, resolve_checkpoint, subset_train
from .prune_step import prune_and_finetune
from .pruning.cutoff import arch_string, keep_top, parse_arch, rate_widths
from .pruning.ranking import DEFAULT_RANKING, FittedSwitches, get_ranking
from .search.records import sha256
from .report import now, output_folder, versions, write_json
from .runstate import RunState
from .training import TrainConfig, evaluate


@dataclass
class CompareConfig:
    model: str = "lenet5"
    dataset: str = "mnist"
    data_dir: str | None = None
    checkpoint: str | None = None
    guides: list[str | GuideBuilder] = field(default_factory=lambda: list(GUIDES))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    switch: SwitchConfig = field(default_factory=SwitchConfig)
    arch: str | None = None
    rate: float | None = None
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, lr=2e-3, augment_shift=2))
    elbo_particles: int = 16
    elbo_batches: int = 20
    predictive_draws: int = 32
    val_size: int = 5000
    split_seed: int = 0
    max_train_examples: int | None = None


def kendall_by_layer(records: Sequence[dict], guides: Sequence[str]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Kendall's tau between the posterior means of every pair of guides, per layer, one value per
    seed that both guides ran: ``out[layer]["a|b"] = [tau_seed0, ...]``."""
    by = {(r["guide"], r["seed"]): r for r in records}
    seeds = sorted({r["seed"] for r in records})
    layers = list(records[0]["means"]) if records else []
    out: dict = {layer: {} for layer in layers}
    for a, b in itertools.combinations(guides, 2):
        for layer in layers:
            taus = []
            for s in seeds:
                if (a, s) in by and (b, s) in by:
                    t = kendalltau(by[(a, s)]["means"][layer], by[(b, s)]["means"][layer]).statistic
                    taus.append(float(t) if t == t else 0.0)  # constant means (nan) rank nothing: 0
            out[layer][f"{a}|{b}"] = taus
    return out


METRICS = [
    ("elbo", "ELBO", "{:.1f}"),
    ("heldout_nll", "held-out NLL at mean", "{:.4f}"),
    ("heldout_error", "held-out error at mean", "{:.4f}"),
    ("predictive_lppd", "held-out lppd, posterior draws", "{:.4f}"),
    ("predictive_error", "held-out error, posterior predictive", "{:.4f}"),
    ("test_error_pruned", "test error pruned", "{:.4f}"),
    ("test_error_finetuned", "test error fine-tuned", "{:.4f}"),
    ("fit_seconds", "fit seconds", "{:.1f}"),
]


SCHEDULE_NOTES = {
    "joint": "Switches fitted jointly: ELBO of the whole model; held-out metrics with every layer switched "
             "at its posterior mean, and the posterior predictive with every layer at its draw.",
    "sequential": "Switches fitted layer by layer: ELBO = sum over layers of each stage's ELBO (only that layer "
                  "switched); held-out metrics averaged over layers, each switched alone at its posterior mean, "
                  "and the posterior predictive per stage: each layer alone at its draws (a per-stage "
                  "conditional posterior, the others pre-trained).",
}


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return float("nan"), float("nan")
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def summarise(records: Sequence[dict], guides: Sequence[str]) -> dict:
    """Mean ± sd over seeds of every metric per guide, and Kendall's tau per layer and pair."""
    table = {}
    for g in guides:
        rows = [r for r in records if r["guide"] == g]
        table[g] = {key: dict(zip(("mean", "sd"), _mean_sd([r[key] for r in rows]))) | {"n": len(rows)}
                    for key, _, _ in METRICS}
    kendall = kendall_by_layer(records, guides)
    return {
        "table": table,
        "kendall_tau": {layer: {pair: dict(zip(("mean", "sd"), _mean_sd(v))) | {"per_seed": v}
                                for pair, v in pairs.items()} for layer, pairs in kendall.items()},
    }


def markdown(summary: dict, guides: Sequence[str], title: str, note: str = "") -> str:
    lines = [f"# {title}", "", *([note, ""] if note else []), "| guide | " + " | ".join(label for _, label, _ in METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    for g in guides:
        cells = []
        for key, _, fmt in METRICS:
            m = summary["table"][g][key]
            cells.append("n/a" if m["mean"] != m["mean"] else f"{fmt.format(m['mean'])} ± {fmt.format(m['sd'])}")
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    lines += ["", "Kendall's tau between the guides' posterior means (mean ± sd over seeds):", "",
              "| pair | " + " | ".join(summary["kendall_tau"]) + " |", "|---|" + "---|" * len(summary["kendall_tau"])]
    pairs = list(next(iter(summary["kendall_tau"].values()), {}))
    for pair in pairs:
        cells = [f"{v[pair]['mean']:.2f} ± {v[pair]['sd']:.2f}" for v in summary["kendall_tau"].values()]
        lines.append(f"| {pair.replace('|', ' vs ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_comparison(summary: dict, guides: Sequence[str], path: Path, title: str) -> None:
    """Bar charts (mean ± sd over seeds) of every metric per guide, and a Kendall-tau heat map per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (key, label, _) in zip(axes.flat, METRICS):
        m = [summary["table"][g][key]["mean"] for g in guides]
        s = [summary["table"][g][key]["sd"] for g in guides]
        ax.bar(range(len(guides)), [0 if v != v else v for v in m], yerr=[0 if v != v else v for v in s],
               color="tab:blue", alpha=0.8, capsize=3)
        ax.set_xticks(range(len(guides)), guides, rotation=30, ha="right")
        ax.set_ylabel(label)
        ax.set_title(label)
    fig.suptitle(title + " (mean ± sd over seeds)")
    fig.tight_layout()
    fig.savefig(path / "compare.png", dpi=110)
    plt.close(fig)

    layers = list(summary["kendall_tau"])
    fig, axes = plt.subplots(1, len(layers), figsize=(1.2 + 3.4 * len(layers), 3.9), squeeze=False)
    for n, (ax, layer) in enumerate(zip(axes[0], layers)):
        mat = np.eye(len(guides))
        for i, j in itertools.combinations(range(len(guides)), 2):
            v = summary["kendall_tau"][layer][f"{guides[i]}|{guides[j]}"]["mean"]
            mat[i, j] = mat[j, i] = v
        im = ax.imshow(mat, vmin=-1, vmax=1, cmap="RdBu")
        ax.set_xticks(range(len(guides)), guides, rotation=45, ha="right")
        ax.set_yticks(range(len(guides)), guides if n == 0 else [""] * len(guides))
        ax.set_title(f"{layer}: Kendall's tau")
        for i in range(len(guides)):
            for j in range(len(guides)):
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(title + ": rank agreement of posterior means")
    fig.savefig(path / "kendall.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _config_json(cfg: CompareConfig) -> dict:
    """The configuration as plain JSON values: a guide given as a ``GuideBuilder`` is described
    (its name and class), so that a report names it and a resumed run compares equal."""
    out = dataclasses.asdict(cfg)
    out["guides"] = [g if isinstance(g, str) else guide_builder(g).describe() for g in cfg.guides]
    return out


def _switch_config(cfg: CompareConfig, guide: str | GuideBuilder, seed: int) -> SwitchConfig:
    """The switch settings of one (guide, seed): the comparison's, with what the guide needs (the
    Monte-Carlo KL and one shared draw per minibatch unless the guide supports the others)."""
    builder = guide_builder(guide)
    return dataclasses.replace(cfg.switch, guide=guide, seed=seed,
                               elbo=cfg.switch.elbo if builder.closed_form_kl else "trace",
                               sampling=cfg.switch.sampling if builder.per_example else "shared")


def _one(net, data, cfg: CompareConfig, guide: str | GuideBuilder, seed: int, kept_counts: dict[str, int]) -> dict:
    switch_cfg = _switch_config(cfg, guide, seed)
    guide = guide_name(guide)
    switched = SwitchedNetwork(net)
    t = time.perf_counter()
    fit = fit_switches(switched, data.train, switch_cfg)
    fit_seconds = time.perf_counter() - t
    post = switch_posterior(fit, switch_cfg, data.train, cfg.elbo_particles, cfg.elbo_batches)
    means = fit.posterior_means()
    factor = switch_factors({k: v.numel() for k, v in means.items()}, switch_cfg.scale, switch_cfg.gain)
    net = fit.fitted_network()  # the pre-trained network, or the one whose weights learned too
    if fit.learns_weights:  # the network at the posterior mean is the fitted one (W_hat, means folded in)
        heldout, heldout_by_layer = evaluate(net, data.test), None
    else:
        heldout, heldout_by_layer = heldout_at_mean(switched, means, factor, data.test, switch_cfg.schedule)
    scales = predictive_scales(fit, factor, cfg.predictive_draws, seed)
    checked = SwitchedNetwork(net) if fit.learns_weights else switched
    predictive, predictive_by_layer = predictive_check(checked, scales, data.test, switch_cfg.schedule)
    if switch_cfg.schedule == "sequential" and post.stage_elbos is not None:
        elbo = sum(e for e, _ in post.stage_elbos.values())
        elbo_se = math.sqrt(sum(se ** 2 for _, se in post.stage_elbos.values()))
    else:
        elbo, elbo_se = post.elbo, post.elbo_se
    ranking = get_ranking(DEFAULT_RANKING, fitted=FittedSwitches(switch_cfg, means))
    keep = keep_top(ranking(net, None, data.train, seed=seed), kept_counts)
    r = prune_and_finetune(net, keep, data, dataclasses.replace(cfg.finetune, seed=seed), seed=seed,
                           desc=f"fine-tune {guide} seed {seed}")
    return {
        "guide": guide, "seed": seed, "elbo": elbo, "elbo_standard_error": elbo_se,
        "elbo_whole_model": post.elbo, "stage_elbos": post.stage_elbos,
        "heldout_nll": heldout["nll"], "heldout_error": heldout["error"], "heldout_by_layer": heldout_by_layer,
        "predictive_lppd": predictive["lppd"], "predictive_error": predictive["error"],
        "predictive_by_layer": predictive_by_layer, "predictive_draws": cfg.predictive_draws,
        "test_error_pruned": r.pruned["test"]["error"], "test_error_finetuned": r.finetuned["test"]["error"],
        "val_error_finetuned": r.finetuned["val"]["error"], "fit_seconds": fit_seconds,
        "finetune_seconds": r.seconds["finetune"], "arch": arch_string(keep),
        "means": {k: v.tolist() for k, v in means.items()},
    }


def _job(key: tuple, cfg: CompareConfig, ckpt: str, guide: str | GuideBuilder, seed: int, kept_counts: dict[str, int],
         threads: int | None) -> dict:
    """One (guide, seed) record on a worker, which loads the network and the data once (under
    ``key``, which names the configuration and the checkpoint)."""

    def build():
        net, info = load_checkpoint(ckpt, cfg.model)
        data = load_data(cfg.dataset, cfg.data_dir, cfg.val_size, cfg.split_seed)
        return net, fit_to_network(subset_train(data, cfg.max_train_examples), info["input_shape"])

    job_threads(threads)
    net, data = cached(key, build)
    return _one(net, data, cfg, guide, seed, kept_counts)


def run_compare(cfg: CompareConfig, out: str | Path, overwrite: bool = False, resume: bool = False,
                jobs: int = 1, scheduler: str | None = None, client=None) -> dict:
    """Run every guide of ``cfg.guides`` for every seed (module docstring); writes ``records.json``,
    ``table.json``, ``table.md``, ``compare.png``, ``kendall.png`` and ``report.json`` into ``out``.
    Every finished (guide, seed) is saved at once; ``resume`` continues an interrupted comparison.
    The (guide, seed) jobs run on Dask as the search's do (``jobs``, ``scheduler``, ``client``:
    ``pyro_dirichlet_prune.jobs``); the records do not depend on where they ran."""
    check_runner(jobs, scheduler, client)
    unknown = [g for g in cfg.guides if isinstance(g, str) and g not in GUIDES]
    if unknown or not cfg.guides:
        raise UserError(f"unknown guide(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(GUIDES)}, "
                        f"or give a GuideBuilder")
    names = [guide_name(g) for g in cfg.guides]  # a TypeError for anything but a name or a GuideBuilder
    if len(set(names)) != len(names) or len(set(cfg.seeds)) != len(cfg.seeds) or not cfg.seeds:
        raise UserError("give each guide and each seed once, and at least one seed")
    if any(s < 0 for s in cfg.seeds):
        raise UserError(f"seeds must be non-negative, got {cfg.seeds}")
    if cfg.arch is not None and cfg.rate is not None:
        raise UserError("give arch or rate, not both")
    if cfg.elbo_particles < 1 or cfg.elbo_batches < 1 or cfg.predictive_draws < 1:
        raise UserError("elbo_particles, elbo_batches and predictive_draws must be positive")
    try:
        for guide in cfg.guides:  # every guide with these settings (learned weights need a Dirichlet guide)
            _switch_config(cfg, guide, 0).validate()
        cfg.finetune.validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    build_model(cfg.model)
    ckpt = resolve_checkpoint(PruneConfig(model=cfg.model, dataset=cfg.dataset, checkpoint=cfg.checkpoint))
    net, info = load_checkpoint(ckpt, cfg.model)
    widths = {p.name: p.width for p in net.switch_points()}
    if cfg.arch is not None:
        kept_counts = parse_arch(cfg.arch, widths)
    else:
        kept_counts = rate_widths(cfg.rate if cfg.rate is not None else 0.5, widths)
    data = subset_train(load_data(cfg.dataset, cfg.data_dir, cfg.val_size, cfg.split_seed), cfg.max_train_examples)
    data = fit_to_network(data, info["input_shape"])
    if tuple(info["input_shape"]) != tuple(data.input_shape) or info["num_classes"] != data.num_classes:
        raise UserError(f"checkpoint {ckpt} does not take {cfg.dataset} inputs")
    title = f"{cfg.model} on {cfg.dataset}, switch guides compared (pruned to {arch_string(kept_counts)})"
    t0 = time.perf_counter()
    with output_folder(out, overwrite, resume) as tmp:
        state = RunState(tmp, 1, config=_config_json(cfg))
        if resume:
            state.load()
        records: list[dict] = list((state.get("records") or {}).get("records", []))
        done = {(r["guide"], r["seed"]) for r in records}
        by_name = dict(zip(names, cfg.guides))
        todo = [(g, s) for s in cfg.seeds for g in names if (g, s) not in done]
        ckpt_path = str(Path(ckpt).resolve())
        key = ("compare", repr(_config_json(cfg)), ckpt_path, sha256(ckpt))
        bar = tqdm(total=len(todo), desc="compare-guides", disable=None)

        def keep(label: tuple[str, int], record: dict) -> None:
            records.append(record)
            state.save("records", {"records": records, "global_step": len(records)})
            bar.update()

        try:
            with dask_client(jobs, scheduler, client, shared=(key, (net, data))) as (c, threads):
                collect(c, {c.submit(_job, key, cfg, ckpt_path, by_name[g], s, kept_counts, threads, pure=False): (g, s)
                            for g, s in todo}, keep)
        finally:
            bar.close()
        order = {(g, s): i for i, (g, s) in enumerate((g, s) for s in cfg.seeds for g in names)}
        records.sort(key=lambda r: order.get((r["guide"], r["seed"]), len(order)))
        summary = summarise(records, names)
        write_json(tmp / "records.json", records)
        write_json(tmp / "table.json", summary)
        (tmp / "table.md").write_text(markdown(summary, names, title, SCHEDULE_NOTES[cfg.switch.schedule]))
        plot_comparison(summary, names, tmp, title)
        report = {
            "command": "compare-guides", "created": now(), "config": _config_json(cfg), "checkpoint": str(ckpt),
            "data": {"source": data.source, "train": len(data.train), "val": len(data.val), "test": len(data.test)},
            "architecture": arch_string(kept_counts), "summary": summary, "resumed": resume,
            "resumed_from": state.resumed_from, "seconds": time.perf_counter() - t0, "versions": versions(),
        }
        write_json(tmp / "report.json", report)
    return report
