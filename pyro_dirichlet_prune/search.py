"""``dirichlet-prune search``: the sub-architecture search of Adamczewski & Park (2021), Fig. 3.

For every seed, every ranking method (the Dirichlet switch posterior means, their mean-guide
variant, and the baselines of ``pruning.baselines``) scores the units of the pre-trained network
once; then for every architecture of a pool the network is pruned to it by keeping the top-ranked
units of each layer, physically shrunk, fine-tuned briefly and tested. The method with the lowest
mean test error over the seeds wins the architecture.

Output folder (``out``):

* ``config.json``: the configuration, written first; a resumed search must match it;
* ``scores/<method>__seed<s>.json``: each method's ranking (score per unit per layer);
* ``records/<method>__seed<s>__<arch>.json``: one record per (method, seed, architecture),
  written atomically (temporary file, fsync, rename) as soon as it is finished, so a kill at any
  moment loses at most the record in progress; ``resume`` skips every finished record;
* ``summary.json`` / ``summary.md``: per-architecture means and winners, wins and ties, the
  paired comparison of every method with the best baseline; ``report.json`` (written last, it
  marks a finished search): configuration, versions, timings and the summary.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn
from tqdm.auto import tqdm

from .data import DATASETS, DataBundle, Split, load_data
from .errors import NumericalError, UserError
from .metrics import count_macs, count_params
from .models.checkpoint import load_checkpoint, shipped_checkpoint
from .models.switch_points import switch_points
from .pruning.baselines import BASELINES, FISHER_BATCH_SIZE, FISHER_BATCHES, check_scores, unit_scores
from .pruning.cutoff import arch_string, keep_top, parse_arch
from .pruning.surgery import prune_units, verify_surgery
from .report import now, versions
from .training import TrainConfig, TrainResult, evaluate, train

if TYPE_CHECKING:
    from .inference.svi import SwitchConfig

DIRICHLET_METHODS = ("dirichlet", "dirichlet-mean")
METHODS = (*DIRICHLET_METHODS, *BASELINES)
POOLS = ("lenet5-108",)
TIE_TOL = 1e-12
"""Two mean test errors within this distance tie (errors are counts over the test set averaged
over seeds, so equal counts differ only by rounding)."""
DEFAULT_FINETUNE_EPOCHS = 2
FINETUNE_LR = 2e-3
AUGMENT_SHIFT = 2
_NOT_COMPARED = ("data_dir", "checkpoint", "pool")  # paths; what they resolve to is compared


# ----------------------------------------------------------------------------- pools


def lenet5_108() -> list[str]:
    """The 108 LeNet-5 architectures of Fig. 3: (c1, c2, f1, f2) in {4,5,6} × {6,7,8} ×
    {35,40,45,50} × {15,17,20}, in lexicographic order."""
    grid = itertools.product((4, 5, 6), (6, 7, 8), (35, 40, 45, 50), (15, 17, 20))
    return ["-".join(map(str, a)) for a in grid]


def parse_pool_text(text: str, widths: Mapping[str, int], source: str = "pool", item: str = "line") -> list[str]:
    """Architectures of a pool file: one per line, ``#`` starts a comment, blank lines are
    ignored. Each is validated against the network's ``widths``; errors name the line."""
    archs: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            arch = arch_string(parse_arch(line, widths))
        except UserError as exc:
            raise UserError(f"{source} {item} {lineno}: {exc}") from None
        if arch in seen:
            raise UserError(f"{source} {item} {lineno}: architecture {arch} repeats {item} {seen[arch]}")
        seen[arch] = lineno
        archs.append(arch)
    if not archs:
        raise UserError(f"{source} holds no architecture")
    return archs


def load_pool(spec: str, widths: Mapping[str, int], every: int = 1) -> list[str]:
    """The architectures of pool ``spec`` (a name in ``POOLS`` or a text file), every
    ``every``-th one kept (the 1st, the (1+every)-th, ...)."""
    if every < 1:
        raise UserError(f"--every must be a positive integer, got {every}")
    if spec == "lenet5-108":
        archs = parse_pool_text("\n".join(lenet5_108()), widths, source="pool lenet5-108", item="architecture")
    else:
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"pool {spec!r} is neither a built-in pool ({', '.join(POOLS)}) nor a file")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read pool file {path} ({type(exc).__name__})") from None
        archs = parse_pool_text(text, widths, source=f"pool file {path}")
    return archs[::every]


