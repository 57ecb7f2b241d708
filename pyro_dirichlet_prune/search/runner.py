"""Running a search: each method's ranking of the units, one record per (method, seed,
architecture), as jobs on a Dask cluster (``pyro_dirichlet_prune.jobs``), and the report of the
whole search."""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import jobs as jobs_
from ..data import DATASETS, DataBundle, load_data
from ..inputs import fit_to_network
from ..pretraining import subset_train
from ..errors import NumericalError, UserError
from ..models.checkpoint import load_checkpoint, shipped_checkpoint
from ..models.switch_points import switch_points
from ..pruning.baselines import check_scores
from ..pruning.budget import size_function
from ..pruning.cutoff import keep_top, parse_arch
from ..prune_step import prune_and_finetune
from ..report import now, versions
from .config import SearchConfig
from .pools import load_pool
from .records import load_records, prepare_folder, read_json, record_key, sha256, write_json_durable
from .render import write_summary
from .stats import summarize

_NOT_COMPARED = ("data_dir", "checkpoint", "pool")  # paths; what they resolve to is compared


# ----------------------------------------------------------------------------- rankings and records


def method_scores(
    method: str, net: nn.Module, data: DataBundle, seed: int, cfg: SearchConfig
) -> tuple[dict[str, torch.Tensor], dict]:
    """The ranking of ``method`` for ``seed`` (``SearchConfig.ranking``: the registry of
    ``pruning.ranking``), with the ranking's details of how it was obtained. ``net`` is not changed."""
    ranking = cfg.ranking(method)
    scores = ranking(net, None, data.train, seed=seed)
    return scores, ranking.details


