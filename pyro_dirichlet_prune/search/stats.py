"""The statistics of a search: wins and ties per architecture, and the paired comparison of
every method with the best baseline (t interval and sign test)."""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..pruning.baselines import BASELINES

TIE_TOL = 1e-12
"""Two mean test errors within this distance tie (errors are counts over the test set averaged
over seeds, so equal counts differ only by rounding)."""


def t_interval(diffs: np.ndarray, level: float = 0.95) -> tuple[float | None, float | None]:
    """mean ± t_{(1+level)/2, n-1} · sd / sqrt(n); ``None`` for fewer than two values."""
    n = diffs.size
    if n < 2:
        return None, None
    from scipy import stats  # here, not at import: scipy.stats takes seconds to load, every command pays

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
    lo, hi = t_interval(d)
    from scipy import stats

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

    def sd(m: str, a: str) -> float | None:
        rs = by.get((m, a))
        return float(np.std([r["test_error"] for r in rs], ddof=1)) if rs and len(rs) > 1 else None

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
            "arch": a, "test_error": errs, "test_error_sd": {m: sd(m, a) for m in methods}, "winners": winners,
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
    by_seed = seed_paired(by, methods, {row["arch"]: row["test_error"] for row in per_arch}, best, tol)
    return {
        "methods": methods, "archs": archs, "tie_tolerance": tol, "per_arch": per_arch, "per_method": per_method,
        "wins": wins, "ties": ties, "best_baseline": best, "comparisons_vs_best_baseline": comparisons,
        **by_seed,
        "records": len(records),
        "seconds_per_record": float(np.mean(seconds)) if seconds else None,
        "seconds_per_arch_all_records": float(np.sum(seconds) / len({r["arch"] for r in records})) if seconds else None,
    }


def seed_paired(by: Mapping[tuple[str, str], Sequence[Mapping]], methods: Sequence[str],
                arch_means: Mapping[str, Mapping[str, float | None]], best: str | None, tol: float = TIE_TOL) -> dict:
    """The comparisons paired by seed, for pools of few architectures (``rates:``/``macs:``), where
    pairing the means of two or three architectures says little: a method's record and the
    baseline's of the same architecture and seed (the same fine-tuning seed; only the units kept
    differ) form a pair (``paired_comparison`` over the pairs). ``by``: the records per (method,
    architecture); ``arch_means``: per architecture, each method's mean test error (None: no records).

    ``paired_by_seed``: every method against ``best`` over all (architecture, seed) pairs;
    ``paired_by_seed_per_arch``: per architecture, that architecture's best baseline (the lowest
    mean test error among the baselines run on it) and every other method against it."""
    def pairs(m: str, b: str, arch_list: Sequence[str]) -> tuple[list[float], list[float]]:
        ours, theirs = [], []
        for a in arch_list:
            base = {r["seed"]: r["test_error"] for r in by.get((b, a), [])}
            for r in by.get((m, a), []):
                if r["seed"] in base:
                    ours.append(r["test_error"])
                    theirs.append(base[r["seed"]])
        return ours, theirs

    def against(b: str | None, arch_list: Sequence[str]) -> dict:
        out = {}
        for m in methods:
            if b is not None and m != b:
                ours, theirs = pairs(m, b, arch_list)
                if ours:
                    out[m] = paired_comparison(ours, theirs, tol) | {"pairs": len(ours)}
        return out

    per_arch = {}
    for a, means in arch_means.items():
        run = [m for m in methods if m in BASELINES and means.get(m) is not None]
        b = min(run, key=lambda m: (means[m], methods.index(m))) if run else None
        per_arch[a] = {"best_baseline": b, "comparisons": against(b, [a])}
    return {"paired_by_seed": against(best, list(arch_means)), "paired_by_seed_per_arch": per_arch}
