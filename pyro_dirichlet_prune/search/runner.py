"""Running a search: each method's ranking of the units, one record per (method, seed,
architecture), in one process or in forked workers, and the report of the whole search."""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import DATASETS, DataBundle, Split, load_data
from ..errors import NumericalError, UserError
from ..models.checkpoint import load_checkpoint, shipped_checkpoint
from ..models.switch_points import switch_points
from ..pruning.baselines import check_scores
from ..pruning.cutoff import keep_top, parse_arch
from ..prune_step import prune_and_finetune
from ..report import now, versions
from ..training import TrainConfig
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
    tcfg = TrainConfig(epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, augment_shift=cfg.augment_shift, seed=seed)
    r = prune_and_finetune(net, keep, data, tcfg, seed=seed)
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


def _load_data(cfg: SearchConfig) -> DataBundle:
    data = load_data(cfg.dataset, cfg.data_dir, cfg.val_size, cfg.split_seed)
    n = cfg.max_train_examples
    if n and n < len(data.train):
        data = dataclasses.replace(data, train=Split(data.train.x[:n], data.train.y[:n]))
    return data


def _ranking(method: str, seed: int, net: nn.Module, data: DataBundle, cfg: SearchConfig, out: Path,
             widths: Mapping[str, int]) -> tuple[dict[str, torch.Tensor], bool]:
    """A method's ranking for a seed, read from ``scores/`` if stored, else computed and stored;
    returns it and whether it was computed now."""
    path = out / "scores" / f"{method}__seed{seed}.json"
    saved = read_json(path) if path.is_file() else None
    if isinstance(saved, dict) and "scores" in saved:
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in saved["scores"].items()}, False
    t0 = time.perf_counter()
    try:
        scores, details = method_scores(method, net, data, seed, cfg)
        check_scores(scores, widths)
    except (NumericalError, ValueError) as exc:
        if isinstance(exc, UserError):
            raise
        raise NumericalError(f"{method} (seed {seed}): {exc}") from None
    write_json_durable(path, {"method": method, "seed": seed, "seconds": time.perf_counter() - t0, **details,
                              "scores": {k: v.tolist() for k, v in scores.items()}})
    return scores, True


def _run_serial(pending: list[tuple[int, str, str]], net: nn.Module, data: DataBundle, cfg: SearchConfig,
                out: Path, widths: Mapping[str, int], bar) -> tuple[int, int]:
    """Seed by seed in this process: the rankings the seed's pending records need, then the
    records, each written as soon as it is finished. Returns the numbers of records and rankings
    computed."""
    computed = rankings = 0
    for seed in dict.fromkeys(s for s, _, _ in pending):
        todo = [(a, m) for s, a, m in pending if s == seed]
        scores = {}
        for m in [m for m in cfg.methods if any(pm == m for _, pm in todo)]:
            bar.set_description(f"ranking {m} seed {seed}")
            scores[m], fresh = _ranking(m, seed, net, data, cfg, out, widths)
            rankings += fresh
        for arch, m in todo:
            bar.set_description(f"{m} seed {seed} {arch}")
            record = run_record(net, data, scores[m], arch, m, seed, cfg)
            write_json_durable(out / "records" / f"{record_key(m, seed, arch)}.json", record)
            computed += 1
            bar.update()
    return computed, rankings


_SHARED: dict = {}  # what the forked workers of a parallel search read: network, data, config, folder


def _ranking_job(job: tuple[str, int]) -> tuple[tuple[str, int], dict[str, torch.Tensor], bool]:
    method, seed = job
    torch.set_num_threads(1)
    w = _SHARED
    scores, fresh = _ranking(method, seed, w["net"], w["data"], w["cfg"], w["out"], w["widths"])
    return job, scores, fresh


def _record_job(job: tuple[int, str, str]) -> tuple[int, str, str]:
    seed, arch, method = job
    torch.set_num_threads(1)
    w = _SHARED
    record = run_record(w["net"], w["data"], w["scores"][(method, seed)], arch, method, seed, w["cfg"])
    write_json_durable(w["out"] / "records" / f"{record_key(method, seed, arch)}.json", record)
    return job


def _run_parallel(pending: list[tuple[int, str, str]], jobs: int, bar) -> tuple[int, int]:
    """Rankings, then records, in ``jobs`` forked processes of one thread each (``_SHARED`` holds
    their inputs); every record is written by its worker as soon as it is finished. The records
    need a second pool: its workers are forked after the rankings are in ``_SHARED``. Returns
    the numbers of records and rankings computed."""
    needed = sorted({(m, s) for s, _, m in pending})
    computed = rankings = 0
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        _SHARED["scores"] = {}
        for key, scores, fresh in pool.map(_ranking_job, needed):
            _SHARED["scores"][key] = scores
            rankings += fresh
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        for done in as_completed([pool.submit(_record_job, job) for job in pending]):
            seed, arch, method = done.result()
            bar.set_description(f"{method} seed {seed} {arch}")
            bar.update()
            computed += 1
    return computed, rankings


def run_search(cfg: SearchConfig, out: str | os.PathLike, overwrite: bool = False, resume: bool = False,
               jobs: int = 1) -> dict:
    """Run (or with ``resume`` continue) the search of ``cfg`` into ``out`` (the package
    docstring describes the folder); returns the report written to ``out/report.json``, which
    includes the summary. With ``jobs`` > 1 the rankings and records are computed by that many
    forked processes, one torch thread each (the records are the same as with one process)."""
    cfg.validate()
    if jobs < 1:
        raise UserError(f"jobs must be a positive integer, got {jobs}")
    from ..models import MODELS

    if cfg.model not in MODELS:
        raise UserError(f"unknown model {cfg.model!r}; choose one of {', '.join(sorted(MODELS))}")
    if cfg.dataset not in DATASETS:
        raise UserError(f"unknown dataset {cfg.dataset!r}; choose one of {', '.join(DATASETS)}")
    out = Path(out)
    ckpt = _resolve_checkpoint(cfg)
    net, info = load_checkpoint(ckpt, cfg.model)
    widths = {p.name: p.width for p in switch_points(net)}
    archs = load_pool(cfg.pool, widths, cfg.every)
    config = dataclasses.asdict(cfg)
    identity = {k: v for k, v in config.items() if k not in _NOT_COMPARED}
    identity.update(archs=archs, checkpoint_sha256=sha256(ckpt))
    data = _load_data(cfg)
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
    try:
        if jobs == 1:
            computed, rankings_computed = _run_serial(pending, net, data, cfg, out, widths, bar)
        else:
            _SHARED.update(net=net, data=data, cfg=cfg, out=out, widths=widths)
            try:
                computed, rankings_computed = _run_parallel(pending, jobs, bar)
            finally:
                _SHARED.clear()
    finally:
        bar.close()
    wall = time.perf_counter() - start
    return _finish(out, cfg, ckpt, data, archs, plan, wall, computed, rankings_computed, already, resumed)


def _finish(out: Path, cfg: SearchConfig, ckpt: Path, data: DataBundle, archs: list[str],
            plan: list[tuple[int, str, str]], wall: float, computed: int, rankings_computed: int, already: int,
            resumed: bool) -> dict:
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
        "archs": len(archs), "records": len(records), "records_computed_now": computed,
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
