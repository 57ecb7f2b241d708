"""The sub-architecture search: its pools, the counting of wins and ties and the paired
statistics on hand-made records, and a search interrupted mid-way and resumed, which recomputes
nothing that was finished and ends with the records of an uninterrupted run."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import statistics
import time

import pytest
import torch

from helpers import ctrl_c_after_the_first
from pyro_dirichlet_prune import prune_step, search
from pyro_dirichlet_prune.cli import search as search_cli
from pyro_dirichlet_prune.data import Split, load_data
from pyro_dirichlet_prune.errors import UserError
from pyro_dirichlet_prune.models.checkpoint import shipped_checkpoint

WIDTHS = {"conv1": 10, "conv2": 20, "fc1": 100, "fc2": 25}
T_975_DF9 = 2.2621571627409915  # scipy.stats.t.ppf(0.975, 9)


# ----------------------------------------------------------------------------- pools


def test_lenet5_108_is_the_grid_in_lexicographic_order():
    pool = search.load_pool("lenet5-108", WIDTHS)
    assert len(pool) == 108 == len(set(pool))
    tuples = [tuple(map(int, a.split("-"))) for a in pool]
    assert tuples == sorted(tuples)
    assert {t[0] for t in tuples} == {4, 5, 6} and {t[1] for t in tuples} == {6, 7, 8}
    assert {t[2] for t in tuples} == {35, 40, 45, 50} and {t[3] for t in tuples} == {15, 17, 20}
    assert pool[0] == "4-6-35-15" and pool[1] == "4-6-35-17" and pool[-1] == "6-8-50-20"
    assert search.load_pool("lenet5-108", WIDTHS, every=5) == pool[::5]


def test_pool_file_parsing_and_errors(tmp_path):
    f = tmp_path / "pool.txt"
    f.write_text("# my pool\n6-8-40-20\n\n  4-6-35-15   # the smallest\n10-20-100-25\n")
    assert search.load_pool(str(f), WIDTHS) == ["6-8-40-20", "4-6-35-15", "10-20-100-25"]
    assert search.load_pool(str(f), WIDTHS, every=2) == ["6-8-40-20", "10-20-100-25"]
    for text, match in (("6-8-40-20\n\n6-x-40-20\n", "line 3"), ("# c\n11-8-40-20\n", "line 2.*conv1 has 10"),
                        ("6-8-40\n", "line 1.*3 widths"), ("6-8-40-20\n6-8-40-20\n", "line 2.*repeats line 1"),
                        ("# only comments\n\n", "no architecture")):
        f.write_text(text)
        with pytest.raises(UserError, match=match):
            search.load_pool(str(f), WIDTHS)
    with pytest.raises(UserError, match="neither a built-in pool"):
        search.load_pool(str(tmp_path / "missing.txt"), WIDTHS)
    # uniform rates: round(D (1 - r)) units of every layer, at least one
    assert search.load_pool("rates:0.5,0.3", WIDTHS) == ["5-10-50-13", "7-14-70-18"]
    assert search.load_pool("rates:0.95", WIDTHS) == ["1-1-5-1"]
    for spec, match in (("rates:", "comma-separated numbers"), ("rates:half", "comma-separated numbers"),
                        ("rates:1.0", "rate must be in"), ("rates:0.3,0.3", "rate 0.3 gives 7-14-70-18 again")):
        with pytest.raises(UserError, match=match):
            search.load_pool(spec, WIDTHS)
    with pytest.raises(UserError, match="pool lenet5-108 architecture 1: .*4 widths"):
        search.load_pool("lenet5-108", {"conv1": 20, "conv2": 50, "fc1": 500})  # LeNet-5-Caffe


# ----------------------------------------------------------------------------- summary on hand-made records


def _rec(method, arch, seed, err, macs=1000):
    return {"method": method, "arch": arch, "seed": seed, "test_error": err, "val_error": err, "test_error_pruned": 2 * err,
            "params": 10, "macs": macs, "seconds": 1.0}


def test_a_macs_pool_is_the_smallest_uniform_rate_that_reaches_each_factor():
    from pyro_dirichlet_prune.models.checkpoint import load_checkpoint
    from pyro_dirichlet_prune.pruning.budget import size_function
    from pyro_dirichlet_prune.pruning.cutoff import arch_string, rate_widths

    net, info = load_checkpoint(shipped_checkpoint("lenet5", "mnist"), "lenet5")
    size = size_function(net, info["input_shape"])

    def macs(kept):
        return size(kept)["macs"]

    base = macs(WIDTHS)
    archs = search.load_pool("macs:2,4", WIDTHS, macs=macs)
    for arch, factor in zip(archs, (2, 4)):
        first = next(k for k in range(1000) if macs(rate_widths(k / 1000, WIDTHS)) <= base / factor)
        assert arch == arch_string(rate_widths(first / 1000, WIDTHS)), (factor, first)
    assert len(archs) == 2 and archs[0] != archs[1]
    for spec, match in (("macs:1", "factors must be above 1"), ("macs:1e9", "no uniform rate reaches"),
                        ("macs:two", "comma-separated numbers")):
        with pytest.raises(UserError, match=match):
            search.load_pool(spec, WIDTHS, macs=macs)
    with pytest.raises(UserError, match="needs the network"):
        search.load_pool("macs:2", WIDTHS)


def test_a_search_takes_every_model_name_prune_takes(tmp_path):
    with pytest.raises(UserError, match="unknown model 'wrn-9'.*wrn-<depth>-<widen>"):
        search.run_search(search.SearchConfig(model="wrn-9"), tmp_path / "a")
    # a wide residual network's name is known: the search goes on to look for its checkpoint
    with pytest.raises(UserError, match="no pre-trained wrn-16-1 for mnist ships with the package"):
        search.run_search(search.SearchConfig(model="wrn-16-1"), tmp_path / "b")


def test_wins_and_ties():
    errs = {  # arch -> method -> errors of seeds 0, 1
        "x": {"a": [0.01, 0.01], "b": [0.02, 0.02], "c": [0.03, 0.03]},  # a wins
        "y": {"a": [0.01, 0.03], "b": [0.02, 0.02], "c": [0.05, 0.05]},  # a and b tie (means equal up to rounding)
        "z": {"a": [0.04, 0.04], "b": [0.04, 0.04], "c": [0.04, 0.04]},  # all tie
    }
    records = [_rec(m, a, s, e) for a, row in errs.items() for m, es in row.items() for s, e in enumerate(es)]
    s = search.summarize(records, ["a", "b", "c"], ["x", "y", "z"])
    assert [r["winners"] for r in s["per_arch"]] == [["a"], ["a", "b"], ["a", "b", "c"]]
    assert s["wins"] == {"a": 1, "b": 0, "c": 0}
    assert s["ties"] == {"a": 2, "b": 2, "c": 1}
    assert s["per_arch"][1]["test_error"]["a"] == pytest.approx(0.02)
    assert s["best_baseline"] is None and s["comparisons_vs_best_baseline"] == {}
    assert "**" in search.summary_markdown(s)


def test_paired_comparison_with_the_best_baseline():
    archs = [f"{i}-1-1-1" for i in range(10)]
    l1 = {a: 0.02 + 0.001 * i for i, a in enumerate(archs)}
    dirichlet = {a: l1[a] - 0.002 if i < 8 else l1[a] + 0.001 for i, a in enumerate(archs)}  # better on 8 of 10
    records = ([_rec("l1", a, 0, e) for a, e in l1.items()] + [_rec("random", a, 0, 0.05) for a in archs]
               + [_rec("dirichlet", a, 0, e) for a, e in dirichlet.items()])
    s = search.summarize(records, ["dirichlet", "l1", "random"], archs)
    assert s["best_baseline"] == "l1"  # dirichlet is lower but is no baseline
    assert s["wins"] == {"dirichlet": 8, "l1": 2, "random": 0}
    c = s["comparisons_vs_best_baseline"]["dirichlet"]
    assert (c["better"], c["worse"], c["ties"], c["archs"]) == (8, 2, 0, 10)
    assert c["sign_test_p"] == pytest.approx(2 * (45 + 10 + 1) / 1024)  # 2·P(X >= 8), X ~ Bin(10, 1/2)
    d = [dirichlet[a] - l1[a] for a in archs]
    half = T_975_DF9 * statistics.stdev(d) / math.sqrt(10)
    assert c["mean_diff"] == pytest.approx(-0.0014)
    assert c["ci95"] == pytest.approx([statistics.mean(d) - half, statistics.mean(d) + half])
    r = s["comparisons_vs_best_baseline"]["random"]
    assert (r["better"], r["worse"]) == (0, 10) and r["sign_test_p"] == pytest.approx(2 / 1024)
    assert "l1" not in s["comparisons_vs_best_baseline"]


def test_greedy_elimination_is_a_baseline_the_rankings_are_compared_with():
    """The greedy ranking (what the frozen decision cut-off amounts to) counts as a baseline: the
    best of them is the one the Dirichlet rankings are paired with, and a search runs it by default."""
    archs = [f"{i}-1-1-1" for i in range(4)]
    records = ([_rec("l1", a, 0, 0.03) for a in archs] + [_rec("greedy", a, 0, 0.02) for a in archs]
               + [_rec("dirichlet", a, 0, 0.025) for a in archs])
    s = search.summarize(records, ["dirichlet", "l1", "greedy"], archs)
    assert s["best_baseline"] == "greedy"
    assert s["comparisons_vs_best_baseline"]["dirichlet"]["worse"] == 4
    assert "greedy" in search.METHODS


T_975_DF5 = 2.5705818366147395  # scipy.stats.t.ppf(0.975, 5)


def test_few_architectures_are_compared_paired_by_seed():
    """With a pool of two architectures (``macs:2,4``) the comparison pairs a method's record with
    the baseline's of the same architecture and seed; each architecture has its own best baseline
    and every method its mean ± sd over the seeds."""
    errs = {  # arch -> method -> errors of seeds 0, 1, 2
        "a2": {"dirichlet": [0.060, 0.061, 0.066], "l1": [0.062, 0.063, 0.064], "fisher": [0.070, 0.070, 0.071]},
        "a4": {"dirichlet": [0.070, 0.071, 0.069], "l1": [0.080, 0.081, 0.079], "fisher": [0.075, 0.074, 0.076]},
    }
    records = [_rec(m, a, s, e) for a, row in errs.items() for m, es in row.items() for s, e in enumerate(es)]
    s = search.summarize(records, ["dirichlet", "l1", "fisher"], ["a2", "a4"])
    assert s["per_arch"][0]["test_error_sd"]["dirichlet"] == pytest.approx(statistics.stdev([0.060, 0.061, 0.066]))
    assert s["best_baseline"] == "l1"  # 7.15% over both architectures, fisher 7.27%
    c = s["paired_by_seed"]["dirichlet"]
    d = [-0.002, -0.002, 0.002, -0.010, -0.010, -0.010]
    half = T_975_DF5 * statistics.stdev(d) / math.sqrt(6)
    assert (c["pairs"], c["better"], c["worse"], c["ties"]) == (6, 5, 1, 0)
    assert c["mean_diff"] == pytest.approx(statistics.mean(d))
    assert c["ci95"] == pytest.approx([statistics.mean(d) - half, statistics.mean(d) + half])
    assert c["sign_test_p"] == pytest.approx(2 * 7 / 64)  # 2·P(X >= 5), X ~ Bin(6, 1/2)
    # the paired-by-architecture comparison has two pairs only, and says so
    assert s["comparisons_vs_best_baseline"]["dirichlet"]["archs"] == 2
    per = s["paired_by_seed_per_arch"]
    assert (per["a2"]["best_baseline"], per["a4"]["best_baseline"]) == ("l1", "fisher")
    c4 = per["a4"]["comparisons"]["dirichlet"]
    assert (c4["pairs"], c4["better"], c4["mean_diff"]) == (3, 3, pytest.approx(-0.005))
    assert set(per["a4"]["comparisons"]) == {"dirichlet", "l1"}
    md = search.summary_markdown(s)
    assert "| a4 | 1000 | dirichlet | 3 | 7.00 ± 0.10 | -0.500 |" in md
    assert "| a4 | 1000 | fisher | 3 | 7.50 ± 0.10 | best baseline | | | |" in md
    # the one-paragraph account quotes the six seed pairs, not the two architecture means
    report = {"summary": s, "archs": 2, "config": {"seeds": [0, 1, 2]}, "records": len(records),
              "records_computed_now": 0, "timings_seconds": {"wall_this_invocation": 1.0}}
    text = search.describe(report, "out")
    assert "Paired by seed: dirichlet - l1: -0.533 pp" in text
    assert "better on 5, worse on 1 (architecture, seed) pairs, sign test p=0.219" in text


def test_sign_test_leaves_ties_out():
    c = search.paired_comparison([0.01] * 8 + [0.03, 0.02], [0.02] * 10)
    assert (c["better"], c["worse"], c["ties"]) == (8, 1, 1)
    assert c["sign_test_p"] == pytest.approx(2 * (9 + 1) / 512)  # Bin(9, 1/2)
    same = search.paired_comparison([0.02, 0.02], [0.02, 0.02])
    assert same["sign_test_p"] == 1.0 and same["ci95"] == [0.0, 0.0]


# ----------------------------------------------------------------------------- options


def test_switch_overrides_are_checked():
    search.SearchConfig(switch={"scale": "simplex", "schedule": "sequential"}).validate()
    for bad, match in (({"guide": "normal"}, "set by the search"), ({"bogus": 1}, "unknown switch settings bogus"),
                       ({"scale": "nope"}, "switch scale")):
        with pytest.raises(UserError, match=match):
            search.SearchConfig(switch=bad).validate()
    with pytest.raises(UserError, match="methods"):
        search.SearchConfig(methods=["l1", "taylor"]).validate()


def _parser(sub: list | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dirichlet-prune")
    p = search_cli.add_search_parser(parser.add_subparsers(dest="command"))
    if sub is not None:
        sub.append(p)
    return parser


def test_cli_option_parsing():
    assert search_cli.parse_seeds("3") == [0, 1, 2]
    assert search_cli.parse_seeds("5,") == [5] and search_cli.parse_seeds("0,4,7") == [0, 4, 7]
    for bad in ("0", "a", "1,1", "-1,2"):
        with pytest.raises(argparse.ArgumentTypeError):
            search_cli.parse_seeds(bad)
    args = _parser().parse_args(["search", "--out", "x"])
    assert args.methods == list(search.METHODS) and args.seeds == [0, 1, 2] and args.finetune_epochs == 2
    assert args.pool == "lenet5-108" and args.every == 1 and args.switch_scale is None
    cfg = search_cli.search_config_from_args(_parser().parse_args(
        ["search", "--out", "x", "--switch-scale", "simplex", "--methods", "dirichlet,l1", "--seeds", "2,"]))
    assert cfg.switch == {"scale": "simplex"} and cfg.methods == ["dirichlet", "l1"] and cfg.seeds == [2]
    with pytest.raises(SystemExit):
        _parser().parse_args(["search", "--out", "x", "--methods", "l1,taylor"])
    sub: list = []
    _parser(sub)
    text = sub[0].format_help()
    for opt in ("--pool", "--every", "--finetune-epochs", "--switch-scale", "--schedule", "--fisher-batches",
                "--resume", "--overwrite", "--seeds", "--jobs"):
        assert opt in text


# ----------------------------------------------------------------------------- interrupted and resumed


@pytest.fixture(scope="module")
def small_data(data_cfg):
    """The suite's data set with the test split cut to 1000 examples (loaded once)."""
    data = load_data(data_cfg.dataset, data_cfg.data_dir, data_cfg.val_size, 0)
    data = dataclasses.replace(data, test=Split(data.test.x[:1000], data.test.y[:1000]))
    n = data_cfg.max_train
    return dataclasses.replace(data, train=Split(data.train.x[:n], data.train.y[:n]))


