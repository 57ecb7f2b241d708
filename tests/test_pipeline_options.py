"""The prune pipeline's other cut-off and inference options on a tiny fake data set:
``--rate`` keeps max(1, round(D(1 - rate))) units per layer, the mean guide and the
sequential schedule (one SVI stage per layer) run end to end; ``pretrain --widths``."""
from __future__ import annotations

import json

import pytest

import pyro_dirichlet_prune.pipeline as pipeline
import pyro_dirichlet_prune.pretraining as pretraining
from helpers import lenet5_params, tiny_data
from pyro_dirichlet_prune import cli
from pyro_dirichlet_prune.models import build_model
from pyro_dirichlet_prune.models.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture
def ckpt(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "load_data", tiny_data)
    path = tmp_path / "base.pt"
    save_checkpoint(path, build_model("lenet5"), "lenet5", "fake-mnist", 10, (1, 28, 28))
    return path


@pytest.mark.parametrize("extra,stages", [(["--guide", "dirichlet-mean", "--schedule", "sequential"], 4),
                                          (["--elbo", "meanfield", "--particles", "2", "--schedule", "joint"], 1)])
def test_rate_cutoff_and_inference_options(ckpt, tmp_path, extra, stages):
    out = tmp_path / "run"
    rc = cli.main(["prune", "--checkpoint", str(ckpt), "--dataset", "fake-mnist", "--rate", "0.5",
                   "--finetune-epochs", "0", "--switch-batch-size", "40", "--threads", "1", *extra, "--out", str(out)])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["architecture"]["pruned"] == "5-10-50-13"
    assert rep["finetuned"]["params"] == lenet5_params(5, 10, 50, 13)
    assert len(rep["switches"]["stages"]) == stages
    assert rep["switches"]["steps"] == stages * 3 * 3  # 120 training examples / batch 40, 3 epochs a stage
    assert [s["layers"] for s in rep["switches"]["stages"]] == (
        [["conv1"], ["conv2"], ["fc1"], ["fc2"]] if stages == 4 else [["conv1", "conv2", "fc1", "fc2"]])
    net, _ = load_checkpoint(out / "pruned.pt")
    assert tuple(net.widths) == (5, 10, 50, 13)


def test_pretrain_with_smaller_widths(tmp_path, monkeypatch):
    monkeypatch.setattr(pretraining, "load_data", tiny_data)
    out = tmp_path / "pre"
    assert cli.main(["pretrain", "--dataset", "fake-mnist", "--widths", "2-3-4-2", "--epochs", "1",
                     "--threads", "1", "--out", str(out)]) == 0
    net, info = load_checkpoint(out / "model.pt", "lenet5")
    assert info["widths"] == [2, 3, 4, 2]
    assert json.loads((out / "report.json").read_text())["metrics"]["params"] == lenet5_params(2, 3, 4, 2)


