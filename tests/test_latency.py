"""``latency``: the bookkeeping of the measurement (cells, interleaving, threads and the global
random state left as they were), the speed-up table on hand numbers, the ordering of a network
that sleeps against one that does not, and the ``latency`` section of a prune report (no
thresholds on absolute times)."""
from __future__ import annotations

import functools
import json
import time

import pytest
import torch
from torch import nn

from pyro_dirichlet_prune import cli, latency, pipeline
from pyro_dirichlet_prune.latency import all_threads, latency_report, measure_latency, speedup_table

SHAPE = (1, 8, 8)
FAST = dict(repeats=3, warmup=1, cell_seconds=None)


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


class Sleeper(nn.Module):
    """Sleeps ``seconds`` per forward pass."""

    def __init__(self, seconds: float = 0.0, name: str = "") -> None:
        super().__init__()
        self.seconds, self.name = seconds, name
        self.lin = nn.Linear(8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.seconds:
            time.sleep(self.seconds)
        return self.lin(x.flatten(1))


def test_cells_cover_batches_and_threads():
    m = measure_latency({"a": _net(), "b": _net()}, SHAPE, batch_sizes=(1, 3), threads=(1, 2), **FAST)
    assert [(c["batch"], c["threads"]) for c in m["cells"]] == [(1, 1), (1, 2), (3, 1), (3, 2)]
    assert m["networks"] == ["a", "b"] and m["input_shape"] == list(SHAPE) and m["max_repeats"] == 3
    for c in m["cells"]:
        assert c["repeats"] == 3 and c["warmup"] == 1 and set(c["ms"]) == {"a", "b"}
        for s in c["ms"].values():
            assert 0 < s["p10"] <= s["median"] <= s["p90"]


def test_all_threads_and_repeated_counts_measured_once():
    m = measure_latency({"a": _net()}, SHAPE, batch_sizes=(2,), threads=(None, all_threads(), 1), **FAST)
    assert [c["threads"] for c in m["cells"]] == list(dict.fromkeys([all_threads(), 1]))
    assert m["all_threads"] == all_threads()


def test_rounds_are_interleaved_round_robin():
    log: list[str] = []

    class Logged(Sleeper):  # the networks are copied: the log lives on the class
        def forward(self, x):
            log.append(self.name)
            return super().forward(x)

    nets = {n: Logged(name=n) for n in "abc"}
    measure_latency(nets, SHAPE, batch_sizes=(1,), threads=(1,), repeats=3, warmup=0, cell_seconds=None)
    assert log == list("abc" "bca" "cab")


def test_cell_budget_bounds_repeats_and_records_them():
    m = measure_latency({"slow": Sleeper(0.02)}, SHAPE, batch_sizes=(1,), threads=(1,), repeats=1000, warmup=100,
                        cell_seconds=0.01)
    cell = m["cells"][0]
    assert cell["repeats"] == latency.MIN_REPEATS and cell["warmup"] == 1 and m["cell_seconds"] == 0.01


def test_threads_random_state_and_networks_left_as_they_were():
    torch.set_num_threads(1)
    net = _net().train()
    before_params = [p.clone() for p in net.parameters()]
    state = torch.get_rng_state()
    measure_latency({"a": net}, SHAPE, batch_sizes=(1,), threads=(2,), **FAST)
    assert torch.get_num_threads() == 1
    assert torch.equal(torch.get_rng_state(), state)
    assert net.training and all(torch.equal(a, b) for a, b in zip(before_params, net.parameters()))


def test_threads_restored_when_a_network_fails():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    torch.set_num_threads(1)
    with pytest.raises(RuntimeError, match="boom"):
        measure_latency({"a": Broken()}, SHAPE, threads=(2,), **FAST)
    assert torch.get_num_threads() == 1


def test_same_seed_same_inputs():
    seen = []

    class Record(nn.Module):  # copied by measure_latency: ``seen`` is a closure
        def forward(self, x):
            seen.append(x.clone())
            return x

    for _ in range(2):
        measure_latency({"a": Record()}, SHAPE, batch_sizes=(2,), threads=(1,), repeats=1, warmup=0, seed=5)
    assert torch.equal(seen[0], seen[1])


def test_sleeping_network_is_slower():
    m = measure_latency({"sleeps": Sleeper(0.005), "plain": Sleeper(0.0)}, SHAPE, batch_sizes=(1,), threads=(1,),
                        repeats=5, warmup=1)
    ms = m["cells"][0]["ms"]
    assert ms["sleeps"]["median"] > ms["plain"]["median"]
    row = speedup_table(m, 100, 100, base="sleeps", pruned="plain")[0]
    assert row["speedup"] > 1 and row["mac_reduction"] == 1


def test_speedup_table_on_hand_numbers():
    ms = lambda med: {"median": med, "p10": med / 2, "p90": med * 2}  # noqa: E731
    m = {"cells": [{"batch": 1, "threads": 1, "repeats": 7, "ms": {"base": ms(2.0), "pruned": ms(1.0)}},
                   {"batch": 256, "threads": 4, "repeats": 5, "ms": {"base": ms(30.0), "pruned": ms(20.0)}}]}
    rows = speedup_table(m, 300, 100)
    assert [(r["batch"], r["threads"], r["repeats"]) for r in rows] == [(1, 1, 7), (256, 4, 5)]
    assert rows[0]["speedup"] == pytest.approx(2.0) and rows[1]["speedup"] == pytest.approx(1.5)
    assert all(r["mac_reduction"] == pytest.approx(3.0) for r in rows)
    assert rows[0]["ratio"] == pytest.approx(2 / 3) and rows[1]["ratio"] == pytest.approx(0.5)
    assert rows[1]["base_ms"] == ms(30.0) and rows[1]["pruned_ms"] == ms(20.0)


@pytest.mark.parametrize("kwargs, name", [
    (dict(batch_sizes=(0,)), "batch_sizes"), (dict(threads=(-1,)), "threads"), (dict(repeats=0), "repeats"),
    (dict(warmup=-1), "warmup"), (dict(cell_seconds=0), "cell_seconds"), (dict(device="tpu"), "device"),
])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        measure_latency({"a": _net()}, SHAPE, **kwargs)


def test_bad_networks_shape_and_macs_are_named():
    with pytest.raises(TypeError, match="nets"):
        measure_latency({}, SHAPE)
    with pytest.raises(TypeError, match="nets"):
        measure_latency({"a": "not a module"}, SHAPE)
    with pytest.raises(ValueError, match="input_shape"):
        measure_latency({"a": _net()}, ())
    m = {"cells": [{"batch": 1, "threads": 1, "repeats": 1, "ms": {"base": {"median": 1.0}}}]}
    with pytest.raises(ValueError, match="macs_pruned"):
        speedup_table(m, 10, 0)
    with pytest.raises(ValueError, match="pruned"):
        speedup_table(m, 10, 5)


def test_latency_report_per_device():
    r = latency_report(_net(), _net(), SHAPE, 200, 100, batch_sizes=(1,), threads=(1,), **FAST)
    assert list(r) == ["cpu"] and r["cpu"]["macs"] == {"base": 200, "pruned": 100}
    assert r["cpu"]["cells"][0]["mac_reduction"] == 2


def test_prune_report_has_latency_and_no_latency_removes_it(tmp_path, monkeypatch, capsys):
    """A tiny prune run: ``report.json`` holds ``latency`` (CPU cells of batch 1 and 256 at one and
    all threads, speed-ups from the medians) and its time; ``--no-latency`` leaves both out and
    changes no other number."""
    monkeypatch.setattr(pipeline, "latency_report", functools.partial(latency_report, repeats=2, warmup=0))
    data = ["--dataset", "fake-mnist", "--val-size", "200", "--max-train-examples", "300", "--threads", "1"]
    assert cli.main(["pretrain", "--epochs", "1", "--batch-size", "100", *data, "--out", str(tmp_path / "base")]) == 0
    prune = ["prune", "--checkpoint", str(tmp_path / "base" / "model.pt"), "--rate", "0.5", "--switch-batch-size",
             "100", "--finetune-epochs", "0", *data]
    assert cli.main([*prune, "--out", str(tmp_path / "a")]) == 0
    assert "measured CPU speed-up, one thread" in capsys.readouterr().out
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    cpu = rep["latency"]["cpu"]
    cells = {(c["batch"], c["threads"]) for c in cpu["cells"]}
    assert cells == {(b, t) for b in (1, 256) for t in dict.fromkeys((1, all_threads()))}
    macs = rep["base"]["macs"] / rep["finetuned"]["macs"]
    for c in cpu["cells"]:
        assert c["repeats"] == 2 and c["warmup"] == 0 and c["mac_reduction"] == pytest.approx(macs)
        assert c["speedup"] == pytest.approx(c["base_ms"]["median"] / c["pruned_ms"]["median"])
        assert c["ratio"] == pytest.approx(c["speedup"] / macs)
    assert rep["timings_seconds"]["latency"] >= 0 and rep["config"]["latency"] is True

    assert cli.main([*prune, "--no-latency", "--out", str(tmp_path / "b")]) == 0
    assert "speed-up" not in capsys.readouterr().out
    rep_b = json.loads((tmp_path / "b" / "report.json").read_text())
    assert "latency" not in rep_b and "latency" not in rep_b["timings_seconds"]
    drop = {"latency", "created", "timings_seconds", "versions", "config", "switches"}
    assert {k: v for k, v in rep.items() if k not in drop} == {k: v for k, v in rep_b.items() if k not in drop}
    assert rep["switches"]["losses"] == rep_b["switches"]["losses"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_latency_report_on_the_gpu_too():
    r = latency_report(_net(), _net(), SHAPE, 200, 100, devices=("cpu", "cuda"), batch_sizes=(1,), threads=(1,),
                       **FAST)
    assert list(r) == ["cpu", "cuda"] and r["cuda"]["device"].startswith("cuda")
    assert [c["threads"] for c in r["cuda"]["cells"]] == [all_threads()]