def _tiny_config(tmp_path, data_cfg):
    pool = tmp_path / "pool.txt"
    pool.write_text("6-8-40-20\n4-6-35-15\n")
    cfg = search.SearchConfig(
        dataset=data_cfg.dataset, data_dir=str(data_cfg.data_dir) if data_cfg.data_dir else None,
        checkpoint=str(shipped_checkpoint("lenet5", "mnist")), pool=str(pool), methods=["dirichlet", "l1", "random"],
        seeds=[0], finetune_epochs=1, val_size=data_cfg.val_size, max_train_examples=data_cfg.max_train)
    return cfg, pool


@pytest.fixture
def tiny_search(tmp_path, monkeypatch, small_data, data_cfg):
    """A 6-record search on the module's data (loaded once, test split cut), in this process."""
    monkeypatch.setattr(search.runner, "_load_data", lambda cfg, shape: small_data)
    return _tiny_config(tmp_path, data_cfg)


@pytest.fixture
def worker_search(tmp_path, data_cfg):
    """The same search as ``tiny_search``, with the data each worker process loads itself."""
    return _tiny_config(tmp_path, data_cfg)[0]


def _count(monkeypatch, fail_at: int | None = None) -> dict[str, int]:
    calls = {"finetune": 0, "rank": 0}
    finetune, rank = prune_step.train, search.method_scores

    def counting_finetune(net, data, cfg, **kwargs):
        calls["finetune"] += 1
        if calls["finetune"] == fail_at:
            raise RuntimeError("killed during fine-tuning")
        return finetune(net, data, cfg, **kwargs)

    def counting_rank(*args, **kwargs):
        calls["rank"] += 1
        return rank(*args, **kwargs)

    monkeypatch.setattr(prune_step, "train", counting_finetune)  # the fine-tuning of prune_and_finetune
    monkeypatch.setattr(search.runner, "method_scores", counting_rank)
    return calls


