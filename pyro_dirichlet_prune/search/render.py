"""The summary of a search in words: Markdown tables, ``summary.json``/``summary.md``, the
summary of an unfinished folder, and a one-paragraph account of a finished search."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping

from ..errors import UserError
from .records import load_records, read_json, write_json_durable
from .stats import summarize


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
                      f"rankings and records in all, {t['per_record_mean'] or 0:.2f} s per record "
                      f"(one method on one architecture and seed: prune, fine-tune, test; the mean)."]
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
            md, ci = _diff_and_interval(c)
            lines.append(f"| {m} | {c['archs']} | {md} | {ci} | {c['better']} | {c['worse']} | {c['ties']} | "
                         f"{c['sign_test_p']:.3g} |")
    lines += _seed_paired_markdown(summary)
    lines += ["", "## Mean test error % per architecture", "",
              "| arch | MACs | " + " | ".join(methods) + " |", "|---|---:|" + "---:|" * len(methods)]
    for row in summary["per_arch"]:
        cells = [f"**{_pct(row['test_error'][m])}**" if m in row["winners"] else _pct(row["test_error"][m])
                 for m in methods]
        lines.append(f"| {row['arch']} | {row['macs'] if row['macs'] is not None else '–'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _diff_and_interval(c: Mapping) -> tuple[str, str]:
    """A ``paired_comparison``'s mean difference and 95% t interval, in points."""
    lo, hi = c["ci95"]
    ci = "–" if lo is None else f"[{100 * lo:+.3f}, {100 * hi:+.3f}]"
    return ("–" if c["mean_diff"] is None else f"{100 * c['mean_diff']:+.3f}"), ci


def _comparison_cells(c: Mapping) -> str:
    md, ci = _diff_and_interval(c)
    return f"{md} | {ci} | {c['better']} / {c['worse']} / {c['ties']} | {c['sign_test_p']:.3g}"


def _several_seeds(summary: Mapping) -> bool:
    """Whether some architecture of a summary has records of several seeds."""
    return any(n > 1 for row in summary["per_arch"] for n in row["seeds"].values())


def _seed_paired_markdown(summary: Mapping) -> list[str]:
    """The comparisons paired by seed (``stats.seed_paired``), when some architecture has
    several seeds: every method's mean ± sd per architecture, against that architecture's best
    baseline, and against the best baseline over all (architecture, seed) pairs."""
    per_arch = summary.get("paired_by_seed_per_arch") or {}
    if not _several_seeds(summary):
        return []
    best = summary["best_baseline"]
    lines = ["", f"## Paired by seed with the best baseline ({best or 'none run'}), over every architecture and seed",
             "", "| method | pairs | mean diff (pp) | 95% t interval (pp) | better / worse / ties | sign test p |",
             "|---|---:|---:|---:|---:|---:|"]
    for m, c in (summary.get("paired_by_seed") or {}).items():
        lines.append(f"| {m} | {c['pairs']} | {_comparison_cells(c)} |")
    lines += ["", "## Per architecture: test error mean ± sd over seeds, paired by seed with its best baseline", "",
              "| arch | MACs | method | seeds | test error % | diff (pp) | 95% t interval (pp) | better / worse / ties | "
              "sign test p |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for row in summary["per_arch"]:
        info = per_arch.get(row["arch"], {})
        b, comps = info.get("best_baseline"), info.get("comparisons", {})
        for m in summary["methods"]:
            if row["test_error"][m] is None:
                continue
            sd = row.get("test_error_sd", {}).get(m)
            err = _pct(row["test_error"][m]) + ("" if sd is None else f" ± {_pct(sd)}")
            rest = "best baseline | | |" if m == b else (_comparison_cells(comps[m]) if m in comps else "| | |")
            lines.append(f"| {row['arch']} | {row['macs'] if row['macs'] is not None else '–'} | {m} | "
                         f"{row['seeds'][m]} | {err} | {rest} |")
    return lines


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
        s = read_json(out / "summary.json")
        if isinstance(s, dict):
            return s
    config = read_json(out / "config.json")
    records = load_records(out)
    if not isinstance(config, dict) and not records:
        raise UserError(f"{out} is not a search output folder (no config.json, no records)")
    identity = config.get("identity", {}) if isinstance(config, dict) else {}
    return summarize(records, identity.get("methods"), identity.get("archs"))


def describe(report: Mapping, out: str | os.PathLike) -> str:
    """A one-paragraph account of a finished search (the report ``run_search`` returns)."""
    s = report["summary"]
    wins = ", ".join(f"{m} {s['wins'][m]}" + (f" (+{s['ties'][m]} tied)" if s["ties"][m] else "") for m in s["methods"])
    text = (f"searched {report['archs']} architectures x {len(s['methods'])} methods x "
            f"{len(report['config']['seeds'])} seeds ({report['records']} records, {report['records_computed_now']} "
            f"computed now) in {report['timings_seconds']['wall_this_invocation']:.0f} s. Wins: {wins}.")
    best = s["best_baseline"]
    if best is not None:
        text += f" Best baseline: {best} ({_pct(s['per_method'][best]['mean_test_error'], 3)}% mean test error)."
        # with several seeds per architecture, the pairs of (architecture, seed) say more than
        # the pairs of architecture means (two of them for a `macs:2,4` pool)
        by_seed = s.get("paired_by_seed") or {}
        seeded = bool(by_seed) and _several_seeds(s)
        comparisons, unit = (by_seed, "(architecture, seed) pairs") if seeded else \
            (s["comparisons_vs_best_baseline"], "architectures")
        if seeded:
            text += " Paired by seed:"
        for m, c in comparisons.items():
            if c["mean_diff"] is None:
                continue
            lo, hi = c["ci95"]
            ci = "" if lo is None else f", 95% CI [{100 * lo:+.3f}, {100 * hi:+.3f}]"
            text += (f" {m} - {best}: {100 * c['mean_diff']:+.3f} pp{ci}, better on {c['better']}, worse on "
                     f"{c['worse']} {unit}, sign test p={c['sign_test_p']:.3g}.")
    return text + f" -> {Path(out) / 'summary.md'}"
