"""``prune --model-file``: a user's whole pickled network pruned end to end on CIFAR-shaped
FakeData (discovered layers, the report, the pickled pruned network that ``evaluate
--allow-pickle`` reads), and every bad input refused with one line, exit 2 and no output."""
from __future__ import annotations

import functools
import importlib
import json
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

from helpers import TinyUserCNN
from pyro_dirichlet_prune import cli, evaluation, pipeline
from pyro_dirichlet_prune.data import load_data
from pyro_dirichlet_prune.errors import UserError
from pyro_dirichlet_prune.metrics import count_macs, count_params
from pyro_dirichlet_prune.models import build_model
from pyro_dirichlet_prune.models.discovery import NOT_NAMED
from pyro_dirichlet_prune.models.checkpoint import load_model_file, save_checkpoint
from test_cli_errors import _no_output, _user_error

CIFAR = (3, 32, 32)
DATA = ["--dataset", "fake-cifar10", "--val-size", "100", "--max-train-examples", "200"]


@functools.lru_cache(maxsize=None)
def _small_data(name, data_dir=None, val_size=5000, seed=0, download=True):
    return load_data(name, data_dir, min(val_size, 100), seed, download, fake_sizes=(300, 100))


@pytest.fixture(autouse=True)
def small_data(monkeypatch):
    """FakeData of 300 training and 100 test images (generating the default 2500 takes seconds)."""
    monkeypatch.setattr(pipeline, "load_data", _small_data)
    monkeypatch.setattr(evaluation, "load_data", _small_data)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("user")
    torch.manual_seed(0)
    torch.save(TinyUserCNN(), d / "tiny.pt")
    torch.save(TinyUserCNN().state_dict(), d / "state_dict.pt")
    torch.save(TinyUserCNN(classes=5), d / "five_classes.pt")
    torch.save(TinyUserCNN(in_channels=1), d / "grey.pt")
    with warnings.catch_warnings():  # torch.jit is deprecated, but such files exist
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(nn.Linear(3, 2)), d / "scripted.pt")
    save_checkpoint(d / "lenet5.pt", build_model("lenet5"), "lenet5", "mnist", 10, (1, 28, 28))
    return d


def _prune(model_file, out, *extra):
    return ["prune", "--model-file", str(model_file), *DATA, "--switch-epochs", "1", "--switch-batch-size", "100",
            "--finetune-epochs", "0", "--threads", "1", *extra, "--out", str(out)]