def _records(out) -> dict[str, dict]:
    return {search.record_key(r["method"], r["seed"], r["arch"]): {k: v for k, v in r.items() if k != "seconds"}
            for r in search.load_records(out)}


def test_finetune_overrides_are_checked_and_reach_every_record(tiny_search, tmp_path, monkeypatch):
    """``finetune`` (``--finetune-config``) replaces the brief Adam fine-tune's settings, say by a
    VGG-16's SGD recipe; the epochs and the seed stay the search's."""
    cfg = search.SearchConfig(finetune={"optimizer": "sgd", "lr": 0.01, "weight_decay": 5e-4}, finetune_epochs=3)
    tcfg = cfg.train_config(7)
    assert (tcfg.optimizer, tcfg.lr, tcfg.weight_decay, tcfg.epochs, tcfg.seed) == ("sgd", 0.01, 5e-4, 3, 7)
    assert tcfg.augment_shift == search.AUGMENT_SHIFT
    plain = search.SearchConfig().train_config(0)
    assert (plain.optimizer, plain.lr, plain.epochs) == ("adam", search.FINETUNE_LR, search.DEFAULT_FINETUNE_EPOCHS)
    for bad, match in (({"epochs": 5}, "finetune settings epochs are set by the search"),
                       ({"bogus": 1}, "unknown finetune settings bogus"),
                       ({"optimizer": "rmsprop"}, "finetune: unknown optimizer 'rmsprop'")):
        with pytest.raises(UserError, match=match):
            search.SearchConfig(finetune=bad).validate()
    args = _parser().parse_args(["search", "--out", "x", "--finetune-config", '{"optimizer": "sgd", "lr": 0.01}'])
    assert search_cli.search_config_from_args(args).finetune == {"optimizer": "sgd", "lr": 0.01}
    for bad in ("[1]", "{lr: 1}"):
        with pytest.raises(SystemExit):
            _parser().parse_args(["search", "--out", "x", "--finetune-config", bad])

    torch.set_num_threads(1)
    tiny, _ = tiny_search
    seen = []
    finetune = prune_step.train

    def spy(net, data, tc, **kwargs):
        seen.append(tc)
        return finetune(net, data, tc, **kwargs)

    monkeypatch.setattr(prune_step, "train", spy)
    out = tmp_path / "sgd"
    search.run_search(dataclasses.replace(tiny, methods=["l1"], finetune={"optimizer": "sgd", "lr": 0.01}), out)
    assert len(seen) == 2 and all(t.optimizer == "sgd" and t.lr == 0.01 and t.epochs == tiny.finetune_epochs
                                  for t in seen)
    assert json.loads((out / "config.json").read_text())["config"]["finetune"] == {"optimizer": "sgd", "lr": 0.01}