# ----------------------------------------------------------------------------- configuration


@dataclass
class SearchConfig:
    """Settings of a search. ``switch`` holds extra ``SwitchConfig`` fields (e.g. ``scale``,
    ``schedule``) for the Dirichlet methods; ``guide`` and ``seed`` are set by the search."""

    model: str = "lenet5"
    dataset: str = "mnist"
    data_dir: str | None = None
    checkpoint: str | None = None
    pool: str = "lenet5-108"
    every: int = 1
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    finetune_epochs: int = DEFAULT_FINETUNE_EPOCHS
    finetune_lr: float = FINETUNE_LR
    augment_shift: int = AUGMENT_SHIFT
    switch: dict[str, Any] = field(default_factory=dict)
    fisher_batches: int = FISHER_BATCHES
    fisher_batch_size: int = FISHER_BATCH_SIZE
    val_size: int = 5000
    split_seed: int = 0
    max_train_examples: int | None = None

    def validate(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if not self.methods or bad or len(set(self.methods)) != len(self.methods):
            raise UserError(f"methods must be distinct names from {', '.join(METHODS)}, got {self.methods}")
        if not self.seeds or any(int(s) < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"seeds must be distinct non-negative integers, got {self.seeds}")
        if self.finetune_epochs < 0 or self.augment_shift < 0:
            raise UserError("--finetune-epochs and the augmentation shift must be non-negative")
        if not (self.finetune_lr > 0 and math.isfinite(self.finetune_lr)):
            raise UserError(f"the fine-tuning learning rate must be positive, got {self.finetune_lr}")
        if self.fisher_batches < 1 or self.fisher_batch_size < 1:
            raise UserError("--fisher-batches and the fisher batch size must be positive")
        if self.val_size < 1:
            raise UserError("the search needs a validation split (fine-tuning keeps the best validation epoch)")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise UserError(f"--max-train-examples must be positive, got {self.max_train_examples}")
        for method in DIRICHLET_METHODS:
            switch_config(method, 0, self.switch)


def switch_config(method: str, seed: int, overrides: Mapping[str, Any]) -> SwitchConfig:
    """The ``SwitchConfig`` of a Dirichlet method: the defaults, ``overrides``, the method's
    guide (``dirichlet`` or ``dirichlet-mean``) and the seed."""
    from .inference.svi import SwitchConfig

    names = {f.name for f in dataclasses.fields(SwitchConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UserError(f"unknown switch settings {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    fixed = sorted(set(overrides) & {"guide", "seed"})
    if fixed:
        raise UserError(f"switch settings {', '.join(fixed)} are set by the search (method and seed)")
    cfg = SwitchConfig(**{**dict(overrides), "guide": method, "seed": int(seed)})
    try:
        cfg.validate()
    except ValueError as exc:
        raise UserError(f"{method}: {exc}") from None
    return cfg


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differing_keys(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The (dotted) keys whose values differ between two nested configurations."""
    fa, fb = _flatten(a), _flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k, "<absent>") != fb.get(k, "<absent>"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- output folder


def write_json_durable(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to a temporary file beside ``path``, fsync it, rename it into place and fsync
    the folder: ``path`` then holds either nothing or the whole object, even after a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, allow_nan=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def record_key(method: str, seed: int, arch: str) -> str:
    return f"{method}__seed{int(seed)}__{arch}"


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_records(out: str | os.PathLike) -> list[dict]:
    """Every finished record of a search folder (unreadable or temporary files are skipped)."""
    folder = Path(out) / "records"
    if not folder.is_dir():
        return []
    records = []
    for p in sorted(folder.glob("*.json")):
        if p.name.startswith("."):
            continue
        rec = _read_json(p)
        if isinstance(rec, dict) and {"method", "seed", "arch", "test_error"} <= set(rec):
            records.append(rec)
    return records


def prepare_folder(out: Path, identity: dict, overwrite: bool, resume: bool) -> bool:
    """Make ``out`` ready for a search of configuration ``identity``; return whether finished
    records are resumed. Refuses (``UserError``) a finished search unless ``overwrite``, an
    interrupted one unless ``resume`` or ``overwrite``, a resume of another configuration (naming
    the differing keys), and a non-empty folder that is not a search folder."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a folder")
    config_path = out / "config.json"
    if out.is_dir() and any(out.iterdir()):
        saved = _read_json(config_path) if config_path.is_file() else None
        if not isinstance(saved, dict) or saved.get("command") != "search":
            raise UserError(f"output folder {out} is not empty and holds no search; choose another --out")
        finished = (out / "report.json").is_file()
        if overwrite:
            shutil.rmtree(out)
        elif finished:
            raise UserError(f"output folder {out} holds a finished search (pass --overwrite to replace it)")
        elif not resume:
            raise UserError(f"output folder {out} holds an interrupted search; pass --resume to continue it "
                            f"or --overwrite to start over")
        else:
            diff = differing_keys(saved.get("identity", {}), identity)
            if diff:
                raise UserError(f"cannot resume the search in {out}: its configuration differs in {', '.join(diff)}")
            for tmp in itertools.chain(out.glob(".*.json.*"), out.glob(".summary.md.*"), out.glob("*/.*.json.*")):
                tmp.unlink(missing_ok=True)  # temporaries of writes cut short by a kill
            return True
    elif resume:
        raise UserError(f"nothing to resume: no search in {out}")
    out.mkdir(parents=True, exist_ok=True)
    return False


# ----------------------------------------------------------------------------- rankings and records


def method_scores(
    method: str, net: nn.Module, data: DataBundle, seed: int, cfg: SearchConfig
) -> tuple[dict[str, torch.Tensor], dict]:
    """The ranking of ``method`` for ``seed``: E_q[s_l] of a switch fit for the Dirichlet methods,
    else the baseline's score; with details of how it was obtained. ``net`` is not changed."""
    work = copy.deepcopy(net)
    if method in DIRICHLET_METHODS:
        from .inference.svi import fit_switches
        from .models.switched import SwitchedNetwork

        scfg = switch_config(method, seed, cfg.switch)
        switched = SwitchedNetwork(work)
        fit = fit_switches(switched, data.train, scfg)
        switched.remove_hooks()
        scores = {k: v.detach().double().cpu() for k, v in fit.posterior_means().items()}
        details = {"switch_config": dataclasses.asdict(scfg), "steps": len(fit.losses),
                   "final_loss": float(np.mean(fit.losses[-20:])) if fit.losses else None}
    else:
        scores = unit_scores(method, work, data.train, seed, fisher_batches=cfg.fisher_batches,
                             fisher_batch_size=cfg.fisher_batch_size)
        details = {"fisher_examples": min(len(data.train), cfg.fisher_batches * cfg.fisher_batch_size)} \
            if method == "fisher" else {}
    return scores, details


def finetune(net: nn.Module, data: DataBundle, cfg: TrainConfig) -> TrainResult:
    """Fine-tune ``net`` in place (``training.train``: the best validation epoch is kept)."""
    return train(net, data, cfg, desc="fine-tune")


def run_record(
    net: nn.Module, data: DataBundle, scores: Mapping[str, torch.Tensor], arch: str, method: str, seed: int,
    cfg: SearchConfig,
) -> dict:
    """One search record: keep the top-scored units of ``arch`` (``keep_top``), remove the others
    physically, fine-tune a copy, and measure test/validation error before and after."""
    t0 = time.perf_counter()
    widths = {p.name: p.width for p in switch_points(net)}
    keep = keep_top(scores, parse_arch(arch, widths))
    pruned = prune_units(net, keep, data.input_shape)
    diff = verify_surgery(net, pruned, keep, data.input_shape, seed=seed)
    before_test, before_val = evaluate(pruned, data.test), evaluate(pruned, data.val)
    for p in pruned.parameters():
        p.requires_grad_(True)
    tcfg = TrainConfig(epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, augment_shift=cfg.augment_shift, seed=seed)
    result = finetune(pruned, data, tcfg)
    test, val = evaluate(pruned, data.test), evaluate(pruned, data.val)
    return {
        "method": method, "seed": int(seed), "arch": arch,
        "test_error": test["error"], "val_error": val["error"], "test_nll": test["nll"],
        "test_error_pruned": before_test["error"], "val_error_pruned": before_val["error"],
        "params": count_params(pruned), "macs": count_macs(pruned, data.input_shape),
        "best_epoch": result.best_epoch, "kept": keep, "surgery_max_abs_diff": diff,
        "seconds": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------- summary


def _t_interval(diffs: np.ndarray, level: float = 0.95) -> tuple[float | None, float | None]:
    """mean ± t_{(1+level)/2, n-1} · sd / sqrt(n); ``None`` for fewer than two values."""
    n = diffs.size
    if n < 2:
        return None, None
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * diffs.std(ddof=1) / math.sqrt(n))
    m = float(diffs.mean())
    return m - half, m + half


def paired_comparison(errors: Sequence[float], baseline: Sequence[float], tol: float = TIE_TOL) -> dict:
    """Paired comparison over architectures of a method's mean test errors with a baseline's:
    d_a = error_method(a) - error_baseline(a); mean of d, its 95% t interval, and the two-sided
    sign test (``scipy.stats.binomtest``) of the count of d_a < 0 among the d_a that are not ties
    (|d_a| <= tol)."""
    d = np.asarray(errors, dtype=float) - np.asarray(baseline, dtype=float)
    better, worse = int((d < -tol).sum()), int((d > tol).sum())
    lo, hi = _t_interval(d)
    p = float(stats.binomtest(better, better + worse, 0.5, alternative="two-sided").pvalue) if better + worse else 1.0
    return {"archs": int(d.size), "mean_diff": float(d.mean()) if d.size else None, "ci95": [lo, hi],
            "better": better, "worse": worse, "ties": int(d.size) - better - worse, "sign_test_p": p}


def summarize(records: Iterable[Mapping], methods: Sequence[str] | None = None,
              archs: Sequence[str] | None = None, tol: float = TIE_TOL) -> dict:
    """Per architecture, each method's mean test error over its seeds and the winner(s) (every
    method within ``tol`` of the lowest mean). An architecture with one winner gives it a win; one
    with several gives each of them a tie. The best baseline is the baseline with the lowest mean
    error over the architectures; every other method is compared with it (``paired_comparison``)
    over the architectures where both have records."""
    records = list(records)
    methods = list(methods) if methods is not None else sorted({r["method"] for r in records})
    archs = list(archs) if archs is not None else sorted({r["arch"] for r in records})
    by: dict[tuple[str, str], list[Mapping]] = {}
    for r in records:
        by.setdefault((r["method"], r["arch"]), []).append(r)

    def mean(key: str, m: str, a: str) -> float | None:
        rs = by.get((m, a))
        return float(np.mean([r[key] for r in rs])) if rs else None

    per_arch = []
    wins, ties = dict.fromkeys(methods, 0), dict.fromkeys(methods, 0)
    for a in archs:
        errs = {m: mean("test_error", m, a) for m in methods}
        present = {m: e for m, e in errs.items() if e is not None}
        winners: list[str] = []
        if present:
            low = min(present.values())
            winners = [m for m, e in present.items() if e - low <= tol]
            for m in winners:
                (wins if len(winners) == 1 else ties)[m] += 1
        any_rec = next((by[(m, a)][0] for m in methods if (m, a) in by), None)
        per_arch.append({
            "arch": a, "test_error": errs, "winners": winners,
            "seeds": {m: len(by.get((m, a), [])) for m in methods},
            "macs": any_rec["macs"] if any_rec else None, "params": any_rec["params"] if any_rec else None,
        })
    per_method = {}
    for m in methods:
        row = {k: [v for a in archs if (v := mean(k, m, a)) is not None]
               for k in ("test_error", "val_error", "test_error_pruned", "seconds")}
        per_method[m] = {
            "archs": len(row["test_error"]), "records": sum(len(by.get((m, a), [])) for a in archs),
            "mean_test_error": float(np.mean(row["test_error"])) if row["test_error"] else None,
            "mean_val_error": float(np.mean(row["val_error"])) if row["val_error"] else None,
            "mean_test_error_pruned": float(np.mean(row["test_error_pruned"])) if row["test_error_pruned"] else None,
            "mean_seconds_per_record": float(np.mean(row["seconds"])) if row["seconds"] else None,
            "wins": wins[m], "ties": ties[m],
        }
    run_baselines = [m for m in methods if m in BASELINES and per_method[m]["mean_test_error"] is not None]
    best = min(run_baselines, key=lambda m: (per_method[m]["mean_test_error"], methods.index(m))) \
        if run_baselines else None
    comparisons = {}
    if best is not None:
        for m in methods:
            if m == best:
                continue
            pairs = [(e[m], e[best]) for e in (row["test_error"] for row in per_arch)
                     if e[m] is not None and e[best] is not None]
            comparisons[m] = paired_comparison([p[0] for p in pairs], [p[1] for p in pairs], tol)
    seconds = [r["seconds"] for r in records if "seconds" in r]
    return {
        "methods": methods, "archs": archs, "tie_tolerance": tol, "per_arch": per_arch, "per_method": per_method,
        "wins": wins, "ties": ties, "best_baseline": best, "comparisons_vs_best_baseline": comparisons,
        "records": len(records),
        "seconds_per_record": float(np.mean(seconds)) if seconds else None,
        "seconds_per_arch_all_records": float(np.sum(seconds) / len({r["arch"] for r in records})) if seconds else None,
    }


def _pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def summary_markdown(summary: Mapping, title: str = "Sub-architecture search") -> str:
    """The summary as Markdown tables (errors in %, winners in bold)."""
    methods = summary["methods"]
    lines = [f"# {title}", "", f"{len(summary['archs'])} architectures, {summary['records']} records; "
             f"a tie is a mean test error within {summary['tie_tolerance']:g} of the best."]
    t = summary.get("timings_seconds")
    if t:
        lines += ["", f"Wall time {t['wall_this_invocation']:.1f} s (this invocation), {t['compute_total']:.1f} s of "
                      f"rankings and records in all, {t['per_record_mean'] or 0:.2f} s per architecture "
                      f"(prune, fine-tune, test; mean over records)."]
    lines += ["",
             "## Wins per method", "", "| method | wins | ties | mean test error % | mean error after surgery % |",
             "|---|---:|---:|---:|---:|"]
    for m in methods:
        pm = summary["per_method"][m]
        lines.append(f"| {m} | {pm['wins']} | {pm['ties']} | {_pct(pm['mean_test_error'], 3)} | "
                     f"{_pct(pm['mean_test_error_pruned'], 2)} |")
    best = summary["best_baseline"]
    lines += ["", f"## Paired comparison with the best baseline ({best or 'none run'})", ""]
    if summary["comparisons_vs_best_baseline"]:
        lines += ["| method | archs | mean diff (pp) | 95% t interval (pp) | better | worse | ties | sign test p |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for m, c in summary["comparisons_vs_best_baseline"].items():
            lo, hi = c["ci95"]
            ci = "–" if lo is None else f"[{100 * lo:+.3f}, {100 * hi:+.3f}]"
            md = "–" if c["mean_diff"] is None else f"{100 * c['mean_diff']:+.3f}"
            lines.append(f"| {m} | {c['archs']} | {md} | {ci} | {c['better']} | {c['worse']} | {c['ties']} | "
                         f"{c['sign_test_p']:.3g} |")
    lines += ["", "## Mean test error % per architecture", "",
              "| arch | MACs | " + " | ".join(methods) + " |", "|---|---:|" + "---:|" * len(methods)]
    for row in summary["per_arch"]:
        cells = [f"**{_pct(row['test_error'][m])}**" if m in row["winners"] else _pct(row["test_error"][m])
                 for m in methods]
        lines.append(f"| {row['arch']} | {row['macs'] if row['macs'] is not None else '–'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(out: str | os.PathLike, summary: Mapping) -> None:
    out = Path(out)
    write_json_durable(out / "summary.json", summary)
    fd, tmp = tempfile.mkstemp(prefix=".summary.md.", dir=out)
    with os.fdopen(fd, "w") as f:
        f.write(summary_markdown(summary))
    os.replace(tmp, out / "summary.md")


def load_summary(out: str | os.PathLike) -> dict:
    """The summary of a search folder: ``summary.json`` if the search finished, else a summary of
    the records finished so far (in the pool's order of ``config.json``)."""
    out = Path(out)
    if (out / "summary.json").is_file():
        s = _read_json(out / "summary.json")
        if isinstance(s, dict):
            return s
    config = _read_json(out / "config.json")
    records = load_records(out)
    if not isinstance(config, dict) and not records:
        raise UserError(f"{out} is not a search output folder (no config.json, no records)")
    identity = config.get("identity", {}) if isinstance(config, dict) else {}
    return summarize(records, identity.get("methods"), identity.get("archs"))


# ----------------------------------------------------------------------------- the search


def _resolve_checkpoint(cfg: SearchConfig) -> Path:
    if cfg.checkpoint:
        return Path(cfg.checkpoint)
    path = shipped_checkpoint(cfg.model, cfg.dataset)
    if path is None:
        raise UserError(f"no pre-trained {cfg.model} for {cfg.dataset} ships with the package; pass --checkpoint")
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
    saved = _read_json(path) if path.is_file() else None
    if isinstance(saved, dict) and "scores" in saved:
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in saved["scores"].items()}, False
    t0 = time.perf_counter()
    scores, details = method_scores(method, net, data, seed, cfg)
    try:
        check_scores(scores, widths)
    except ValueError as exc:
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
    """Run (or with ``resume`` continue) the search of ``cfg`` into ``out`` (module docstring);
    returns the report written to ``out/report.json``, which includes the summary. With
    ``jobs`` > 1 the rankings and records are computed by that many forked processes, one torch
    thread each (the records are the same as with one process)."""
    cfg.validate()
    if jobs < 1:
        raise UserError(f"--jobs must be a positive integer, got {jobs}")
    from .models import MODELS

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
    identity.update(archs=archs, checkpoint_sha256=_sha256(ckpt))
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
    records = [r for r in load_records(out) if record_key(r["method"], r["seed"], r["arch"]) in
               {record_key(m, s, a) for s, a, m in plan}]
    ranking_seconds: dict[str, list[float]] = {}
    for p in sorted((out / "scores").glob("*.json")):
        s = _read_json(p)
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
        "command": "search", "created": now(), "config": config, "checkpoint": str(ckpt),
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


# ----------------------------------------------------------------------------- command line


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {v}")
        return v

    return parse


def parse_methods(text: str) -> list[str]:
    """``"l1,random"`` → ``["l1", "random"]``; distinct names from ``METHODS``."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in METHODS]
    if not items or bad or len(set(items)) != len(items):
        raise argparse.ArgumentTypeError(f"expected distinct names from {','.join(METHODS)}, got {text!r}")
    return items


def parse_seeds(text: str) -> list[int]:
    """``"3"`` → seeds 0, 1, 2 (a count); ``"0,4,7"`` → those seeds; ``"5,"`` → seed 5 alone."""
    text = text.strip()
    try:
        if "," not in text:
            n = int(text)
            if n < 1:
                raise argparse.ArgumentTypeError(f"expected a positive count of seeds, got {text!r}")
            return list(range(n))
        seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or comma-separated seeds, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct non-negative seeds, got {text!r}")
    return seeds


def add_search_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``search`` sub-command to an argparse ``subparsers`` object; returns its parser."""
    from .inference.svi import SCHEDULES
    from .models import MODELS
    from .models.switched import SCALES

    p = subparsers.add_parser(
        "search", help="Fig. 3: rank units by every method, prune to every architecture of a pool, fine-tune",
        description="The sub-architecture search of Adamczewski & Park (2021), Fig. 3: for every seed each method "
                    "ranks the units of the pre-trained network once; for every architecture of the pool the top "
                    "units are kept, the network is physically pruned, fine-tuned briefly and tested. Writes one "
                    "record per (method, seed, architecture) as soon as it is finished (records/), the rankings "
                    "(scores/), summary.json, summary.md (wins, ties, paired comparison with the best baseline) "
                    "and report.json.")
    p.add_argument("--model", default="lenet5", help=f"network: {', '.join(MODELS)} (default lenet5)")
    p.add_argument("--dataset", choices=DATASETS, default="mnist", help="data set (default mnist)")
    p.add_argument("--data-dir", default=None, help="folder in torchvision's layout (default $DATA_DIR, else ./data)")
    p.add_argument("--checkpoint", default=None,
                   help="pre-trained network (from `pretrain`); default: the one shipped for --model/--dataset")
    p.add_argument("--pool", default="lenet5-108",
                   help="architectures to search: lenet5-108 (c1,c2,f1,f2 in {4,5,6}x{6,7,8}x{35,40,45,50}x"
                        "{15,17,20}, 108 in all) or a text file with one architecture such as 6-8-40-20 per line "
                        "(# comments and blank lines ignored) (default lenet5-108)")
    p.add_argument("--every", type=_int_at_least(1), default=1,
                   help="keep every N-th architecture of the pool, starting with the first (default 1: all)")
    p.add_argument("--methods", type=parse_methods, default=list(METHODS),
                   help=f"comma-separated ranking methods (default {','.join(METHODS)}): dirichlet (switch posterior "
                        f"means, sampled guide), dirichlet-mean (the mean-guide variant), l1/l2 (norm of each unit's "
                        f"incoming weights), fisher (Theis et al. 2018), random")
    p.add_argument("--seeds", type=parse_seeds, default=[0, 1, 2],
                   help="a count N (seeds 0..N-1) or comma-separated seeds such as 0,4,7 (a single seed s is "
                        "written 's,'); each seed re-ranks (switch fit, fisher batches, random) and re-fine-tunes "
                        "(default 3)")
    p.add_argument("--finetune-epochs", type=_int_at_least(0), default=DEFAULT_FINETUNE_EPOCHS,
                   help=f"fine-tuning epochs per record, Adam lr {FINETUNE_LR:g}, cosine decay, random shifts of "
                        f"{AUGMENT_SHIFT} px, best validation epoch kept; 0 tests the network right after surgery "
                        f"(default {DEFAULT_FINETUNE_EPOCHS}: a brief, cheap fine-tune that lets the ranking, not the training, decide)")
    p.add_argument("--switch-scale", choices=SCALES, default=None,
                   help="switch model of the Dirichlet methods: dim (output times D*s) or simplex (times s) "
                        "(default: SwitchConfig's)")
    p.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help="switch learning of the Dirichlet methods: joint or sequential (default: SwitchConfig's)")
    p.add_argument("--fisher-batches", type=_int_at_least(1), default=FISHER_BATCHES,
                   help=f"minibatches of {FISHER_BATCH_SIZE} training examples that the fisher scores average over "
                        f"(default {FISHER_BATCHES})")
    p.add_argument("--val-size", type=_int_at_least(1), default=5000,
                   help="validation examples split off the training set, as for the shipped checkpoints (default 5000)")
    p.add_argument("--max-train-examples", type=_int_at_least(1), default=None,
                   help="use only the first N training examples (quick runs and smoke tests)")
    p.add_argument("--out", required=True, help="output folder; records are kept there as they finish")
    p.add_argument("--overwrite", action="store_true", help="replace a finished or interrupted search in --out")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted search in --out (same options): finished records are kept, "
                        "never recomputed")
    p.add_argument("--threads", type=_int_at_least(1), default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--jobs", type=_int_at_least(1), default=1,
                   help="processes that rank and fine-tune in parallel, one torch thread each (default 1); "
                        "the records do not depend on it")
    return p


def search_config_from_args(args: argparse.Namespace) -> SearchConfig:
    switch = {k: v for k, v in (("scale", args.switch_scale), ("schedule", args.schedule)) if v is not None}
    return SearchConfig(
        model=args.model, dataset=args.dataset, data_dir=args.data_dir, checkpoint=args.checkpoint, pool=args.pool,
        every=args.every, methods=list(args.methods), seeds=list(args.seeds), finetune_epochs=args.finetune_epochs,
        switch=switch, fisher_batches=args.fisher_batches, val_size=args.val_size,
        max_train_examples=args.max_train_examples,
    )


def describe(report: Mapping, out: str | os.PathLike) -> str:
    """A one-paragraph account of a finished search."""
    s = report["summary"]
    wins = ", ".join(f"{m} {s['wins'][m]}" + (f" (+{s['ties'][m]} tied)" if s["ties"][m] else "") for m in s["methods"])
    text = (f"searched {report['archs']} architectures x {len(s['methods'])} methods x "
            f"{len(report['config']['seeds'])} seeds ({report['records']} records, {report['records_computed_now']} "
            f"computed now) in {report['timings_seconds']['wall_this_invocation']:.0f} s. Wins: {wins}.")
    best = s["best_baseline"]
    if best is not None:
        text += f" Best baseline: {best} ({_pct(s['per_method'][best]['mean_test_error'], 3)}% mean test error)."
        for m, c in s["comparisons_vs_best_baseline"].items():
            if c["mean_diff"] is None:
                continue
            lo, hi = c["ci95"]
            ci = "" if lo is None else f", 95% CI [{100 * lo:+.3f}, {100 * hi:+.3f}]"
            text += (f" {m} - {best}: {100 * c['mean_diff']:+.3f} pp{ci}, better on {c['better']}, worse on "
                     f"{c['worse']}, sign test p={c['sign_test_p']:.3g}.")
    return text + f" -> {Path(out) / 'summary.md'}"


def run_search_cli(args: argparse.Namespace) -> dict:
    """Run the ``search`` sub-command from parsed arguments; prints a one-paragraph summary."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    report = run_search(search_config_from_args(args), args.out, args.overwrite, args.resume, args.jobs)
    print(describe(report, args.out))
    return report
