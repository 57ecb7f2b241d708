"""The cut-off front of several ``cutoff_selection.py`` runs side by side, and the setting each
run would choose on validation under a size budget.

    python benchmarks/front_table.py frozen=benchmarks/results/front_frozen.json \\
        learned=benchmarks/results/front_learned.json --budget 169320,7554

A run may join several reports, ``NAME=A.json+B.json`` (e.g. a front and the decision cut-off
run later on the same seeds); a (setting, seed) given twice is refused.

One row per cut-off setting (the union over the runs), for each run the architectures the seeds
reached, mean MACs and params, and validation and test error (mean ± sd over seeds). Below the
table, per run, the setting *chosen*: the lowest mean validation error among the settings whose
network is within the budget on every seed (MACs and params both at most the budget's). Test
errors play no part in the choice; they are printed for the report. Prints Markdown.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from cutoff_selection import by_setting, parse_budget, summarise, within  # benchmarks/ is on sys.path as a script


def choose(rows: Sequence[Mapping], budget: tuple[int, int] | None, kinds: Sequence[str] | None = None) -> str | None:
    """The setting with the lowest mean validation error over its seeds among those within the
    budget on every seed (ties: the first listed); ``None`` if no setting fits. Only settings
    run on the largest number of seeds compete, so a setting is not chosen for lacking a seed;
    ``kinds`` (e.g. ``["uncertainty", "budget", "decision"]``) limits the cut-offs that may be
    chosen, to leave out those given a rate by hand."""
    if kinds is not None:
        rows = [r for r in rows if r["cutoff"] in kinds]
    groups = by_setting(rows)
    if not groups:
        return None
    most = max(len(rs) for rs in groups.values())
    fits = {label: rs for label, rs in groups.items() if len(rs) == most and within(rs, budget)}
    if not fits:
        return None
    return min(fits, key=lambda label: statistics.fmean(r["val_error"] for r in fits[label]))


def joined_rows(name: str, reports: Sequence[Mapping]) -> list[Mapping]:
    """The rows of ``reports`` (``cutoff_selection.py`` JSON reports) as one run called ``name``;
    a ``ValueError`` naming the run if two reports hold the same setting on the same seed."""
    rows, seen = [], set()
    for report in reports:
        for row in report["rows"]:
            key = (row["label"], row["seed"])
            if key in seen:
                raise ValueError(f"reports: run {name!r} holds {row['label']!r} on seed {row['seed']} twice")
            seen.add(key)
            rows.append(row)
    return rows


def _err(s: Mapping | None, key: str) -> str:
    """``mean ± sd%`` of one entry of ``summarise``; a dash where it has none."""
    if not s or key not in s:
        return "—"
    return f"{100 * s[key]:.2f} ± {100 * s[key + '_sd']:.2f}%"


def _cell(s: Mapping | None) -> list[str]:
    """A run's columns for one setting, from its ``summarise`` entry."""
    if not s:
        return ["—"] * 5
    return [" / ".join(s["archs"]), f"{s['macs']:,.0f}", f"{s['params']:,.0f}", _err(s, "val_error"),
            _err(s, "test_error")]


def front_markdown(runs: Mapping[str, Sequence[Mapping]], budget: tuple[int, int] | None,
                   kinds: Sequence[str] | None = None) -> str:
    """The side-by-side table and each run's choice (module docstring)."""
    summaries = {name: {e["label"]: e for e in summarise(rows)} for name, rows in runs.items()}
    labels = list(dict.fromkeys(label for per in summaries.values() for label in per))
    head = ["cut-off"] + [f"{name}: {col}" for name in runs for col in ("kept", "MACs", "params", "val", "test")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in labels:
        lines.append("| " + " | ".join([label] + [c for name in runs for c in _cell(summaries[name].get(label))])
                     + " |")
    lines.append("")
    what = "no budget" if budget is None else f"at most {budget[0]:,} MACs and {budget[1]:,} params on every seed"
    if kinds is not None:
        what += "; cut-offs: " + ", ".join(kinds)
    for name, rows in runs.items():
        pick = choose(rows, budget, kinds)
        if pick is None:
            lines.append(f"- {name}: no setting fits ({what}).")
            continue
        s = summaries[name][pick]
        lines.append(f"- {name}: chosen on validation ({what}): **{pick}**, kept {_cell(s)[0]}, "
                     f"validation {_err(s, 'val_error')}, test {_err(s, 'test_error')}.")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", metavar="NAME=PATH[+PATH...]",
                    help="a name and cutoff_selection.py JSON reports joined by '+'")
    ap.add_argument("--budget", default="169320,7554", help="MACS,PARAMS for the choice; '' for none")
    ap.add_argument("--kinds", nargs="+", default=None, help="the cut-offs that may be chosen (default: all)")
    args = ap.parse_args(argv)
    runs = {}
    for item in args.runs:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            ap.error(f"each run is NAME=PATH[+PATH...], got {item!r}")
        try:
            runs[name] = joined_rows(name, [json.loads(Path(p).read_text()) for p in path.split("+")])
        except ValueError as exc:
            ap.error(str(exc))
    try:
        budget = parse_budget(args.budget)
    except ValueError as exc:
        ap.error(str(exc))
    print(front_markdown(runs, budget, args.kinds), end="")


if __name__ == "__main__":
    main()
