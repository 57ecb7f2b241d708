"""``compare-guides``: the table and figures over guides and seeds, Kendall's tau on known
rankings, the held-out evaluation at the posterior mean, and resuming without redoing a record."""
from __future__ import annotations

import json
import time

import pytest
import torch

import pyro_dirichlet_prune.compare as compare
import pyro_dirichlet_prune.heldout as heldout
from helpers import ctrl_c_after_the_first, lenet5_forward, tiny_data
from pyro_dirichlet_prune import cli
from pyro_dirichlet_prune.data import Split
from pyro_dirichlet_prune.models import SwitchedNetwork, build_model
from pyro_dirichlet_prune.models.checkpoint import save_checkpoint


@pytest.fixture
def ckpt(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "load_data", tiny_data)
    path = tmp_path / "base.pt"
    save_checkpoint(path, build_model("lenet5"), "lenet5", "fake-mnist", 10, (1, 28, 28))
    return path


def _argv(ckpt, out, *extra):
    return ["compare-guides", "--checkpoint", str(ckpt), "--dataset", "fake-mnist", "--seeds", "0,1",
            "--switch-batch-size", "40", "--finetune-epochs", "1", "--elbo-particles", "2", "--elbo-batches", "2",
            "--arch", "5-10-50-13", "--predictive-draws", "3", "--threads", "1", *extra, "--out", str(out)]


def test_compare_guides_table_and_figures(ckpt, tmp_path):
    out = tmp_path / "cmp"
    assert cli.main(_argv(ckpt, out)) == 0
    table = json.loads((out / "table.json").read_text())
    records = json.loads((out / "records.json").read_text())
    guides = ["dirichlet", "dirichlet-mean", "normal", "delta", "lowrank"]
    assert list(table["table"]) == guides and len(records) == 10
    for g in guides:
        row = table["table"][g]
        assert row["test_error_finetuned"]["n"] == 2
        mine = [r for r in records if r["guide"] == g]
        assert row["heldout_error"]["mean"] == pytest.approx(sum(r["heldout_error"] for r in mine) / 2)
        assert all(r["arch"] == "5-10-50-13" and r["elbo"] is not None for r in mine)
    assert set(table["kendall_tau"]) == {"conv1", "conv2", "fc1", "fc2"}
    assert len(table["kendall_tau"]["fc1"]) == 10  # 5 choose 2 pairs
    for r in records:  # layer by layer (the default): the ELBO is the sum of the stages' ELBOs
        assert r["elbo"] == pytest.approx(sum(e for e, _ in r["stage_elbos"].values()))
        assert r["elbo_whole_model"] is not None and set(r["heldout_by_layer"]) == set(r["stage_elbos"])
        assert set(r["predictive_by_layer"]) == set(r["stage_elbos"]) and r["predictive_draws"] == 3
        assert r["predictive_lppd"] == pytest.approx(sum(m["lppd"] for m in r["predictive_by_layer"].values()) / 4)
    md = (out / "table.md").read_text()
    assert all(f"| {g} |" in md for g in guides) and "Kendall" in md and "posterior predictive" in md
    assert compare.SCHEDULE_NOTES["sequential"] in md
    for png in ("compare.png", "kendall.png"):
        assert (out / png).stat().st_size > 10_000
    rep = json.loads((out / "report.json").read_text())
    assert rep["command"] == "compare-guides" and rep["architecture"] == "5-10-50-13" and "versions" in rep


