"""Data-parallel runs (``pyro_dirichlet_prune.distributed``) against one process, on 2 CPU processes
with gloo launched by ``torchrun``: the same global minibatches split in two, the same switch
draws, gradients averaged by DDP.

The math says the 2-process ELBO estimate of a step is the 1-process one of the same minibatch
(N/B_r times each half's log-likelihood, averaged, with the same KL), so the trajectories may
differ only by float rounding; the tolerances below are a few hundred float32 roundings."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import ddp_worker  # noqa: E402

from pyro_dirichlet_prune import cli  # noqa: E402


def _torchrun(args: list[str], tmp_path: Path, port: int, env: dict | None = None, check: bool = True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(port), *args]
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    r = subprocess.run(cmd, cwd=tmp_path, env=e, capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"torchrun failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_learn_and_finetune_as_one(tmp_path, data_cfg):
    """Switch learning (joint, and layer by layer, whose idle layers leave DDP parameters unused)
    and fine-tuning on 2 gloo processes: the ELBO of every step and the concentrations agree
    with one process to float rounding, the same units are kept, and fine-tuning reaches the same
    losses, validation errors and weights."""
    torch.set_num_threads(1)
    data_dir = str(data_cfg.data_dir) if data_cfg.data_dir else "-"
    one = tmp_path / "one.json"
    ddp_worker.main(str(one), data_cfg.dataset, data_dir, 2000)
    two = tmp_path / "two.json"
    _torchrun([str(HERE / "ddp_worker.py"), str(two), data_cfg.dataset, data_dir, "2000"], tmp_path, _free_port())
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world"], b["world"]) == (1, 2)
    for key in ("losses", "layerwise_losses"):
        assert len(a[key]) == len(b[key]) >= 10
        np.testing.assert_allclose(b[key], a[key], rtol=2e-5)
    for key in ("concentrations", "layerwise_concentrations"):
        for layer in a[key]:
            np.testing.assert_allclose(b[key][layer], a[key][layer], rtol=2e-5)
    assert b["keep"] == a["keep"]
    assert [h["val_error"] for h in b["history"]] == [h["val_error"] for h in a["history"]]
    np.testing.assert_allclose([h["train_loss"] for h in b["history"]], [h["train_loss"] for h in a["history"]],
                               rtol=1e-5)
    for name in a["weights"]:
        np.testing.assert_allclose(b["weights"][name], a["weights"][name], atol=1e-4)


def test_prune_under_torchrun_killed_and_resumed_matches_one_process(tmp_path, data_cfg):
    """``torchrun --nproc-per-node 2 -m pyro_dirichlet_prune prune``: both processes killed
    mid-way through switch learning (the whole job), the same command with --resume finishes;
    only rank 0 wrote the output folder and printed the summary, and the run equals the
    one-process run: the same losses to rounding, the same architecture, the same errors after
    fine-tuning."""
    from pyro_dirichlet_prune.models.checkpoint import shipped_checkpoint

    args = ["prune", "--arch", "6-8-40-20", "--checkpoint", str(shipped_checkpoint("lenet5", "mnist")),
            *data_cfg.cli_args(), "--switch-batch-size", "200", "--switch-epochs", "1",
            "--finetune-epochs", "2", "--threads", "1", "--checkpoint-every", "5", "--no-latency"]
    one = tmp_path / "one"
    assert cli.main([*args, "--out", str(one)]) == 0
    two = tmp_path / "two"
    killed = _torchrun(["-m", "pyro_dirichlet_prune", *args, "--out", str(two)], tmp_path, _free_port(),
                       env={"DIRICHLET_PRUNE_FAULT": "switches:17"}, check=False)
    assert killed.returncode != 0 and not two.exists()
    assert (tmp_path / ".two.partial" / "state.pt").is_file()
    resumed = _torchrun(["-m", "pyro_dirichlet_prune", *args, "--out", str(two), "--resume"], tmp_path,
                        _free_port())
    assert resumed.stdout.count("(fine-tuned)") == 1, resumed.stdout  # only rank 0 prints its summary
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".two")) == []
    r1, r2 = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert r2["resumed_from"]["switches"] > 0
    np.testing.assert_allclose(r2["switches"]["losses"], r1["switches"]["losses"], rtol=1e-4)
    assert r2["kept"] == r1["kept"]
    for split in ("val", "test"):
        assert r2["finetuned"][split]["error"] == pytest.approx(r1["finetuned"][split]["error"], abs=2e-3)
