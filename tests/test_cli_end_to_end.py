"""The command line end to end on a small run: pretrain → prune (in-process and in a
subprocess) → evaluate in a fresh process; the report's fields are present and agree with
the saved networks and with independent evaluations."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from helpers import lenet5_macs, lenet5_params
from pyro_dirichlet_prune import cli
from pyro_dirichlet_prune.data import load_data
from pyro_dirichlet_prune.metrics import count_macs, count_params
from pyro_dirichlet_prune.models import SwitchedNetwork
from pyro_dirichlet_prune.models.checkpoint import load_checkpoint
from pyro_dirichlet_prune.pruning.surgery import mask_scales
from pyro_dirichlet_prune.training import evaluate

ARCH = "6-8-40-20"
SHAPE = (1, 28, 28)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("DATA_DIR", None)  # the tests pass --data-dir explicitly
    return env


def run_module(args, cwd, timeout=180):
    return subprocess.run([sys.executable, "-m", "pyro_dirichlet_prune", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_cfg):
    out = tmp_path_factory.mktemp("pre") / "base"
    rc = cli.main(["pretrain", "--model", "lenet5", "--epochs", "1", "--batch-size", "32", "--augment-shift", "0", "--threads", "1", *data_cfg.cli_args(),
                   "--out", str(out)])
    assert rc == 0
    return out


def _prune_args(data_cfg, ckpt, out):
    return ["prune", "--model", "lenet5", "--checkpoint", str(ckpt), "--arch", ARCH, "--finetune-epochs", "1",
            "--switch-batch-size", "100", "--threads", "1", "--seed", "3", *data_cfg.cli_args(), "--out", str(out)]


@pytest.fixture(scope="module")
def pruned_run(pretrained, data_cfg):
    out = pretrained.parent / "run"
    rc = cli.main(_prune_args(data_cfg, pretrained / "model.pt", out))
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def data(data_cfg):
    kw = dict(data_dir=data_cfg.data_dir) if data_cfg.data_dir else {}
    return load_data(data_cfg.dataset, val_size=data_cfg.val_size, **kw)


def test_pretrain_writes_checkpoint_and_report(pretrained, data_cfg, data):
    assert sorted(p.name for p in pretrained.iterdir()) == ["model.pt", "report.json"]
    assert not [p for p in pretrained.parent.iterdir() if ".partial" in p.name]
    rep = json.loads((pretrained / "report.json").read_text())
    assert rep["command"] == "pretrain"
    assert rep["config"]["model"] == "lenet5" and rep["config"]["dataset"] == data_cfg.dataset
    assert rep["data"]["train"] == data_cfg.max_train and rep["data"]["val"] == data_cfg.val_size
    m = rep["metrics"]
    assert m["params"] == 40165 and m["macs"] == 498750
    assert len(m["history"]) == 1
    net, info = load_checkpoint(pretrained / "model.pt", "lenet5")
    for split in ("test", "val"):  # the report's numbers are the saved network's
        again = evaluate(net, getattr(data, split))
        assert again["error"] == m[split]["error"] and again["nll"] == pytest.approx(m[split]["nll"], rel=1e-6)
    assert info["widths"] == [10, 20, 100, 25] and info["dataset"] == data_cfg.dataset
    assert info["meta"]["test_error"] == m["test"]["error"]
    if data_cfg.dataset == "mnist":
        assert m["test"]["error"] < 0.5  # one epoch on 2000 digits learns something


def test_prune_report_fields(pruned_run, pretrained, data_cfg):
    assert sorted(p.name for p in pruned_run.iterdir()) == ["fit.png", "posterior.json", "posterior.png", "pruned.pt",
                                                            "report.json"]
    assert not [p for p in pruned_run.parent.iterdir() if ".partial" in p.name]
    rep = json.loads((pruned_run / "report.json").read_text())
    # every run says whether switch learning converged, stage by stage, though the rule only watched
    conv = rep["switches"]["convergence"]
    assert conv["rule"]["stops"] is False and [s["layers"] for s in conv["stages"]] == [[k] for k in
                                                                                       ("conv1", "conv2", "fc1", "fc2")]
    assert conv["converged"] == all(s["converged"] for s in conv["stages"])
    assert [s["steps"] for s in conv["stages"]] == [s["steps"] for s in rep["switches"]["stages"]]
    assert rep["posterior"]["structure"].startswith("per-stage conditional posteriors")
    assert rep["posterior"]["intervals"].startswith("as fitted, " + ("converged" if conv["converged"] else "not converged"))
    assert rep["switches"]["concentration"] == "fitted"  # the suite's setting (conftest); the settle: test_cli_errors
    assert rep["command"] == "prune"
    cfg = rep["config"]
    assert cfg["model"] == "lenet5" and cfg["dataset"] == data_cfg.dataset and cfg["arch"] == ARCH
    assert cfg["seed"] == 3 and cfg["switch"]["seed"] == 3 and cfg["finetune"]["seed"] == 3
    assert cfg["finetune"]["epochs"] == 1 and cfg["max_train_examples"] == data_cfg.max_train
    for key in ("python", "torch", "pyro-ppl", "torch-pruning"):
        assert rep["versions"][key] and rep["versions"][key] != "not installed"
    assert rep["architecture"] == {"base": "10-20-100-25", "pruned": ARCH, "cutoff": "arch"}
    assert rep["cutoff"] == {"kind": "arch", "arch": ARCH}
    assert rep["base"]["params"] == 40165 and rep["base"]["macs"] == 498750
    widths = [int(w) for w in ARCH.split("-")]
    for stage in ("pruned", "finetuned"):
        assert rep[stage]["arch"] == ARCH
        assert rep[stage]["params"] == lenet5_params(*widths) == 6 * 26 + (25 * 6 * 8 + 8) + (128 * 40 + 40) + (40 * 20 + 20) + 210
        assert rep[stage]["macs"] == lenet5_macs(*widths)
    assert rep["compression"]["params_ratio"] == pytest.approx(40165 / rep["finetuned"]["params"])
    assert rep["compression"]["macs_ratio"] == pytest.approx(498750 / rep["finetuned"]["macs"])
    t = rep["timings_seconds"]
    assert set(t) >= {"load", "switches", "surgery", "finetune", "total"}
    assert all(v >= 0 for v in t.values())
    assert t["total"] == pytest.approx(sum(v for k, v in t.items() if k != "total"))
    # the default schedule is sequential: three epochs of 100-example minibatches per layer
    steps = len(rep["switches"]["stages"]) * 3 * -(-data_cfg.max_train // 100)
    assert len(rep["switches"]["stages"]) == 4 and rep["switches"]["steps"] == steps == len(rep["switches"]["losses"])
    assert [len(rep["kept"][l]) for l in ("conv1", "conv2", "fc1", "fc2")] == widths
    assert rep["checkpoint"] == str(pretrained / "model.pt")
    stages = rep["posterior"]["stage_elbos"]  # one ELBO per layer-by-layer stage, each a finite estimate
    assert list(stages) == ["conv1", "conv2", "fc1", "fc2"]
    assert all(math.isfinite(v["elbo"]) and v["standard_error"] > 0 for v in stages.values())


def test_report_sizes_match_saved_pruned_model(pruned_run):
    rep = json.loads((pruned_run / "report.json").read_text())
    net, info = load_checkpoint(pruned_run / "pruned.pt", "lenet5")
    assert tuple(net.widths) == (6, 8, 40, 20)
    assert count_params(net) == rep["finetuned"]["params"]
    assert count_macs(net, SHAPE) == rep["finetuned"]["macs"]
    assert info["meta"]["kept"] == rep["kept"]


def test_posterior_ranks_and_kept_units(pruned_run):
    """kept[l] are the top-k units of E_q[s_l] = phi_l / sum(phi_l)."""
    post = json.loads((pruned_run / "posterior.json").read_text())
    rep = json.loads((pruned_run / "report.json").read_text())
    for layer, k in zip(("conv1", "conv2", "fc1", "fc2"), (6, 8, 40, 20)):
        phi = torch.tensor(post[layer]["concentration"], dtype=torch.float64)
        mean = torch.tensor(post[layer]["mean"], dtype=torch.float64)
        torch.testing.assert_close(mean, phi / phi.sum())
        kept = post[layer]["kept"]
        assert kept == rep["kept"][layer] and len(kept) == k and kept == sorted(kept)
        dropped = [j for j in range(len(mean)) if j not in kept]
        if dropped:
            assert float(mean[kept].min()) >= float(mean[dropped].max())


def test_report_metrics_agree_with_independent_evaluation(pruned_run, pretrained, data):
    """base = the checkpoint; pruned = the base network masked to the kept units; finetuned = pruned.pt."""
    rep = json.loads((pruned_run / "report.json").read_text())
    base, _ = load_checkpoint(pretrained / "model.pt")
    assert evaluate(base, data.test)["error"] == rep["base"]["test"]["error"]
    sw = SwitchedNetwork(base)
    with sw.scaled(mask_scales(base.switch_points(), rep["kept"])):
        masked = evaluate(sw, data.test)
    assert masked["error"] == pytest.approx(rep["pruned"]["test"]["error"], abs=2 / len(data.test))
    assert masked["nll"] == pytest.approx(rep["pruned"]["test"]["nll"], rel=1e-4, abs=1e-5)
    fine, _ = load_checkpoint(pruned_run / "pruned.pt")
    assert evaluate(fine, data.test)["error"] == rep["finetuned"]["test"]["error"]


def test_subprocess_prune_and_fresh_evaluate(pruned_run, pretrained, data_cfg, tmp_path):
    """``python -m pyro_dirichlet_prune prune`` reproduces the in-process run (same seed), and
    ``evaluate`` in a fresh process prints the fine-tuned test error of the report."""
    out = tmp_path / "run2"
    proc = run_module(_prune_args(data_cfg, pretrained / "model.pt", out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "->" in proc.stdout and ARCH in proc.stdout
    rep2 = json.loads((out / "report.json").read_text())
    rep1 = json.loads((pruned_run / "report.json").read_text())
    assert rep2["kept"] == rep1["kept"]
    assert rep2["finetuned"]["test"]["error"] == rep1["finetuned"]["test"]["error"]

    ev_args = ["evaluate", str(out / "pruned.pt")]
    if data_cfg.data_dir:
        ev_args += ["--data-dir", str(data_cfg.data_dir)]
    ev = run_module(ev_args, cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    result = json.loads(ev.stdout.strip().splitlines()[-1])
    assert result["test"]["error"] == rep2["finetuned"]["test"]["error"]
    assert result["arch"] == ARCH and result["model"] == "lenet5" and result["dataset"] == data_cfg.dataset
    assert result["params"] == rep2["finetuned"]["params"] and result["macs"] == rep2["finetuned"]["macs"]


def test_overwrite_replaces_existing_output(pruned_run, pretrained, data_cfg, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    args = _prune_args(data_cfg, pretrained / "model.pt", out)
    args[args.index("--finetune-epochs") + 1] = "0"
    assert cli.main([*args, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["fit.png", "posterior.json", "posterior.png", "pruned.pt", "report.json"]
    rep = json.loads((out / "report.json").read_text())
    # no fine-tuning: the fine-tuned network is the pruned one
    assert rep["finetuned"]["test"] == rep["pruned"]["test"]
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
