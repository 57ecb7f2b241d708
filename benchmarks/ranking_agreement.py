"""How much the rankings of a search agree: Spearman's rank correlation, layer by layer, between
the seeds of one method (is the ranking a property of the method or of its seed?) and between
methods on the same seed (do they pick the same units?), from a search folder's ``scores/``.

    python benchmarks/ranking_agreement.py runs/vgg-study \\
        --out benchmarks/results/real_networks/ranking_agreement_vgg16.json

Prints, per pair, the median over layers and the range; writes every layer's correlation.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

from scipy.stats import spearmanr

from pyro_dirichlet_prune.report import versions, write_json


def load_scores(folder: str | Path) -> dict[tuple[str, int], dict[str, list[float]]]:
    """``{(method, seed): {layer: scores}}`` of a search folder's ``scores/``."""
    out = {}
    for path in sorted(Path(folder, "scores").glob("*.json")):
        saved = json.loads(path.read_text())
        out[(saved["method"], int(saved["seed"]))] = saved["scores"]
    if not out:
        raise SystemExit(f"{folder}: no scores/*.json (is it a search folder?)")
    return out


def correlations(a: dict[str, list[float]], b: dict[str, list[float]]) -> dict[str, float]:
    """Spearman's rho per layer of two rankings (layers of one unit left out)."""
    return {k: float(spearmanr(a[k], b[k])[0]) for k in a if k in b and len(a[k]) > 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("search", help="a dirichlet-prune search output folder")
    ap.add_argument("--out", default=None, help="JSON to write (default: none)")
    args = ap.parse_args()
    scores = load_scores(args.search)
    methods = sorted({m for m, _ in scores})
    seeds = sorted({s for _, s in scores})
    rows = []
    for m in methods:  # across seeds
        for s, t in itertools.combinations([s for s in seeds if (m, s) in scores], 2):
            rows.append({"kind": "seeds", "a": f"{m} seed {s}", "b": f"{m} seed {t}",
                         "rho": correlations(scores[(m, s)], scores[(m, t)])})
    for s in seeds:  # across methods
        for m, n in itertools.combinations([m for m in methods if (m, s) in scores], 2):
            rows.append({"kind": "methods", "a": f"{m} seed {s}", "b": f"{n} seed {s}",
                         "rho": correlations(scores[(m, s)], scores[(n, s)])})
    for r in rows:
        rho = list(r["rho"].values())
        print(f"{r['kind']:7s} {r['a']:>24s} ~ {r['b']:<24s} median rho {statistics.median(rho):+.2f} "
              f"[{min(rho):+.2f}, {max(rho):+.2f}]")
    if args.out:
        write_json(args.out, {"config": vars(args), "rows": rows, "versions": versions()})


if __name__ == "__main__":
    main()