def run_record(
    net: nn.Module, data: DataBundle, scores: Mapping[str, torch.Tensor], arch: str, method: str, seed: int,
    cfg: SearchConfig,
) -> dict:
    """One search record: keep the top-scored units of ``arch`` (``keep_top``), then prune,
    fine-tune and measure test/validation error before and after (``prune_and_finetune``)."""
    t0 = time.perf_counter()
    widths = {p.name: p.width for p in switch_points(net)}
    keep = keep_top(scores, parse_arch(arch, widths))
    tcfg = cfg.train_config(seed)
    r = prune_and_finetune(net, keep, data, tcfg, seed=seed, progress=False)  # hundreds of records: no epoch lines
    return {
        "method": method, "seed": int(seed), "arch": arch,
        "test_error": r.finetuned["test"]["error"], "val_error": r.finetuned["val"]["error"],
        "test_nll": r.finetuned["test"]["nll"],
        "test_error_pruned": r.pruned["test"]["error"], "val_error_pruned": r.pruned["val"]["error"],
        "params": r.size["params"], "macs": r.size["macs"],
        "best_epoch": r.training.best_epoch, "kept": keep, "surgery_max_abs_diff": r.surgery_max_abs_diff,
        "seconds": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------- the search


def _resolve_checkpoint(cfg: SearchConfig) -> Path:
    if cfg.checkpoint:
        return Path(cfg.checkpoint)
    path = shipped_checkpoint(cfg.model, cfg.dataset)
    if path is None:
        raise UserError(f"no pre-trained {cfg.model} for {cfg.dataset} ships with the package; give the network to "
                        f"search as checkpoint=PATH")
    return path


def _load_data(cfg: SearchConfig, input_shape) -> DataBundle:
    """The data set, its training split cut as asked, fitted to the network's ``input_shape``."""
    data = subset_train(load_data(cfg.dataset, cfg.data_dir, cfg.val_size, cfg.split_seed), cfg.max_train_examples)
    return fit_to_network(data, input_shape)


@dataclasses.dataclass(frozen=True)
class _Inputs:
    """What a job needs to rebuild the search's inputs on any worker: the configuration and the
    checkpoint (its path, which every worker must see, and its hash)."""

    cfg: SearchConfig
    checkpoint: str
    checkpoint_sha256: str

    def key(self) -> tuple:
        return ("search", self.checkpoint, self.checkpoint_sha256, repr(dataclasses.asdict(self.cfg)))

    def load(self) -> tuple[nn.Module, DataBundle, dict[str, int]]:
        """The network, the data and the widths, built once per worker process (``jobs.cached``)."""
        def build():
            net, info = load_checkpoint(self.checkpoint, self.cfg.model)
            return net, _load_data(self.cfg, info["input_shape"]), {p.name: p.width for p in switch_points(net)}
        return jobs_.cached(self.key(), build)


def _ranking_job(inputs: _Inputs, method: str, seed: int, threads: int | None) -> dict:
    """A method's ranking for a seed, computed on a worker: ``{"scores", "details", "seconds"}``."""
    jobs_.job_threads(threads)
    net, data, widths = inputs.load()
    t0 = time.perf_counter()
    try:
        scores, details = method_scores(method, net, data, seed, inputs.cfg)
        check_scores(scores, widths)
    except (NumericalError, ValueError) as exc:
        if isinstance(exc, UserError):
            raise
        raise NumericalError(f"{method} (seed {seed}): {exc}") from None
    return {"scores": scores, "details": details, "seconds": time.perf_counter() - t0}


def _record_job(inputs: _Inputs, ranking: dict, arch: str, method: str, seed: int, threads: int | None) -> dict:
    """One record (``run_record``), computed on a worker from the ranking's scores."""
    jobs_.job_threads(threads)
    net, data, _ = inputs.load()
    return run_record(net, data, ranking["scores"], arch, method, seed, inputs.cfg)


def _stored_ranking(out: Path, method: str, seed: int) -> dict | None:
    saved = read_json(out / "scores" / f"{method}__seed{seed}.json")
    if isinstance(saved, dict) and "scores" in saved:
        return {"scores": {k: torch.tensor(v, dtype=torch.float64) for k, v in saved["scores"].items()}}
    return None


def _run_jobs(pending: list[tuple[int, str, str]], inputs: _Inputs, out: Path, bar, client,
              threads: int | None) -> tuple[int, int]:
    """Submit the rankings the pending records need (those not stored in ``scores/``) and the
    records, each record after its ranking, to ``client``'s workers; write every ranking and
    record here, atomically, as soon as it comes back. Returns the numbers of records and
    rankings computed."""
    needed = dict.fromkeys((m, s) for s, _, m in pending)  # in plan order: seed by seed
    rankings: dict[tuple[str, int], object] = {}
    what: dict = {}
    for m, s in needed:
        stored = _stored_ranking(out, m, s)
        if stored is not None:
            rankings[(m, s)] = stored
        else:
            rankings[(m, s)] = f = client.submit(_ranking_job, inputs, m, s, threads, pure=False)
            what[f] = ("ranking", m, s, None)
    for s, a, m in pending:
        f = client.submit(_record_job, inputs, rankings[(m, s)], a, m, s, threads, pure=False)
        what[f] = ("record", m, s, a)
    counts = {"ranking": 0, "record": 0}

    def write(label: tuple, result: dict) -> None:
        kind, m, s, a = label
        if kind == "ranking":
            write_json_durable(out / "scores" / f"{m}__seed{s}.json", {
                "method": m, "seed": s, "seconds": result["seconds"], **result["details"],
                "scores": {k: v.tolist() for k, v in result["scores"].items()}})
        else:
            write_json_durable(out / "records" / f"{record_key(m, s, a)}.json", result)
            bar.set_description(f"{m} seed {s} {a}")
            bar.update()
        counts[kind] += 1

    jobs_.collect(client, what, write)
    return counts["record"], counts["ranking"]


def run_search(cfg: SearchConfig, out: str | os.PathLike, overwrite: bool = False, resume: bool = False,
               jobs: int = 1, scheduler: str | None = None, client=None) -> dict:
    """Run (or with ``resume`` continue) the search of ``cfg`` into ``out`` (the package
    docstring describes the folder); returns the report written to ``out/report.json``, which
    includes the summary.

    The rankings and records are jobs on Dask (``pyro_dirichlet_prune.jobs``): by default one
    worker thread in this process; ``jobs`` > 1 starts a ``LocalCluster`` of that many worker
    processes, one torch thread each; ``scheduler`` (an address such as ``tcp://host:8786``) or
    ``client`` (a ``dask.distributed.Client``) runs them on an existing cluster, whose workers
    must see ``cfg``'s data folder and checkpoint at the same paths. The records do not depend on
    where they ran; this process writes each one as it comes back."""
    cfg.validate()
    jobs_.check_runner(jobs, scheduler, client)
    from ..models.registry import check_model_name

    check_model_name(cfg.model)  # the named networks and wrn-<depth>-<widen>
    if cfg.dataset not in DATASETS:
        raise UserError(f"unknown dataset {cfg.dataset!r}; choose one of {', '.join(DATASETS)}")
    out = Path(out)
    ckpt = _resolve_checkpoint(cfg)
    net, info = load_checkpoint(ckpt, cfg.model)
    widths = {p.name: p.width for p in switch_points(net)}
    size = size_function(net, info["input_shape"])
    archs = load_pool(cfg.pool, widths, cfg.every, macs=lambda kept: size(kept)["macs"])
    config = dataclasses.asdict(cfg)
    identity = {k: v for k, v in config.items() if k not in _NOT_COMPARED}
    identity.update(archs=archs, checkpoint_sha256=sha256(ckpt))
    data = _load_data(cfg, info["input_shape"])
    if tuple(info["input_shape"]) != tuple(data.input_shape) or info["num_classes"] != data.num_classes:
        raise UserError(f"checkpoint {ckpt} expects inputs {tuple(info['input_shape'])} and {info['num_classes']} "
                        f"classes; {cfg.dataset} has {tuple(data.input_shape)} and {data.num_classes}")
    resumed = prepare_folder(out, identity, overwrite, resume)
    if not resumed:
        write_json_durable(out / "config.json", {"command": "search", "created": now(), "config": config,
                                                 "checkpoint_path": str(ckpt), "identity": identity})
    start = time.perf_counter()
    plan = [(seed, arch, m) for seed in cfg.seeds for arch in archs for m in cfg.methods]
    done = {record_key(r["method"], r["seed"], r["arch"]) for r in load_records(out)}
    already = sum(record_key(m, s, a) in done for s, a, m in plan)
    bar = tqdm(total=len(plan), initial=already, desc="search", unit="record", disable=None)
    pending = [(s, a, m) for s, a, m in plan if record_key(m, s, a) not in done]
    inputs = _Inputs(cfg, str(Path(ckpt).resolve()), identity["checkpoint_sha256"])
    try:
        # an in-process worker uses the network and data loaded here
        with jobs_.dask_client(jobs, scheduler, client, shared=(inputs.key(), (net, data, widths))) as (c, threads):
            runner = {"jobs": jobs, "scheduler": scheduler or (None if client is None else str(c.scheduler.address)),
                      "workers": len(c.scheduler_info().get("workers", {}))}
            computed, rankings_computed = _run_jobs(pending, inputs, out, bar, c, threads)
    finally:
        bar.close()
    wall = time.perf_counter() - start
    return _finish(out, cfg, ckpt, data, archs, plan, wall, computed, rankings_computed, already, resumed, runner)


def _finish(out: Path, cfg: SearchConfig, ckpt: Path, data: DataBundle, archs: list[str],
            plan: list[tuple[int, str, str]], wall: float, computed: int, rankings_computed: int, already: int,
            resumed: bool, runner: dict) -> dict:
    """Summarise the records of ``plan`` into ``summary.json``/``summary.md`` and write
    ``report.json``, which marks the search finished; returns the report."""
    records = [r for r in load_records(out) if record_key(r["method"], r["seed"], r["arch"]) in
               {record_key(m, s, a) for s, a, m in plan}]
    ranking_seconds: dict[str, list[float]] = {}
    for p in sorted((out / "scores").glob("*.json")):
        s = read_json(p)
        if isinstance(s, dict) and "seconds" in s:
            ranking_seconds.setdefault(s["method"], []).append(float(s["seconds"]))
    summary = summarize(records, cfg.methods, archs)
    summary["timings_seconds"] = {
        "wall_this_invocation": wall,
        "compute_total": float(sum(r["seconds"] for r in records) + sum(map(sum, ranking_seconds.values()))),
        "per_record_mean": summary["seconds_per_record"],
    }
    write_summary(out, summary)
    report = {
        "command": "search", "created": now(), "config": dataclasses.asdict(cfg), "checkpoint": str(ckpt),
        "data": {"source": data.source, "train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "archs": len(archs), "records": len(records), "records_computed_now": computed, "runner": runner,
        "records_resumed": already, "rankings_computed_now": rankings_computed, "resumed": resumed,
        "timings_seconds": {
            "wall_this_invocation": wall,
            "compute_total": summary["timings_seconds"]["compute_total"],
            "records_total": float(sum(r["seconds"] for r in records)),
            "per_record_mean": summary["seconds_per_record"],
            "per_arch_all_records": summary["seconds_per_arch_all_records"],
            "ranking_mean_per_method": {m: float(np.mean(v)) for m, v in ranking_seconds.items()},
        },
        "versions": versions(),
        "summary": summary,
    }
    write_json_durable(out / "report.json", report)
    return report
