"""benchmarks/front_table.py: the setting chosen on validation under a size budget."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # as when run as a script

import front_table  # noqa: E402


def _row(label: str, seed: int, val: float, macs: int = 100, params: int = 10, cutoff: str = "decision") -> dict:
    return {"label": label, "seed": seed, "cutoff": cutoff, "arch": f"{label}-{seed}", "macs": macs,
            "params": params, "val_error": val, "test_error": val / 2}


def test_the_lowest_validation_error_within_the_budget_on_every_seed_is_chosen():
    rows = [
        _row("big", 0, 0.005, macs=300), _row("big", 1, 0.005, macs=300),          # best, but too many MACs
        _row("edge", 0, 0.006, macs=200), _row("edge", 1, 0.006, params=30),       # over on one seed only
        _row("small", 0, 0.009), _row("small", 1, 0.011),                            # mean 0.010
        _row("fine", 0, 0.012), _row("fine", 1, 0.007),                              # mean 0.0095
    ]
    assert front_table.choose(rows, (250, 20)) == "fine"
    assert front_table.choose(rows, (300, 30)) == "big"
    assert front_table.choose(rows, None) == "big"
    assert front_table.choose(rows, (10, 1)) is None


def test_settings_missing_a_seed_or_of_another_kind_are_not_chosen():
    rows = [_row("one-seed", 0, 0.001), _row("both", 0, 0.01), _row("both", 1, 0.01),
            _row("rate", 0, 0.002, cutoff="rate"), _row("rate", 1, 0.002, cutoff="rate")]
    assert front_table.choose(rows, None) == "rate"
    assert front_table.choose(rows, None, kinds=["decision", "uncertainty"]) == "both"
    assert front_table.choose(rows, None, kinds=["budget"]) is None


def test_the_table_lists_every_setting_of_every_run_and_each_choice():
    runs = {"frozen": [_row("a", 0, 0.01), _row("b", 0, 0.02, macs=999)],
            "learned": [_row("b", 0, 0.015)]}
    text = front_table.front_markdown(runs, (500, 50))
    body = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| cut-off")]
    assert [line.split(" | ")[0] for line in body] == ["| a", "| b"]
    assert body[0].count("—") == 5  # "a" was not run with learned weights
    assert "- frozen: chosen on validation" in text and "**a**" in text
    assert "- learned: chosen on validation" in text and "**b**" in text


def test_a_malformed_budget_names_the_argument():
    assert front_table.parse_budget("") is None
    assert front_table.parse_budget("169320,7554") == (169320, 7554)
    with pytest.raises(ValueError, match="budget"):
        front_table.parse_budget("169320")


def test_reports_joined_into_one_run_keep_every_row_and_refuse_a_setting_given_twice():
    front = {"rows": [_row("rate", 0, 0.01, cutoff="rate"), _row("rate", 1, 0.01, cutoff="rate")]}
    later = {"rows": [_row("lam", 0, 0.02), _row("lam", 1, 0.02)]}
    rows = front_table.joined_rows("frozen", [front, later])
    assert [(r["label"], r["seed"]) for r in rows] == [("rate", 0), ("rate", 1), ("lam", 0), ("lam", 1)]
    assert front_table.choose(rows, None, kinds=["decision"]) == "lam"
    with pytest.raises(ValueError, match="'frozen' holds 'rate' on seed 1 twice"):
        front_table.joined_rows("frozen", [front, {"rows": [_row("rate", 1, 0.03, cutoff="rate")]}])


def test_the_command_line_joins_reports_with_plus(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"rows": [_row("x", 0, 0.01)]}))
    b.write_text(json.dumps({"rows": [_row("y", 0, 0.005, macs=50)]}))
    front_table.main([f"frozen={a}+{b}", "--budget", "60,20"])
    text = capsys.readouterr().out
    assert "| x |" in text and "| y |" in text and "**y**" in text
    with pytest.raises(SystemExit):
        front_table.main([f"frozen={a}+{a}"])
    assert "holds 'x' on seed 0 twice" in capsys.readouterr().err