def test_interrupted_search_resumes_without_recomputing(tiny_search, tmp_path, monkeypatch, data_cfg, capsys):
    torch.set_num_threads(1)
    cfg, pool = tiny_search
    out = tmp_path / "search"
    calls = _count(monkeypatch, fail_at=2)
    with pytest.raises(RuntimeError, match="killed"):
        search.run_search(cfg, out)
    # the failure stops the search; a job that had started beside it is cancelled, not written
    assert calls["rank"] >= 1 and calls["finetune"] in (2, 3)  # Dask orders the ready jobs
    written = list((out / "records").glob("*.json"))
    assert len(written) == 1
    first = written[0]
    kept_bytes = first.read_bytes()
    stored = len(list((out / "scores").glob("*.json")))  # the rankings that came back before the failure
    assert stored >= 1
    assert not (out / "report.json").exists()

    with pytest.raises(UserError, match="interrupted search.*resume=True"):
        search.run_search(cfg, out)
    with pytest.raises(UserError, match="differs in finetune_epochs, switch.scale"):
        search.run_search(dataclasses.replace(cfg, finetune_epochs=0, switch={"scale": "simplex"}), out, resume=True)
    with pytest.raises(UserError, match="exclude each other"):
        search.run_search(cfg, out, overwrite=True, resume=True)

    calls = _count(monkeypatch)
    report = search.run_search(cfg, out, resume=True)
    assert calls == {"finetune": 5, "rank": 3 - stored}  # the finished record and the stored rankings are reused
    assert first.read_bytes() == kept_bytes
    assert report["records"] == 6 and report["records_computed_now"] == 5 and report["records_resumed"] == 1
    for name in ("summary.json", "summary.md", "report.json", "config.json"):
        assert (out / name).is_file()
    with pytest.raises(UserError, match="finished search"):
        search.run_search(cfg, out, resume=True)

    # the same search uninterrupted, through the command line
    ref = tmp_path / "reference"
    calls = _count(monkeypatch)
    argv = ["search", "--dataset", cfg.dataset, "--val-size", str(cfg.val_size), "--max-train-examples",
            str(cfg.max_train_examples), "--checkpoint", cfg.checkpoint, "--pool", str(pool),
            "--methods", "dirichlet,l1,random", "--seeds", "0,", "--finetune-epochs", "1", "--out", str(ref)]
    if cfg.data_dir:
        argv += ["--data-dir", cfg.data_dir]
    ref_report = search_cli.run_search_cli(_parser().parse_args(argv))
    assert "Wins:" in capsys.readouterr().out
    assert calls == {"finetune": 6, "rank": 3}
    assert _records(out) == _records(ref) and len(_records(ref)) == 6
    resumed_summary = json.loads((out / "summary.json").read_text())
    assert resumed_summary["per_arch"] == ref_report["summary"]["per_arch"]
    assert resumed_summary["wins"] == ref_report["summary"]["wins"]
    rec = _records(ref)["l1__seed0__4-6-35-15"]
    assert rec["params"] < rec["macs"] and rec["surgery_max_abs_diff"] < 1e-4
    assert [len(v) for v in rec["kept"].values()] == [4, 6, 35, 15]


