"""Kill-and-resume: a run killed mid-epoch (SIGKILL, as a crash or an out-of-memory kill)
and continued with ``--resume`` reaches exactly the result of an uninterrupted run with the
same seed; nothing of the killed run is lost and no half-written output looks valid."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from pyro_dirichlet_prune import cli
from pyro_dirichlet_prune.runstate import FAULT_ENV

DATA = ["--dataset", "fake-mnist", "--val-size", "500"]


def _run(args, fault=None, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-m", "pyro_dirichlet_prune", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "base"
    assert cli.main(["pretrain", "--epochs", "1", "--batch-size", "64", "--augment-shift", "0", "--threads", "1",
                     *DATA, "--out", str(out)]) == 0
    return out / "model.pt"


def _prune_args(ckpt, out, schedule="joint"):
    """``schedule``: joint, sequential, or learned (joint with the weights learning too)."""
    learned = ["--learn-weights", "0.05", "--switch-scale", "dim"] if schedule == "learned" else []
    return ["prune", "--checkpoint", str(ckpt), "--arch", "6-8-40-20", "--switch-batch-size", "100", *learned,
            "--schedule", "joint" if schedule == "learned" else schedule, "--finetune-epochs", "2", "--finetune-batch-size", "128", "--checkpoint-every", "4",
            "--threads", "1",
            "--seed", "5", *DATA, "--out", str(out)]


def _same_result(a, b):
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (a, b))
    for key in ("kept", "architecture", "base", "pruned", "finetuned"):
        assert ra[key] == rb[key], key
    assert ra["switches"]["losses"] == rb["switches"]["losses"]
    assert json.loads((a / "posterior.json").read_text()) == json.loads((b / "posterior.json").read_text())
    assert rb["resumed"] is True and ra["resumed"] is False


@pytest.fixture(scope="module")
def uninterrupted(base, tmp_path_factory):
    out = {}
    for schedule in ("joint", "sequential", "learned"):
        out[schedule] = tmp_path_factory.mktemp("ref") / f"ref-{schedule}"
        proc = _run(_prune_args(base, out[schedule], schedule))
        assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.parametrize(
    "schedule,fault,resumed_from",
    [
        # 1500 training examples: 15 switch steps per epoch (per stage), 12 fine-tuning steps
        # per epoch; state saved every 4 steps and at every epoch and stage end.
        ("joint", "switches:7", {"switches": 4}),  # mid-epoch of switch learning
        ("sequential", "switches:22", {"switches": 20}),  # inside the second layer's stage
        ("joint", "finetune:18", {"switches": "done", "finetune": 16}),  # mid second epoch
        ("learned", "switches:7", {"switches": 4}),  # the weights' point estimates and their Adam state too
    ],
)
def test_killed_prune_resumes_to_the_same_result(base, uninterrupted, tmp_path, schedule, fault, resumed_from):
    out = tmp_path / "run"
    killed = _run(_prune_args(base, out, schedule), fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    work = tmp_path / ".run.partial"
    assert not out.exists() and (work / "state.pt").is_file()
    assert not (work / "report.json").exists()  # nothing that looks like a finished run
    again = _run(_prune_args(base, out, schedule))  # neither --resume nor --overwrite: refused
    assert again.returncode == 2 and "--resume" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    resumed = _run(_prune_args(base, out, schedule) + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not work.exists() and not (out / "state.pt").exists()
    _same_result(uninterrupted[schedule], out)
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from"] == resumed_from  # continued from the saved step, not from scratch


def test_killed_pretrain_resumes_to_the_same_model(tmp_path):
    args = ["pretrain", "--epochs", "2", "--batch-size", "64", "--augment-shift", "1", "--threads", "1",
            "--checkpoint-every", "5", *DATA]
    ref = _run(args + ["--out", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr[-2000:]
    killed = _run(args + ["--out", str(tmp_path / "run")], fault="pretrain:31")
    assert killed.returncode == -signal.SIGKILL
    resumed = _run(args + ["--out", str(tmp_path / "run"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (json.loads((tmp_path / d / "report.json").read_text())["metrics"] for d in ("ref", "run"))
    for key in ("val", "test", "best_epoch", "history"):
        assert a[key] == b[key], key
    # 1500 examples / 64 = 24 steps per epoch: killed at 31, saved at 30
    assert json.loads((tmp_path / "run" / "report.json").read_text())["resumed_from"] == {"pretrain": 30}
    import torch

    sa = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)["state_dict"]
    sb = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_errors(base, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_prune_args(base, out) + ["--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert cli.main(_prune_args(base, out) + ["--resume", "--overwrite"]) == 2
    assert "exclude" in capsys.readouterr().err
    killed = _run(_prune_args(base, out), fault="switches:5")
    assert killed.returncode == -signal.SIGKILL
    changed = _prune_args(base, out) + ["--resume", "--alpha0", "0.7"]
    assert cli.main(changed) == 2
    err = capsys.readouterr().err
    assert "configuration differs" in err and "switch" in err
    assert (tmp_path / ".run.partial" / "state.pt").is_file()  # the refused resume kept the state
    # --overwrite discards the interrupted run and starts over
    assert cli.main(_prune_args(base, out) + ["--overwrite"]) == 0
    assert out.is_dir() and not (tmp_path / ".run.partial").exists()
