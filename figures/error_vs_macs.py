"""Test error against multiply-accumulates for every ranking method over a search's pool: each
point is one architecture, its test error the mean over the seeds (``--pruned``: the error right
after surgery, before fine-tuning).

    python figures/error_vs_macs.py runs/search --out runs/search/error_vs_macs.png

Reads ``summary.json`` of a ``dirichlet-prune search`` folder (or, for an unfinished search,
summarises the records finished so far).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pyro_dirichlet_prune.errors import UserError  # noqa: E402
from pyro_dirichlet_prune.search import load_records, load_summary, summarize  # noqa: E402

MARKERS = "o^sDvP*X"
SMALL_POOL = 6
"""Pools of at most this many architectures (``macs:2,4``) are drawn as lines with ± sd bars."""


def plot_error_vs_macs(summary: Mapping, path: str | Path, title: str | None = None, ylabel: str | None = None) -> Path:
    """Mean test error (%) against MACs, one colour and marker per method (the legend gives each
    method's mean over the architectures): a scatter, or for a pool of at most ``SMALL_POOL``
    architectures lines with bars of ± one sd over the seeds on a log MAC axis; saved to ``path``."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    rows = [r for r in summary["per_arch"] if r.get("macs") is not None]
    few = len(rows) <= SMALL_POOL  # a few architectures: each method's points joined, ± sd over the seeds
    for i, m in enumerate(summary["methods"]):
        pts = sorted((r["macs"], 100 * r["test_error"][m], 100 * ((r.get("test_error_sd") or {}).get(m) or 0.0))
                     for r in rows if r["test_error"].get(m) is not None)
        if not pts:
            continue
        x, y, sd = np.array(pts).T
        style = dict(marker=MARKERS[i % len(MARKERS)], markersize=5, alpha=0.75, label=f"{m} (mean {np.mean(y):.2f}%)")
        if few:
            ax.errorbar(x, y, yerr=sd, linestyle="-", linewidth=1, capsize=3, **style)
        else:
            ax.plot(x, y, linestyle="none", **style)
    if few:
        ax.set_xscale("log")
    ax.set_xlabel("MACs per input of the pruned network")
    ax.set_ylabel(ylabel or "test error (%), mean over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"Test error against MACs over {len(rows)} architectures")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("search", help="output folder of `dirichlet-prune search`")
    ap.add_argument("--out", default=None, help="PNG to write (default SEARCH/error_vs_macs.png)")
    ap.add_argument("--pruned", action="store_true", help="plot the test error right after surgery, before fine-tuning")
    ap.add_argument("--title", default=None, help="figure title")
    args = ap.parse_args(argv)
    summary = load_summary(args.search)
    ylabel = None
    if args.pruned:  # the same summary, of the errors before fine-tuning
        records = [dict(r, test_error=r["test_error_pruned"]) for r in load_records(args.search)]
        summary = summarize(records, summary["methods"], summary["archs"])
        ylabel = "test error (%) right after surgery, mean over seeds"
    out = Path(args.out) if args.out else Path(args.search) / ("error_vs_macs_pruned.png" if args.pruned else "error_vs_macs.png")
    path = plot_error_vs_macs(summary, out, args.title, ylabel)
    print(path)
    return path


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        sys.exit(f"{Path(__file__).name}: error: {exc}")