def test_compare_resumes_without_redoing_finished_records(ckpt, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cmp"
    real, calls, real_collect = compare._one, [], compare.collect

    def slow(*args):  # the second (guide, seed) is still being fitted when Ctrl-C lands
        calls.append(args[3:5])
        if len(calls) == 2:
            time.sleep(3.0)
        return real(*args)

    monkeypatch.setattr(compare, "collect", ctrl_c_after_the_first(real_collect, calls))
    monkeypatch.setattr(compare, "_one", slow)
    assert cli.main(_argv(ckpt, out, "--guides", "dirichlet,delta", "--seeds", "3,")) == 130
    assert not out.exists()
    assert cli.main(_argv(ckpt, out, "--guides", "dirichlet,delta", "--seeds", "3,", "--resume")) == 0
    first, second = calls[:2]  # Dask may run either guide first
    assert {first, second} == {("dirichlet", 3), ("delta", 3)}
    assert calls == [first, second, second]  # the finished one was not redone
    rep = json.loads((out / "report.json").read_text())
    assert rep["resumed_from"] == {"records": 1}
    with pytest.raises(SystemExit) as exc:
        cli.main(_argv(ckpt, tmp_path / "other", "--guides", "dirichlet,gaussian"))
    assert exc.value.code == 2 and "expected distinct names" in capsys.readouterr().err


def test_kendall_tau_of_known_rankings():
    recs = [{"guide": "a", "seed": 0, "means": {"l": [0.1, 0.2, 0.3, 0.4]}},
            {"guide": "b", "seed": 0, "means": {"l": [1.0, 2.0, 3.0, 4.0]}},
            {"guide": "c", "seed": 0, "means": {"l": [0.4, 0.3, 0.2, 0.1]}}]
    k = compare.kendall_by_layer(recs, ["a", "b", "c"])
    assert k["l"] == {"a|b": [1.0], "a|c": [-1.0], "b|c": [-1.0]}


def test_evaluate_at_mean_is_the_switched_network():
    torch.manual_seed(0)
    net = build_model("lenet5", widths=(2, 3, 4, 2)).eval()
    x, y = torch.randn(30, 1, 28, 28), torch.randint(0, 10, (30,))
    means = {"conv1": torch.tensor([0.7, 0.3]), "conv2": torch.tensor([0.2, 0.3, 0.5]),
             "fc1": torch.full((4,), 0.25), "fc2": torch.tensor([0.9, 0.1])}
    factor = {k: float(v.numel()) for k, v in means.items()}
    got = heldout.evaluate_at_mean(SwitchedNetwork(net), means, factor, Split(x, y))
    logits = lenet5_forward(net, x, {k: factor[k] * v for k, v in means.items()})
    nll = float(torch.nn.functional.cross_entropy(logits, y))
    assert got["nll"] == pytest.approx(nll, rel=1e-5)
    assert got["error"] == pytest.approx(float((logits.argmax(1) != y).double().mean()))


def test_heldout_at_mean_of_a_layer_by_layer_fit_switches_one_layer_at_a_time():
    """Sequential fit: each layer is evaluated alone at its mean (the others unswitched, as in
    its stage) and the metrics are averaged; a joint fit switches every layer at once."""
    torch.manual_seed(0)
    net = build_model("lenet5", widths=(2, 3, 4, 2)).eval()
    x, y = torch.randn(30, 1, 28, 28), torch.randint(0, 10, (30,))
    means = {"conv1": torch.tensor([0.7, 0.3]), "conv2": torch.tensor([0.2, 0.3, 0.5]),
             "fc1": torch.full((4,), 0.25), "fc2": torch.tensor([0.9, 0.1])}
    factor = {k: 1.0 for k in means}
    got, by_layer = heldout.heldout_at_mean(SwitchedNetwork(net), means, factor, Split(x, y), "sequential")
    nlls = []
    for layer, m in means.items():
        logits = lenet5_forward(net, x, {layer: m})
        nlls.append(float(torch.nn.functional.cross_entropy(logits, y)))
        assert by_layer[layer]["nll"] == pytest.approx(nlls[-1], rel=1e-5)
    assert got["nll"] == pytest.approx(sum(nlls) / 4, rel=1e-5)
    joint, none = heldout.heldout_at_mean(SwitchedNetwork(net), means, factor, Split(x, y), "joint")
    assert none is None
    assert joint["nll"] == pytest.approx(float(torch.nn.functional.cross_entropy(lenet5_forward(net, x, means), y)),
                                         rel=1e-5)
    assert abs(joint["nll"] - got["nll"]) > 1e-3  # the two schedules measure different models


def test_predictive_check_is_the_mixture_of_the_draws_and_not_the_plug_in():
    """lppd = mean_n log (1/S) sum_s p(y_n | x_n, s_s), worked by hand from the switched forward
    passes, per layer alone for a layer-by-layer fit and all layers together for a joint one; its
    error is the averaged probabilities'. Two draws either side of a mean give a different
    number from the plug-in at that mean."""
    torch.manual_seed(1)
    net = build_model("lenet5", widths=(2, 3, 4, 2)).eval()
    for p in net.parameters():
        p.data.mul_(3.0)
    x, y = torch.randn(40, 1, 28, 28), torch.randint(0, 10, (40,))
    draws = {"conv1": torch.tensor([[1.6, 0.4], [0.2, 1.8]], dtype=torch.float64),
             "fc1": torch.tensor([[2.0, 1.0, 0.5, 0.5], [0.1, 0.9, 1.5, 1.5]], dtype=torch.float64)}

    def by_hand(layers):
        probs = [torch.softmax(lenet5_forward(net, x, {k: draws[k][s].float() for k in layers}).double(), 1)
                 for s in range(2)]
        mix = (probs[0] + probs[1]) / 2
        return float(mix.gather(1, y[:, None]).log().mean()), float((mix.argmax(1) != y).double().mean())

    got, by_layer = heldout.predictive_check(SwitchedNetwork(net), draws, Split(x, y), "sequential", batch_size=15)
    for layer in draws:
        lppd, err = by_hand([layer])
        assert by_layer[layer]["lppd"] == pytest.approx(lppd, rel=1e-6)
        assert by_layer[layer]["error"] == pytest.approx(err)
    assert got["lppd"] == pytest.approx((by_layer["conv1"]["lppd"] + by_layer["fc1"]["lppd"]) / 2)
    joint, none = heldout.predictive_check(SwitchedNetwork(net), draws, Split(x, y), "joint")
    assert none is None and joint["lppd"] == pytest.approx(by_hand(["conv1", "fc1"])[0], rel=1e-6)
    plug_in = heldout.evaluate_at_mean(SwitchedNetwork(net), {k: v.mean(0) for k, v in draws.items()},
                                       {k: 1.0 for k in draws}, Split(x, y))
    assert abs(joint["lppd"] + plug_in["nll"]) > 1e-3


def test_compare_with_learned_weights_prunes_the_fitted_network(ckpt, tmp_path, capsys, monkeypatch):
    from pyro_dirichlet_prune.inference import svi
    from pyro_dirichlet_prune.models.checkpoint import load_checkpoint
    from pyro_dirichlet_prune.training import evaluate

    learned = ["--learn-weights", "0.05", "--weight-lr", "0.01", "--schedule", "joint", "--switch-scale", "dim"]
    assert cli.main(_argv(ckpt, tmp_path / "refused", *learned)) == 2  # the autoguides cannot hold weights
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "guide" in err[0] and not (tmp_path / "refused").exists()

    fitted_nets, real = [], svi.SwitchFit.fitted_network

    def spy(self):
        fitted_nets.append(real(self))
        return fitted_nets[-1]

    monkeypatch.setattr(svi.SwitchFit, "fitted_network", spy)
    out = tmp_path / "cmp"
    assert cli.main(_argv(ckpt, out, "--guides", "dirichlet,dirichlet-mean", *learned)) == 0
    records = json.loads((out / "records.json").read_text())
    assert len(records) == 4 and all(r["heldout_by_layer"] is None for r in records)
    # held out: the network whose weights learned, the one that is then pruned (one per record)
    data = tiny_data("fake-mnist")
    assert len(fitted_nets) == len(records)
    assert [r["heldout_error"] for r in records] == pytest.approx(
        [evaluate(n, data.test)["error"] for n in fitted_nets])
    base, _ = load_checkpoint(ckpt, "lenet5")
    for n in fitted_nets:
        assert any(not torch.equal(a, b) for a, b in zip(n.parameters(), base.parameters()))


def test_compare_on_a_local_cluster_equals_in_process(tmp_path, data_cfg):
    """``jobs=2``: the (guide, seed) fits run on a Dask ``LocalCluster`` of two worker processes,
    which load the network and the data themselves; every record equals the in-process run's
    (times aside) and comes in the same order."""
    import dataclasses

    from pyro_dirichlet_prune.inference.svi import SwitchConfig
    from pyro_dirichlet_prune.training import TrainConfig

    torch.set_num_threads(1)
    cfg = compare.CompareConfig(
        dataset=data_cfg.dataset, data_dir=str(data_cfg.data_dir) if data_cfg.data_dir else None,
        guides=["dirichlet", "delta"], seeds=[1], switch=SwitchConfig(batch_size=200, epochs=1), arch="5-10-50-13",
        finetune=TrainConfig(epochs=1, lr=2e-3, augment_shift=2), elbo_particles=2, elbo_batches=2,
        predictive_draws=2, val_size=data_cfg.val_size, max_train_examples=data_cfg.max_train)
    if data_cfg.dataset != "mnist":  # the shipped checkpoint is MNIST's; the fake data set takes its shapes
        cfg = dataclasses.replace(cfg, checkpoint=str(_fake_checkpoint(tmp_path)))
    one = compare.run_compare(cfg, tmp_path / "one")
    two = compare.run_compare(cfg, tmp_path / "two", jobs=2)

    def records(out):
        return [{k: v for k, v in r.items() if "seconds" not in k}
                for r in json.loads((out / "records.json").read_text())]

    assert [(r["guide"], r["seed"]) for r in records(tmp_path / "two")] == [("dirichlet", 1), ("delta", 1)]
    assert records(tmp_path / "two") == records(tmp_path / "one")
    t1, t2 = one["summary"]["table"], two["summary"]["table"]
    assert all(t2[g][k] == t1[g][k] for g in t1 for k in t1[g] if "seconds" not in k)


def _fake_checkpoint(tmp_path):
    path = tmp_path / "fake.pt"
    save_checkpoint(path, build_model("lenet5"), "lenet5", "fake-mnist", 10, (1, 28, 28))
    return path
