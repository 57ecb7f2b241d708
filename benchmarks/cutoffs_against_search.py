"""The posterior's budget cut-offs of ``cutoff_selection.py --mac-factors`` against the records of
a ``search`` over a ``macs:`` pool, paired by seed.

A budget cut-off at F times fewer MACs keeps, layer by layer, the units the switch posterior
ranks highest until the network fits the budget: its widths are the posterior's, not the pool's.
The ``search`` record it is paired with is, for the same seed, the pool architecture whose MACs
are nearest the cut-off's network (the uniform architecture of ``macs:F``), fine-tuned with the
same recipe and seed; only the units kept differ. For every method of the search, the paired
difference d_s = error_cut-off(s) - error_method(s) (``search.paired_comparison``: mean, 95% t
interval, sign test), per factor and over all (factor, seed) pairs.

    python benchmarks/cutoffs_against_search.py benchmarks/results/real_networks/cutoffs_vgg16_fashion.json \\
        benchmarks/results/real_networks/vgg16_study \\
        --out benchmarks/results/real_networks/cutoffs_against_study_vgg16.json

Prints a markdown table and writes a JSON report (``--out``).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from pyro_dirichlet_prune.report import versions, write_json
from pyro_dirichlet_prune.search import load_records, paired_comparison


def pair_rows(rows: Sequence[Mapping], records: Sequence[Mapping]) -> dict[float, dict[str, list[tuple]]]:
    """Per MAC factor, per search method: the (seed, cut-off error, record error, record arch)
    pairs, each budget cut-off row with the same seed's record of the pool architecture nearest
    in MACs (rows without a test error or a ``mac_factor`` are left out)."""
    archs = {r["arch"]: r["macs"] for r in records}
    out: dict[float, dict[str, list[tuple]]] = {}
    for row in rows:
        if row.get("cutoff") != "budget" or "mac_factor" not in row or "test_error" not in row:
            continue
        nearest = min(archs, key=lambda a: abs(archs[a] - row["macs"]))
        per_method = out.setdefault(float(row["mac_factor"]), {})
        for rec in records:
            if rec["arch"] == nearest and rec["seed"] == row["seed"]:
                per_method.setdefault(rec["method"], []).append(
                    (row["seed"], row["test_error"], rec["test_error"], nearest))
    return out


def compare(pairs: Mapping[float, Mapping[str, Sequence[tuple]]]) -> dict:
    """``paired_comparison`` of the cut-off against every method, per factor and pooled."""
    def paired(ps: Sequence[tuple]) -> dict:
        return paired_comparison([p[1] for p in ps], [p[2] for p in ps]) | {"pairs": len(ps)}
    methods = sorted({m for by_m in pairs.values() for m in by_m})
    return {"per_factor": {str(f): {m: paired(ps) for m, ps in by_m.items()} for f, by_m in pairs.items()},
            "pooled": {m: paired([p for by_m in pairs.values() for p in by_m.get(m, [])]) for m in methods}}


def markdown(result: Mapping) -> str:
    def cell(c: Mapping) -> str:
        lo, hi = c["ci95"]
        ci = "" if lo is None else f" [{100 * lo:+.2f}, {100 * hi:+.2f}]"
        return f"{100 * c['mean_diff']:+.2f}{ci}, {c['better']}/{c['worse']}, p {c['sign_test_p']:.2g}"
    factors = list(result["per_factor"])
    # each cell: mean difference in points [95% t interval], cut-off better/worse, sign test p
    lines = ["| budget cut-off minus | " + " | ".join(f"{float(f):g}× ({_n(result, f)} pairs)" for f in factors)
             + " | pooled |", "|---|" + "---|" * (len(factors) + 1)]
    for m, c in result["pooled"].items():
        lines.append(f"| {m} | " + " | ".join(cell(result["per_factor"][f][m]) if m in result["per_factor"][f]
                                              else "" for f in factors) + f" | {cell(c)} |")
    return "\n".join(lines)


def _n(result: Mapping, factor: str) -> int:
    return max((c["pairs"] for c in result["per_factor"][factor].values()), default=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cutoffs", help="a cutoff_selection.py report run with --mac-factors and --test")
    ap.add_argument("search", help="a search output folder over a macs: pool")
    ap.add_argument("--out", default=None, help="JSON report (none: print only)")
    args = ap.parse_args()
    report = json.loads(Path(args.cutoffs).read_text())
    if not isinstance(report, dict) or "rows" not in report:
        raise SystemExit(f"{args.cutoffs} is not a cutoff_selection.py report")
    records = load_records(args.search)
    if not records:
        raise SystemExit(f"{args.search} holds no search records")
    pairs = pair_rows(report["rows"], records)
    if not pairs:
        raise SystemExit(f"{args.cutoffs} has no budget cut-off with --mac-factors and a test error")
    result = compare(pairs)
    result["pairs"] = {str(f): {m: [list(p) for p in ps] for m, ps in by_m.items()} for f, by_m in pairs.items()}
    print(markdown(result))
    if args.out:
        write_json(args.out, {"config": vars(args), **result, "versions": versions()})


if __name__ == "__main__":
    main()
