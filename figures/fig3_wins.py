"""Fig. 3 of Adamczewski & Park (2021): on how many architectures of a search each ranking
method gives the lowest mean test error. Sole wins are solid bars; ties for first place (every
tied method gets one) are stacked on top, hatched.

    python figures/fig3_wins.py runs/search --out runs/search/fig3_wins.png

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

from pyro_dirichlet_prune.errors import UserError  # noqa: E402
from pyro_dirichlet_prune.search import load_summary  # noqa: E402


def plot_wins(summary: Mapping, path: str | Path, title: str | None = None) -> Path:
    """Bar chart of ``summary["wins"]`` with ``summary["ties"]`` stacked and hatched; saved to ``path``."""
    methods: Sequence[str] = summary["methods"]
    wins = [summary["wins"][m] for m in methods]
    ties = [summary["ties"][m] for m in methods]
    fig, ax = plt.subplots(figsize=(1.1 * len(methods) + 2.5, 3.8))
    x = range(len(methods))
    ax.bar(x, wins, color="tab:blue", label="wins (sole lowest error)")
    ax.bar(x, ties, bottom=wins, color="white", edgecolor="tab:blue", hatch="///",
           label="ties for the lowest error")
    for i, (w, t) in enumerate(zip(wins, ties)):
        ax.text(i, w + t, f"{w}" + (f"+{t}" if t else ""), ha="center", va="bottom", fontsize=9)
    ax.set_xticks(list(x), methods, rotation=20)
    ax.set_xlabel("ranking method")
    ax.set_ylabel(f"architectures (of {len(summary['archs'])})")
    ax.set_ylim(0, max(1, max(w + t for w, t in zip(wins, ties))) * 1.15)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or f"Sub-architecture search: lowest mean test error on {len(summary['archs'])} architectures")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("search", help="output folder of `dirichlet-prune search`")
    ap.add_argument("--out", default=None, help="PNG to write (default SEARCH/fig3_wins.png)")
    ap.add_argument("--title", default=None, help="figure title (default: says how many architectures)")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.search) / "fig3_wins.png"
    path = plot_wins(load_summary(args.search), out, args.title)
    print(path)
    return path


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        sys.exit(f"{Path(__file__).name}: error: {exc}")
