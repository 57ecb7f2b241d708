"""Same seed, same machine → the same report numbers: a short pipeline run twice."""
from __future__ import annotations

import json

from pyro_dirichlet_prune import cli

DATA = ["--dataset", "fake-mnist", "--val-size", "500"]


def _numbers(report: dict) -> dict:
    drop = {"created", "timings_seconds", "versions", "latency"}  # latency: measured times
    out = {k: v for k, v in report.items() if k not in drop}
    out["switches"] = {k: v for k, v in report["switches"].items() if k != "stages"}
    return out


def test_same_seed_same_report(tmp_path):
    assert cli.main(["pretrain", "--epochs", "1", "--batch-size", "64", "--threads", "1", *DATA,
                     "--out", str(tmp_path / "base")]) == 0
    reports = []
    for name in ("a", "b"):
        assert cli.main(["prune", "--checkpoint", str(tmp_path / "base" / "model.pt"), "--rate", "0.5",
                         "--switch-batch-size", "100", "--switch-epochs", "1", "--particles", "2", "--finetune-epochs", "2", "--seed", "11",
                         "--threads", "1", *DATA, "--out", str(tmp_path / name)]) == 0
        reports.append(json.loads((tmp_path / name / "report.json").read_text()))
    a, b = (_numbers(r) for r in reports)
    a["config"].pop("checkpoint", None), b["config"].pop("checkpoint", None)
    assert a == b
    assert json.loads((tmp_path / "a" / "posterior.json").read_text()) == json.loads(
        (tmp_path / "b" / "posterior.json").read_text()
    )
    # and a different seed gives a different run
    assert cli.main(["prune", "--checkpoint", str(tmp_path / "base" / "model.pt"), "--rate", "0.5",
                     "--switch-batch-size", "100", "--switch-epochs", "1", "--particles", "2", "--finetune-epochs", "2", "--seed", "12",
                     "--threads", "1", *DATA, "--out", str(tmp_path / "c")]) == 0
    c = json.loads((tmp_path / "c" / "report.json").read_text())
    assert c["switches"]["losses"] != reports[0]["switches"]["losses"]