def test_local_cluster_search_writes_the_same_records(worker_search, tmp_path):
    """``jobs=2`` runs the rankings and records on a Dask ``LocalCluster`` of two worker
    processes, one torch thread each, which load the data themselves; every record (errors,
    sizes, kept units) equals the in-process search's, and a resumed search recomputes nothing."""
    torch.set_num_threads(1)
    cfg = worker_search
    serial = search.run_search(cfg, tmp_path / "serial")
    parallel = search.run_search(cfg, tmp_path / "parallel", jobs=2)
    assert len(_records(tmp_path / "parallel")) == 6
    assert _records(tmp_path / "parallel") == _records(tmp_path / "serial")
    assert parallel["summary"]["wins"] == serial["summary"]["wins"]
    assert parallel["records_computed_now"] == 6 and parallel["rankings_computed_now"] == 3
    assert parallel["runner"] == {"jobs": 2, "scheduler": None, "workers": 2}
    assert serial["runner"] == {"jobs": 1, "scheduler": None, "workers": 1}
    with pytest.raises(UserError, match="finished search"):
        search.run_search(cfg, tmp_path / "parallel", resume=True, jobs=2)
    with pytest.raises(UserError, match="jobs must be a positive integer"):
        search.run_search(cfg, tmp_path / "bad", jobs=0)
    with pytest.raises(UserError, match="give jobs or scheduler, not both"):
        search.run_search(cfg, tmp_path / "bad", jobs=2, scheduler="tcp://h:1")


