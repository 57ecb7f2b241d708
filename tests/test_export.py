"""Export of pruned networks (``export.export``, ``export.export_checkpoint``, ``dirichlet-prune
export``): for each format, the pruned LeNet-5, a pruned VGG-16 and a pruned user's network with
a residual block and batch-norm are written, then loaded in a fresh Python process that cannot
import this package (``python -I -S`` with only the site-packages folder of torch and ONNX
Runtime on its path, so the editable install's finder never runs), which must give the pruned
network's outputs at batch 1 and 8."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from helpers import TinyUserCNN, randomise_batchnorms
from pyro_dirichlet_prune import build_model, cli, discover_switch_points, load_pretrained, prune
from pyro_dirichlet_prune.errors import NumericalError
from pyro_dirichlet_prune.export import FORMATS, export, export_checkpoint
from pyro_dirichlet_prune.models.checkpoint import save_checkpoint, save_module_checkpoint
from pyro_dirichlet_prune.models.registry import default_widths
from test_cli_errors import _usage_error, _user_error

TOL = 1e-4
BATCHES = (1, 8)


class ResidualUserCNN(nn.Module):
    """A user's network: conv-bn-relu, a residual block (two convs with batch-norm, identity
    shortcut), a strided conv and a two-layer head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(12, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.Conv2d(16, 12, 3, padding=1), nn.BatchNorm2d(12))
        self.down = nn.Sequential(nn.Conv2d(12, 20, 3, stride=2, padding=1), nn.BatchNorm2d(20), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(80, 24), nn.ReLU(), nn.Linear(24, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(self.down(x))


def _keep_half(points) -> dict[str, list[int]]:
    return {p.name: list(range(0, p.width, 2)) for p in points}


def _pruned(kind: str) -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
    """(original, pruned, input shape) for ``kind``."""
    torch.manual_seed(0)
    if kind == "lenet5":
        net, shape = load_pretrained("lenet5", "mnist"), (1, 28, 28)
        points = net.switch_points()
    elif kind == "vgg16":
        net, shape = build_model("vgg16", [max(2, w // 16) for w in default_widths("vgg16")]), (3, 32, 32)
        points = net.switch_points()
    else:
        net, shape = ResidualUserCNN(), (3, 32, 32)
        randomise_batchnorms(net)
        points = discover_switch_points(net.eval(), shape)
    return net.eval(), prune(net, _keep_half(points), shape, points=points), shape


LOADER = textwrap.dedent("""
    import json, sys
    sys.path[:0] = json.loads(sys.argv[1])
    try:
        import pyro_dirichlet_prune
        isolated = False
    except ImportError:
        isolated = True
    import numpy as np, onnxruntime, torch
    for item in json.load(open(sys.argv[2])):
        if item["format"] == "onnx":
            session = onnxruntime.InferenceSession(item["file"], providers=["CPUExecutionProvider"])
            run = lambda x: session.run(None, {"input": x})[0]
        else:
            module = torch.jit.load(item["file"]).eval()
            run = lambda x: module(torch.from_numpy(x)).detach().numpy()
        for b in item["batches"]:
            np.save(item["stem"] + f"-y{b}.npy", run(np.load(item["stem"] + f"-x{b}.npy")))
    ours = sorted(m for m in sys.modules if m.split(".")[0] in ("pyro_dirichlet_prune", "pyro"))
    print(json.dumps({"isolated": isolated, "modules": ours}))
""")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every kind of network in every format, exported and run in one isolated process."""
    root = tmp_path_factory.mktemp("export")
    cases, manifest = {}, []
    g = torch.Generator().manual_seed(1)
    for kind in ("lenet5", "vgg16", "user"):
        net, small, shape = _pruned(kind)
        inputs = {b: torch.randn(b, *shape, generator=g) for b in BATCHES}
        with torch.no_grad():
            expected = {b: small(x).numpy() for b, x in inputs.items()}
        for fmt in FORMATS:
            stem = root / f"{kind}-{fmt}"
            result = export(small, stem.with_suffix(".onnx" if fmt == "onnx" else ".pt"), format=fmt,
                            input_shape=shape, batch_size=4)
            for b, x in inputs.items():
                np.save(f"{stem}-x{b}.npy", x.numpy())
            manifest.append({"format": fmt, "file": result.path, "stem": str(stem), "batches": list(BATCHES)})
            cases[kind, fmt] = (net, small, result, expected, stem)
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "loader.py").write_text(LOADER)
    paths = sorted({str(Path(m.__file__).resolve().parents[1]) for m in (torch, onnxruntime, np)})
    proc = subprocess.run([sys.executable, "-I", "-S", str(root / "loader.py"), json.dumps(paths),
                           str(root / "manifest.json")], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return cases, report


def test_the_loading_process_cannot_import_the_package(exported):
    _, report = exported
    assert report["isolated"], "the fresh process could import pyro_dirichlet_prune"
    assert report["modules"] == [], report["modules"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["lenet5", "vgg16", "user"])
def test_exported_file_gives_the_pruned_outputs_in_a_fresh_process(exported, kind, fmt):
    cases, report = exported
    net, small, result, expected, stem = cases[kind, fmt]
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in net.parameters())  # pruned
    assert result.format == fmt and result.checked_batches == [1, 4, 8]
    assert result.max_abs_diff is not None and result.max_abs_diff <= TOL * max(1.0, result.output_scale)
    for b in BATCHES:
        got = np.load(f"{stem}-y{b}.npy")
        assert got.shape == expected[b].shape == (b, 10)
        scale = max(1.0, float(np.abs(expected[b]).max()))
        assert np.abs(got - expected[b]).max() <= TOL * scale, (kind, fmt, b)


class FixedBatch(nn.Module):
    """Flattens with the batch size as a Python int: a trace writes in the traced batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(2 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).reshape(int(x.shape[0]), -1))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_graph_frozen_to_one_batch_size_fails_the_check_and_writes_nothing(tmp_path, fmt):
    out = tmp_path / "fixed.bin"
    with pytest.raises(NumericalError, match="batch of 8"):
        export(FixedBatch().eval(), out, format=fmt, input_shape=(1, 8, 8))
    assert list(tmp_path.iterdir()) == []
    result = export(FixedBatch().eval(), out, format=fmt, input_shape=(1, 8, 8), dynamic_batch=False)
    assert result.checked_batches == [1] and out.is_file()


def test_export_keeps_the_networks_mode_and_refuses_bad_arguments(tmp_path):
    net = TinyUserCNN().train()
    with pytest.raises(ValueError, match="format must be one of onnx, torchscript, got 'tflite'"):
        export(net, tmp_path / "x", format="tflite", input_shape=(3, 32, 32))
    with pytest.raises(ValueError, match="input_shape"):
        export(net, tmp_path / "x", input_shape=())
    with pytest.raises(ValueError, match="batch_size"):
        export(net, tmp_path / "x", input_shape=(3, 32, 32), batch_size=0)
    with pytest.raises(TypeError, match="net must be a torch.nn.Module"):
        export("net", tmp_path / "x", input_shape=(3, 32, 32))
    export(net, tmp_path / "x.onnx", input_shape=(3, 32, 32), check=False)
    assert net.training and (tmp_path / "x.onnx").is_file()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_cli_exports_a_checkpoint_with_a_report(tmp_path, capsys):
    _, small, shape = _pruned("lenet5")
    ckpt = tmp_path / "run" / "pruned.pt"
    save_checkpoint(ckpt, small, "lenet5", "mnist", 10, shape)
    for fmt, name in (("onnx", "pruned.onnx"), ("torchscript", "pruned.torchscript.pt")):
        assert cli.main(["export", str(ckpt), "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert f"wrote {ckpt.parent / name}" in out and "max abs difference" in out
        report = json.loads((ckpt.parent / f"{name}.json").read_text())
        assert report["model"] == "lenet5" and report["export"]["format"] == fmt
        assert report["export"]["max_abs_diff"] <= TOL * max(1.0, report["export"]["output_scale"])
        assert report["versions"]["torch"] and report["versions"]["onnxruntime"] != "not installed"
    x = torch.randn(3, *shape)
    loaded = torch.jit.load(str(ckpt.parent / "pruned.torchscript.pt"))
    assert torch.allclose(loaded(x), small(x), atol=1e-5)
    _user_error(capsys, ["export", str(ckpt)], "--overwrite")
    other = tmp_path / "elsewhere" / "net.onnx"
    assert cli.main(["export", str(ckpt), "--out", str(other), "--overwrite"]) == 0
    assert other.is_file() and (other.parent / "net.onnx.json").is_file()


def test_cli_exports_a_users_pruned_network_only_with_allow_pickle(tmp_path, capsys):
    net = TinyUserCNN().eval()
    randomise_batchnorms(net)
    ckpt = tmp_path / "pruned.pt"
    save_module_checkpoint(ckpt, net, "fake-mnist", 10, (3, 32, 32), ["features.0"])
    _user_error(capsys, ["export", str(ckpt)], "--allow-pickle")
    assert not (tmp_path / "pruned.onnx").exists()
    result = export_checkpoint(ckpt, format="torchscript", allow_pickle=True)
    assert result.path == str(tmp_path / "pruned.torchscript.pt") and result.max_abs_diff <= TOL
    bare = tmp_path / "bare.pt"
    torch.save(net, bare)
    _user_error(capsys, ["export", str(bare), "--allow-pickle"], "--input-shape")
    assert cli.main(["export", str(bare), "--allow-pickle", "--input-shape", "3,32,32"]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "bare.onnx").is_file()


def test_cli_errors_name_the_argument(tmp_path, capsys):
    _usage_error(capsys, ["export", str(tmp_path / "x.pt"), "--format", "tflite"], "--format")
    _user_error(capsys, ["export", str(tmp_path / "missing.pt")], "checkpoint")
    _user_error(capsys, ["export", str(tmp_path / "missing.pt")], "does not exist")
    assert list(tmp_path.iterdir()) == []
