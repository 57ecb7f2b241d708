"""benchmarks/cutoffs_against_search.py: budget cut-offs paired by seed with a search's records."""
from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # as when run as a script

import cutoffs_against_search as cas  # noqa: E402


def _rec(method: str, arch: str, macs: int, seed: int, err: float) -> dict:
    return {"method": method, "arch": arch, "macs": macs, "seed": seed, "test_error": err}


def test_each_cut_off_is_paired_with_the_same_seed_of_the_nearest_pool_architecture():
    records = [_rec(m, a, macs, s, e) for (a, macs) in (("wide", 1000), ("narrow", 500))
               for m, base in (("fisher", 0.060), ("l1", 0.070)) for s, e in enumerate([base, base + 0.002])]
    records[-1]["test_error"] = 0.080  # l1, narrow, seed 1
    rows = [
        {"cutoff": "budget", "mac_factor": 2.0, "seed": 0, "macs": 990, "test_error": 0.061},
        {"cutoff": "budget", "mac_factor": 2.0, "seed": 1, "macs": 995, "test_error": 0.058},
        {"cutoff": "budget", "mac_factor": 4.0, "seed": 1, "macs": 480, "test_error": 0.065},
        {"cutoff": "budget", "mac_factor": 4.0, "seed": 2, "macs": 480, "test_error": 0.065},  # no record of seed 2
        {"cutoff": "uncertainty", "seed": 0, "macs": 900, "test_error": 0.050},                # not a budget
        {"cutoff": "budget", "mac_factor": 4.0, "seed": 0, "macs": 490},                        # no test error
    ]
    pairs = cas.pair_rows(rows, records)
    assert pairs[2.0]["fisher"] == [(0, 0.061, 0.060, "wide"), (1, 0.058, 0.062, "wide")]
    assert pairs[4.0]["l1"] == [(1, 0.065, 0.080, "narrow")]
    result = cas.compare(pairs)
    two = result["per_factor"]["2.0"]["fisher"]
    assert (two["pairs"], two["better"], two["worse"]) == (2, 1, 1)
    assert two["mean_diff"] == pytest.approx(-0.0015)
    pooled = result["pooled"]["l1"]  # d = 0.061-0.070, 0.058-0.072, 0.065-0.080
    d = [-0.009, -0.014, -0.015]
    half = 4.302652729911275 * statistics.stdev(d) / math.sqrt(3)  # scipy.stats.t.ppf(0.975, 2)
    assert (pooled["pairs"], pooled["better"]) == (3, 3)
    assert pooled["ci95"] == pytest.approx([statistics.mean(d) - half, statistics.mean(d) + half])
    table = cas.markdown(result)
    assert table.startswith("| budget cut-off minus | 2× (2 pairs) | 4× (1 pairs) | pooled |")
    # t intervals with 1 and 2 degrees of freedom (12.706, 4.303); one pair has none
    assert "| l1 | -1.15 [-4.33, +2.03], 2/0, p 0.5 | -1.50, 1/0, p 1 | -1.27 [-2.07, -0.47], 3/0, p 0.25 |" in table