def test_an_unreachable_scheduler_is_the_users_error(worker_search, tmp_path, monkeypatch, capsys):
    from pyro_dirichlet_prune import cli, jobs

    monkeypatch.setattr(jobs, "CONNECT_TIMEOUT", 2)
    with pytest.raises(UserError, match="scheduler 'tcp://127.0.0.1:9': no Dask scheduler answered within 2 s"):
        search.run_search(worker_search, tmp_path / "s", scheduler="tcp://127.0.0.1:9")
    argv = ["search", "--out", str(tmp_path / "c"), "--pool", worker_search.pool, "--methods", "l1", "--seeds", "0,",
            "--checkpoint", worker_search.checkpoint, "--dataset", worker_search.dataset, "--jobs", "2",
            "--scheduler", "tcp://127.0.0.1:9"]
    if worker_search.data_dir:
        argv += ["--data-dir", worker_search.data_dir]
    assert cli.main(argv) == 2
    assert "give jobs or scheduler, not both: 2 jobs start a local cluster" in capsys.readouterr().err


def test_a_worker_killed_mid_job_loses_no_record(worker_search, tmp_path):
    """A worker process of the cluster killed (SIGKILL) while it runs a job: Dask runs the job
    again on another worker, and the search ends with every record, equal to an undisturbed
    in-process search's."""
    import threading

    from distributed import Client, LocalCluster

    torch.set_num_threads(1)
    cfg = dataclasses.replace(worker_search, methods=["l1", "random"], finetune_epochs=2)
    reference = search.run_search(cfg, tmp_path / "reference")
    killed: list[int] = []

    def kill_a_busy_worker(client) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            busy = [w for w, tasks in client.processing().items() if any("_record_job" in t for t in tasks)]
            if busy:
                pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        killer = threading.Thread(target=kill_a_busy_worker, args=(client,))
        killer.start()
        report = search.run_search(cfg, tmp_path / "killed", client=client)
        killer.join()
    assert killed, "no worker was busy with a record to kill"
    assert report["records"] == 4 and report["records_computed_now"] == 4
    assert _records(tmp_path / "killed") == _records(tmp_path / "reference")
    assert report["summary"]["wins"] == reference["summary"]["wins"]


