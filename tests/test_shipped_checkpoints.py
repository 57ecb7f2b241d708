"""Pre-trained checkpoints shipped in the package: they load with the widths and size their
training report records and, when the data set is available, reproduce the test error recorded
beside them (MNIST-like images zero-padded for the networks built for 32x32 inputs)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import pyro_dirichlet_prune.models as models
from pyro_dirichlet_prune.data import load_data
from pyro_dirichlet_prune.inputs import fit_to_network
from pyro_dirichlet_prune.metrics import count_macs, count_params
from pyro_dirichlet_prune.models.checkpoint import load_checkpoint, shipped_checkpoint
from pyro_dirichlet_prune.training import evaluate

SHIPPED = sorted((Path(models.__file__).parent / "checkpoints").glob("*.pt"))
TV_NAMES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def test_shipped_checkpoint_lookup():
    for path in SHIPPED:
        _, info = load_checkpoint(path)
        assert path.stem == f"{info['model']}-{info['dataset']}"
        assert shipped_checkpoint(info["model"], info["dataset"]) == path
    assert shipped_checkpoint("lenet5", "cifar10") is None


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_checkpoint_loads_with_its_recorded_size(path):
    net, info = load_checkpoint(path)
    report = json.loads(path.with_suffix(".json").read_text())
    widths = report["metrics"].get("widths") or list(models.default_widths(info["model"]))  # older reports
    assert list(net.widths) == widths == info["widths"]
    assert list(info["input_shape"]) == report["data"].get("input_shape", list(info["input_shape"]))
    assert report["config"]["model"] == info["model"] and report["config"]["dataset"] == info["dataset"]
    assert report["metrics"]["params"] == count_params(net)
    assert report["metrics"]["macs"] == count_macs(net, tuple(info["input_shape"]))
    assert info["meta"]["test_error"] == report["metrics"]["test"]["error"]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_checkpoint_reproduces_its_test_error(path, mnist_dir):
    net, info = load_checkpoint(path)
    report = json.loads(path.with_suffix(".json").read_text())
    tv = TV_NAMES.get(info["dataset"])
    if mnist_dir is None or tv is None or not (mnist_dir / tv / "raw").is_dir():
        pytest.skip(f"{info['dataset']} not available to re-evaluate {path.name}")
    data = fit_to_network(load_data(info["dataset"], mnist_dir, val_size=report["config"]["val_size"]),
                          info["input_shape"])
    err = evaluate(net, data.test)["error"]
    assert err == pytest.approx(report["metrics"]["test"]["error"], abs=2 / len(data.test))
    assert err < 0.15


def test_prune_vgg16_on_fashion_mnist_needs_nothing_but_the_data(mnist_dir, tmp_path):
    """``prune --model vgg16 --dataset fashion-mnist`` finds the shipped network (no checkpoint
    given), pads the 28x28 images to the 32x32 it was trained at, and starts from its recorded
    test error (a short run: 300 training examples, no fine-tuning)."""
    from pyro_dirichlet_prune import cli

    if mnist_dir is None or not (mnist_dir / "FashionMNIST" / "raw").is_dir():
        pytest.skip("Fashion-MNIST not available")
    out = tmp_path / "run"
    assert cli.main(["prune", "--model", "vgg16", "--dataset", "fashion-mnist", "--data-dir", str(mnist_dir),
                     "--max-train-examples", "300", "--val-size", "100", "--switch-epochs", "1",
                     "--switch-batch-size", "100", "--finetune-epochs", "0", "--rate", "0.5", "--no-latency",
                     "--threads", "1", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    shipped = json.loads(shipped_checkpoint("vgg16", "fashion-mnist").with_suffix(".json").read_text())
    assert report["base"]["test"]["error"] == pytest.approx(shipped["metrics"]["test"]["error"], abs=1e-4)
    assert report["base"]["macs"] == shipped["metrics"]["macs"]
    net, info = load_checkpoint(out / "pruned.pt", "vgg16")
    assert info["input_shape"] == [1, 32, 32]
    assert list(net.widths) == [max(1, round(w / 2)) for w in shipped["metrics"]["widths"]]
