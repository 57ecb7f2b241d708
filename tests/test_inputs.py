"""MNIST-like images into networks built for 32x32 inputs: zero padding (``inputs``), the
pre-training that pads to the model's size, pruning that pads to the checkpoint's, and training
in channels-last memory order (the default for those networks)."""
from __future__ import annotations

import json

import pytest
import torch

import pyro_dirichlet_prune.evaluation as evaluation
import pyro_dirichlet_prune.pipeline as pipeline
import pyro_dirichlet_prune.pretraining as pretraining
from helpers import tiny_data
from pyro_dirichlet_prune import cli
from pyro_dirichlet_prune.data import normalisation
from pyro_dirichlet_prune.evaluation import evaluate_checkpoint
from pyro_dirichlet_prune.inputs import fit_to_network, pad_images
from pyro_dirichlet_prune.models import build_model
from pyro_dirichlet_prune.models.checkpoint import load_checkpoint
from pyro_dirichlet_prune.training import finetune


@pytest.mark.parametrize("name,size", [("fake-mnist", 32), ("fake-cifar10", 37)])
def test_padding_is_raw_black_around_the_unchanged_image(name, size):
    data = tiny_data(name)
    padded = pad_images(data, size)
    c, h, w = data.input_shape
    assert padded.input_shape == (c, size, size)
    top, left = (size - h) // 2, (size - w) // 2
    for before, after in ((data.train, padded.train), (data.val, padded.val), (data.test, padded.test)):
        assert after.x.shape == (len(before), c, size, size)
        assert torch.equal(after.x[:, :, top:top + h, left:left + w], before.x)
        assert torch.equal(after.y, before.y)
        mean, std = normalisation(name)
        raw = after.x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
        border = torch.ones(size, size, dtype=torch.bool)
        border[top:top + h, left:left + w] = False
        assert raw[:, :, border].abs().max() < 1e-6  # pixel value 0 in every channel


def test_padding_refuses_a_smaller_size_and_fits_only_larger_networks():
    data = tiny_data("fake-mnist")
    with pytest.raises(ValueError, match="size 20 is smaller"):
        pad_images(data, 20)
    with pytest.raises(TypeError, match="size must be an int"):
        pad_images(data, 32.0)
    assert pad_images(data, 28) is data
    assert fit_to_network(data, (1, 28, 28)) is data
    assert fit_to_network(data, (1, 32, 32)).input_shape == (1, 32, 32)
    cifar = tiny_data("fake-cifar10")
    assert fit_to_network(cifar, (3, 28, 28)) is cifar  # the caller's shape check tells the mismatch


def test_channels_last_training_computes_what_the_usual_order_does():
    """Two SGD steps of a small VGG-16 with batch-norm in channels-last order end where the
    contiguous run ends (up to float rounding, which SGD amplifies over more steps), the weights
    are held channels-last while training, and the network comes back contiguous."""
    data = pad_images(tiny_data("fake-mnist"), 32)
    loader = [(data.train.x[i:i + 40], data.train.y[i:i + 40]) for i in range(0, 80, 40)]
    nets, layouts = [], []

    def watch(step):
        layouts.append(step.net.conv2.weight.is_contiguous(memory_format=torch.channels_last))

    for channels_last in (False, True):
        torch.manual_seed(0)
        net = build_model("vgg16", [4] * 13 + [8], 10, 1)
        finetune(net, loader, epochs=1, lr=0.05, optimizer="sgd", progress=False, channels_last=channels_last,
                 callback=watch)
        nets.append(net)
    assert layouts == [False] * 2 + [True] * 2
    for (name, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-4, rtol=1e-4), name
        assert b.is_contiguous(), name
    assert not torch.equal(nets[0].conv1.weight, build_model("vgg16", [4] * 13 + [8], 10, 1).conv1.weight)


def test_vgg16_pretrains_on_padded_mnist_like_data_and_prunes_from_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(pretraining, "load_data", tiny_data)
    monkeypatch.setattr(pipeline, "load_data", tiny_data)
    pre = tmp_path / "pre"
    assert cli.main(["pretrain", "--model", "vgg16", "--widths", "4-4-4-4-4-4-4-4-4-4-4-4-4-8",
                     "--dataset", "fake-mnist", "--epochs", "1", "--threads", "1", "--out", str(pre)]) == 0
    report = json.loads((pre / "report.json").read_text())
    assert report["data"]["input_shape"] == [1, 32, 32]
    assert report["config"]["train"]["channels_last"] is True
    _, info = load_checkpoint(pre / "model.pt", "vgg16")
    assert info["input_shape"] == [1, 32, 32]
    out = tmp_path / "run"
    assert cli.main(["prune", "--model", "vgg16", "--checkpoint", str(pre / "model.pt"), "--dataset", "fake-mnist",
                     "--rate", "0.5", "--finetune-epochs", "1", "--switch-epochs", "1", "--switch-batch-size", "40",
                     "--no-latency", "--threads", "1", "--out", str(out)]) == 0
    pruned, info = load_checkpoint(out / "pruned.pt", "vgg16")
    assert tuple(pruned.widths) == (2,) * 13 + (4,)
    assert info["input_shape"] == [1, 32, 32]
    monkeypatch.setattr(evaluation, "load_data", tiny_data)
    assert evaluate_checkpoint(out / "pruned.pt")["macs"] == report_macs(out)  # evaluate pads as prune did
    with pytest.raises(SystemExit):
        cli.main(["pretrain", "--model", "vgg16", "--image-size", "0", "--out", str(tmp_path / "x")])


def report_macs(out) -> int:
    return json.loads((out / "report.json").read_text())["finetuned"]["macs"]