def test_ctrl_c_keeps_the_search_for_resume(tiny_search, tmp_path, monkeypatch, capsys):
    """Ctrl-C during a search through the command line: one line saying that the finished
    records are kept in --out and that the same command with --resume continues; an interrupted
    folder refused without --resume in the command line's words (the library names the
    argument); the resumed search recomputes nothing that was finished."""
    from pyro_dirichlet_prune import cli

    torch.set_num_threads(1)
    cfg, pool = tiny_search
    out = tmp_path / "search"
    argv = ["search", "--dataset", cfg.dataset, "--val-size", str(cfg.val_size), "--checkpoint", cfg.checkpoint,
            "--pool", str(pool), "--methods", "l1", "--seeds", "0,", "--finetune-epochs", "0", "--out", str(out)]
    from pyro_dirichlet_prune import jobs

    real, calls, real_collect = search.runner.run_record, [], jobs.collect

    def slow(*args, **kwargs):  # the second record is still being computed when Ctrl-C lands
        calls.append(args[3])
        if len(calls) == 2:
            time.sleep(3.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs, "collect", ctrl_c_after_the_first(real_collect, calls, lambda label: label[0] == "record"))
    monkeypatch.setattr(search.runner, "run_record", slow)
    assert cli.main(argv) == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dirichlet-prune: interrupted; "), lines
    assert f"kept in {out}" in lines[0] and "same command with --resume" in lines[0], lines[0]
    first, second = calls  # Dask may run either architecture first
    assert {first, second} == {"6-8-40-20", "4-6-35-15"}
    assert [r["arch"] for r in search.load_records(out)] == [first]

    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "interrupted search; pass --resume to continue it or --overwrite to start over" in err, err
    with pytest.raises(UserError, match="pass resume=True to continue it or overwrite=True to start over"):
        search.run_search(dataclasses.replace(cfg, methods=["l1"], finetune_epochs=0), out)

    assert cli.main(argv + ["--resume"]) == 0
    assert calls == [first, second, second]  # the finished record is not recomputed
    assert "Wins:" in capsys.readouterr().out