def test_pretrain_with_wider_widths(tmp_path, monkeypatch, capsys):
    """--widths sets the network's widths; a wider LeNet-5 than the default is a valid network
    (the widths are checked only for being positive by the model itself)."""
    monkeypatch.setattr(pretraining, "load_data", tiny_data)
    out = tmp_path / "pre"
    rc = cli.main(["pretrain", "--dataset", "fake-mnist", "--widths", "12-24-120-30", "--epochs", "1",
                   "--threads", "1", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    _, info = load_checkpoint(out / "model.pt", "lenet5")
    assert info["widths"] == [12, 24, 120, 30]


def _posterior_rule(out, tau_delta):
    post = json.loads((out / "posterior.json").read_text())
    return {layer: [j for j, p in enumerate(v["prob_below_tau"]) if not p >= 1 - tau_delta] for layer, v in post.items()}, post


@pytest.mark.parametrize("extra", [["--switch-scale", "simplex", "--switch-lr", "0.5", "--tau", "1.0", "--delta", "0.3",
                                    "--concentration", "fitted", "--no-switch-average"],
                                   ["--guide", "normal", "--switch-scale", "simplex", "--switch-lr", "0.2", "--tau", "1.0",
                                    "--delta", "0.3"]])
def test_uncertainty_cutoff_is_the_default_and_follows_the_posterior(ckpt, tmp_path, extra):
    """No --arch/--rate: units with P(D·s < tau) >= 1 - delta are gone, the others kept (or the
    layer's most probable unit when all qualify), for the exact Dirichlet and a Monte-Carlo posterior."""
    out = tmp_path / "run"
    rc = cli.main(["prune", "--checkpoint", str(ckpt), "--dataset", "fake-mnist", "--finetune-epochs", "0",
                   "--switch-batch-size", "40", "--switch-epochs", "3", "--threads", "1", *extra, "--out", str(out)])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["cutoff"]["kind"] == "uncertainty" and rep["cutoff"]["tau"] == 1.0 and rep["cutoff"]["delta"] == 0.3
    rule, post = _posterior_rule(out, 0.3)
    for layer, kept in rep["kept"].items():
        if layer in rep["cutoff"]["guarded_layers"]:
            assert len(kept) == 1 and not rule[layer]
        else:
            assert kept == rule[layer]
        assert post[layer]["kept"] == kept
    assert rep["architecture"]["pruned"] != "10-20-100-25"  # the posterior did decide something here


def test_budget_cutoff_meets_the_budget(ckpt, tmp_path):
    out = tmp_path / "run"
    rc = cli.main(["prune", "--checkpoint", str(ckpt), "--dataset", "fake-mnist", "--finetune-epochs", "0",
                   "--switch-batch-size", "40", "--target-macs", "169320", "--target-params", "7554", "--threads", "1",
                   "--out", str(out)])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["cutoff"] == {"kind": "budget", "tau": pipeline.TAU, "target": {"macs": 169320, "params": 7554}}
    assert rep["finetuned"]["macs"] <= 169320 and rep["finetuned"]["params"] <= 7554
    # the removal order is by the posterior probability, so no kept unit is more surely unimportant than a removed one
    post = json.loads((out / "posterior.json").read_text())
    gone_p = [p for l, v in post.items() for j, p in enumerate(v["prob_below_tau"]) if j not in v["kept"]]
    layers_at_one = [l for l, v in post.items() if len(v["kept"]) == 1]
    kept_free = [p for l, v in post.items() if l not in layers_at_one for j, p in enumerate(v["prob_below_tau"]) if j in v["kept"]]
    assert gone_p and (not kept_free or max(kept_free) <= min(gone_p))


@pytest.mark.parametrize("model", [[], ["--switch-scale", "dim", "--schedule", "joint"]])
def test_uncertainty_cutoff_that_removes_nothing_says_so(ckpt, tmp_path, capsys, model):
    """A posterior confident about no unit (tau tiny): the network is kept whole and prune prints
    a note pointing at the alternatives (the paper's model only when another one was used)."""
    out = tmp_path / "run"
    rc = cli.main(["prune", "--checkpoint", str(ckpt), "--dataset", "fake-mnist", "--finetune-epochs", "0",
                   "--switch-batch-size", "40", "--tau", "1e-9", "--threads", "1", *model, "--out", str(out)])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["architecture"]["pruned"] == rep["architecture"]["base"] == "10-20-100-25"
    err = capsys.readouterr().err
    assert "nothing was removed" in err and "a larger --tau or --delta" in err
    assert ("--switch-scale simplex" in err) == bool(model)


def test_ranking_orders_the_units_of_the_arch_cutoff(ckpt, tmp_path, capsys):
    """--ranking l1 keeps the units of largest incoming-weight L1 norm (a hand computation on the
    checkpoint); the default keeps the highest posterior means; a ranking with the uncertainty
    cut-off is refused in the command line's words."""
    net, _ = load_checkpoint(ckpt)
    want = {}
    for p in net.switch_points():
        norms = p.module.weight.detach().double().abs().flatten(1).sum(1).tolist()
        want[p.name] = sorted(sorted(range(p.width), key=lambda j: -norms[j])[:{"conv1": 4, "conv2": 7,
                                                                                   "fc1": 30, "fc2": 9}[p.name]])
    base = ["prune", "--checkpoint", str(ckpt), "--dataset", "fake-mnist", "--finetune-epochs", "0",
            "--switch-batch-size", "40", "--threads", "1"]
    assert cli.main([*base, "--arch", "4-7-30-9", "--ranking", "l1", "--out", str(tmp_path / "l1")]) == 0
    rep = json.loads((tmp_path / "l1" / "report.json").read_text())
    assert rep["kept"] == want and rep["cutoff"] == {"kind": "arch", "arch": "4-7-30-9", "ranking": "l1"}
    assert cli.main([*base, "--arch", "4-7-30-9", "--out", str(tmp_path / "mean")]) == 0
    post = json.loads((tmp_path / "mean" / "posterior.json").read_text())
    for layer, v in post.items():
        top = sorted(sorted(range(len(v["mean"])), key=lambda j: (-v["mean"][j], j))[:len(v["kept"])])
        assert v["kept"] == top, layer
    capsys.readouterr()
    assert cli.main([*base, "--ranking", "l1", "--out", str(tmp_path / "bad")]) == 2
    assert "--ranking l1 chooses the units of the arch and rate cut-offs" in capsys.readouterr().err


def test_the_command_line_fine_tunes_fashion_mnist_for_80_epochs(monkeypatch, tmp_path):
    """The LeNets fine-tune 40 epochs by default, 80 on Fashion-MNIST (chosen on the validation
    split); an explicit --finetune-epochs wins; other models keep 40."""
    import pyro_dirichlet_prune.pipeline as pipeline
    from pyro_dirichlet_prune import cli

    class Stop(Exception):
        pass

    def capture(cfg, *args, **kwargs):
        seen.append(cfg.finetune.epochs)
        raise Stop

    seen = []
    monkeypatch.setattr(pipeline, "run_prune", capture)
    for extra in (["--dataset", "fashion-mnist"], ["--dataset", "mnist"],
                  ["--dataset", "fashion-mnist", "--finetune-epochs", "7"], ["--dataset", "fake-cifar10", "--model", "vgg16"]):
        with pytest.raises(Stop):
            cli.main(["prune", *extra, "--out", str(tmp_path / "x")])
    assert seen == [80, 40, 7, 40]