def test_prune_a_user_model_end_to_end(model_files, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_prune(model_files / "tiny.pt", out, "--input-shape", "3,32,32", "--rate", "0.5")) == 0
    report = json.loads((out / "report.json").read_text())
    assert [p["name"] for p in report["switch_points"]] == ["features.0", "features.4", "head.1"]
    assert [p["hooked"] for p in report["switch_points"]] == ["features.1", "features.4", "head.1"]
    assert report["left_out_layers"] == [{"layer": "head.3", "reason": "produces the network output"}]
    assert "left out of switching: head.3 (produces the network output)" in capsys.readouterr().out
    assert report["architecture"] == {"base": "6-8-16", "pruned": "3-4-8", "cutoff": "rate"}
    assert report["config"]["model"] is None and report["config"]["model_file"].endswith("tiny.pt")
    assert report["checks"]["surgery_max_abs_diff_vs_masked"] < 1e-4
    # CIFAR defaults for fine-tuning a user network: SGD, crop and flip
    ft = report["config"]["finetune"]
    assert (ft["optimizer"], ft["lr"], ft["augment_crop"], ft["augment_flip"], ft["augment_shift"]) == ("sgd", 0.01, 4, True, 0)

    pruned, info = load_model_file(out / "pruned.pt")
    assert isinstance(pruned, TinyUserCNN) and info["layers"] == ["features.0", "features.4", "head.1"]
    assert (pruned.features[0].out_channels, pruned.features[1].num_features, pruned.features[4].in_channels) == (3, 3, 3)
    assert report["finetuned"]["params"] == count_params(pruned) < report["base"]["params"] == count_params(TinyUserCNN())
    assert report["finetuned"]["macs"] == count_macs(pruned, CIFAR)
    capsys.readouterr()

    # evaluate reads it only when told that unpickling is fine
    _user_error(capsys, ["evaluate", str(out / "pruned.pt")], "--allow-pickle")
    assert cli.main(["evaluate", str(out / "pruned.pt"), "--allow-pickle"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["arch"] == "3-4-8" and result["model"] == "user" and result["dataset"] == "fake-cifar10"
    assert result["test"]["error"] == report["finetuned"]["test"]["error"]
    # a bare torch.save(model) file too, given its data set
    assert cli.main(["evaluate", str(model_files / "tiny.pt"), "--allow-pickle", "--dataset", "fake-cifar10"]) == 0
    assert json.loads(capsys.readouterr().out)["arch"] == "6-8-16"
    # ... which the library reads the same way, and which names no data set
    lib = evaluation.evaluate_checkpoint(out / "pruned.pt", allow_pickle=True)
    assert lib == dict(result, checkpoint=str(out / "pruned.pt"))
    with pytest.raises(UserError, match="does not say which data set it takes; give dataset=NAME"):
        evaluation.evaluate_checkpoint(model_files / "tiny.pt", allow_pickle=True)
    _user_error(capsys, ["evaluate", str(model_files / "tiny.pt"), "--allow-pickle"], "give --dataset NAME")


def test_prune_named_layers_of_a_user_model(model_files, tmp_path):
    out = tmp_path / "run"
    assert cli.main(_prune(model_files / "tiny.pt", out, "--layers", "head.1,features.4", "--arch", "5-9")) == 0
    report = json.loads((out / "report.json").read_text())
    assert [p["name"] for p in report["switch_points"]] == ["features.4", "head.1"]
    assert report["left_out_layers"] == [{"layer": "features.0", "reason": NOT_NAMED},
                                         {"layer": "head.3", "reason": "produces the network output"}]
    assert report["architecture"]["pruned"] == "5-9"


@pytest.mark.parametrize("file,extra,match", [
    ("missing.pt", [], "does not exist"),
    ("state_dict.pt", [], "not a torch.nn.Module (a state dict?"),
    ("lenet5.pt", [], "a pyro-dirichlet-prune checkpoint"),
    ("scripted.pt", [], "TorchScript"),
    ("tiny.pt", ["--input-shape", "3,x,32"], "--input-shape must be positive integers"),
    ("tiny.pt", ["--input-shape", "0,32,32"], "--input-shape must be positive integers"),
    ("tiny.pt", ["--input-shape", "1,28,28"], "does not match fake-cifar10"),
    ("grey.pt", [], "does not run on inputs of shape (2, 3, 32, 32)"),
    ("five_classes.pt", [], "expected (2, 10) class scores"),
    ("tiny.pt", ["--layers", "features.9"], "no layer named 'features.9'"),
    ("tiny.pt", ["--layers", "head.3"], "cannot be pruned on its own: produces the network output"),
    ("tiny.pt", ["--layers", "features.1"], "not a Conv2d or Linear"),
    ("tiny.pt", ["--checkpoint", "x.pt"], "replaces --model and --checkpoint"),
    ("tiny.pt", ["--model", "vgg16"], "replaces --model and --checkpoint"),
])
def test_bad_user_model_inputs(model_files, tmp_path, capsys, file, extra, match):
    out = tmp_path / "run"
    _user_error(capsys, _prune(model_files / file, out, "--rate", "0.5", *extra), match)
    _no_output(out)


def test_bad_options_of_registered_models(model_files, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["prune", "--checkpoint", str(model_files / "lenet5.pt"), "--dataset", "fake-mnist", "--rate", "0.5",
            "--out", str(out)]
    _user_error(capsys, base + ["--layers", "conv9"], "choose distinct layers among conv1, conv2, fc1, fc2")
    _user_error(capsys, base + ["--input-shape", "1,28,28"], "--input-shape goes with --model-file")
    _user_error(capsys, ["pretrain", "--model", "wrn-15-2", "--out", str(out)], "6n + 4")
    _user_error(capsys, ["pretrain", "--model", "vgg16", "--widths", "1-2", "--out", str(out)], "needs 14 positive widths")
    _user_error(capsys, ["pretrain", "--model", "vgg16", "--widths", "4-4", "--width-multiplier", "0.5",
                         "--out", str(out)], "not both")
    _no_output(out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA")
def test_cuda_without_a_gpu_is_refused(model_files, tmp_path, capsys):
    out = tmp_path / "run"
    _user_error(capsys, _prune(model_files / "tiny.pt", out, "--rate", "0.5", "--device", "cuda"), "CUDA is not available")
    _user_error(capsys, ["pretrain", "--model", "vgg16", "--dataset", "fake-cifar10", "--device", "cuda",
                         "--out", str(out)], "CUDA is not available")
    _user_error(capsys, ["pretrain", "--dataset", "fake-mnist", "--device", "tpu", "--out", str(out)], "device")
    _no_output(out)


# ----------------------------------------------------------------------------- classes that cannot be imported


def _save_from_module(folder, module, source, monkeypatch):
    """Write ``module``.py into ``folder``, import it, save a ``Net`` of it whole with
    ``torch.save``; afterwards the module is no longer imported."""
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(folder))
    importlib.invalidate_caches()
    net = importlib.import_module(module).Net()
    torch.save(net, folder / "net.pt")
    del sys.modules[module]
    return folder / "net.pt"


NET = """
    import torch
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)
        def forward(self, x):
            return self.fc(x.flatten(1))
"""


def test_a_class_that_cannot_be_imported_is_named(tmp_path, monkeypatch, capsys):
    """A pickled network whose module is not on the path: a ``UserError`` that names the class,
    says it must be importable and how to make it so (not a bare ModuleNotFoundError)."""
    path = _save_from_module(tmp_path, "my_user_nets", NET, monkeypatch)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    with pytest.raises(UserError) as exc:
        load_model_file(path)
    message = str(exc.value)
    for words in ("class my_user_nets.Net", "no module named 'my_user_nets'", "must be importable",
                  "PYTHONPATH"):
        assert words in message, message
    out = tmp_path / "run"
    line = _user_error(capsys, _prune(path, out, "--rate", "0.5"), "class my_user_nets.Net")
    assert "must be importable" in line
    _no_output(out)


def test_a_class_gone_from_its_module_is_named(tmp_path, monkeypatch):
    path = _save_from_module(tmp_path, "my_moved_nets", NET, monkeypatch)
    (tmp_path / "my_moved_nets.py").write_text("# Net moved elsewhere\n")
    importlib.invalidate_caches()
    with pytest.raises(UserError, match=r"class my_moved_nets\.Net, but module my_moved_nets has no Net.*"
                                        r"must be importable"):
        load_model_file(path)
    sys.modules.pop("my_moved_nets", None)


def test_a_class_of_the_saving_script_is_named(tmp_path, monkeypatch):
    """A class defined in the script that saved the network (``__main__``) cannot be found by a
    later process: the message says to define it in a module of its own."""
    main = sys.modules["__main__"]

    class ScriptNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

    ScriptNet.__module__, ScriptNet.__qualname__ = "__main__", "ScriptNet"
    monkeypatch.setattr(main, "ScriptNet", ScriptNet, raising=False)
    torch.save(ScriptNet(), tmp_path / "net.pt")
    monkeypatch.delattr(main, "ScriptNet")
    with pytest.raises(UserError, match=r"class ScriptNet, which was defined in the script that saved it "
                                        r"\(module __main__\).*must be importable.*module of its own"):
        load_model_file(tmp_path / "net.pt")
