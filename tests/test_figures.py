"""Smoke tests of the figure scripts: each builds a non-empty PNG from a small fabricated search
folder, a fabricated posterior.json, or a tiny switch fit."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from pyro_dirichlet_prune import search
from pyro_dirichlet_prune.errors import UserError
from pyro_dirichlet_prune.models.checkpoint import shipped_checkpoint

FIGURES = Path(__file__).resolve().parents[1] / "figures"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, FIGURES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture
def search_folder(tmp_path) -> Path:
    """A fabricated, unfinished search: config.json and records, no summary yet."""
    out = tmp_path / "search"
    methods, archs = ["dirichlet", "l1", "random"], ["4-6-35-15", "5-7-40-17", "6-8-50-20"]
    search.write_json_durable(out / "config.json", {"command": "search", "identity": {"methods": methods, "archs": archs}})
    g = torch.Generator().manual_seed(0)
    for i, arch in enumerate(archs):
        for m in methods:
            for seed in (0, 1):
                err = round(0.01 + 0.005 * float(torch.rand(1, generator=g)), 4)
                search.write_json_durable(out / "records" / f"{search.record_key(m, seed, arch)}.json", {
                    "method": m, "seed": seed, "arch": arch, "test_error": err, "val_error": err,
                    "test_error_pruned": 5 * err, "params": 1000 * (i + 1), "macs": 100000 * (i + 1), "seconds": 1.0})
    return out


@pytest.mark.parametrize("script, extra", [("fig3_wins", []), ("error_vs_macs", []), ("error_vs_macs", ["--pruned"])])
def test_search_figures(search_folder, tmp_path, script, extra):
    module = _script(script)
    with pytest.raises(SystemExit):
        module.main(["--help"])
    png = module.main([str(search_folder), "--out", str(tmp_path / "a.png"), *extra])  # summarised from the records
    assert _is_png(png)
    search.write_summary(search_folder, search.load_summary(search_folder))
    png = module.main([str(search_folder), *extra])  # from summary.json, into the folder
    assert _is_png(png) and png.parent == search_folder


def test_error_vs_macs_draws_large_pools_as_a_scatter(search_folder, tmp_path, monkeypatch):
    module = _script("error_vs_macs")
    monkeypatch.setattr(module, "SMALL_POOL", 1)  # the fabricated pool's three architectures count as many
    assert _is_png(module.plot_error_vs_macs(search.load_summary(search_folder), tmp_path / "b.png"))


def _data_args(data_cfg) -> list[str]:
    args = ["--dataset", data_cfg.dataset, "--val-size", str(data_cfg.val_size),
            "--checkpoint", str(shipped_checkpoint("lenet5", "mnist"))]
    return args + (["--data-dir", str(data_cfg.data_dir)] if data_cfg.data_dir else [])


def test_fig4_from_a_posterior_file(tmp_path, data_cfg):
    posterior = tmp_path / "posterior.json"
    posterior.write_text(json.dumps({"conv1": {"mean": [0.05, 0.2, 0.1, 0.02, 0.15, 0.08, 0.1, 0.1, 0.12, 0.08]}}))
    module = _script("fig4_feature_maps")
    png = module.main([*_data_args(data_cfg), "--posterior", str(posterior), "--images", "2",
                       "--out", str(tmp_path / "fig4.png")])
    assert _is_png(png)
    posterior.write_text(json.dumps({"conv1": {"mean": [0.5, 0.5]}}))
    with pytest.raises(UserError, match="2 means, the network 10 channels"):
        module.main([*_data_args(data_cfg), "--posterior", str(posterior), "--out", str(tmp_path / "x.png")])


def test_fig4_from_a_tiny_fit(tmp_path, data_cfg, monkeypatch):
    """The figure shows what it says: the input, then ReLU(conv1(x)) of the three channels of
    highest posterior mean of a fresh switch fit, in that order, and of the lowest one."""
    torch.set_num_threads(1)
    module = _script("fig4_feature_maps")
    figures, fitted = [], {}
    monkeypatch.setattr(module.plt, "close", figures.append)
    real_fit = module.fit_means

    def spy(net, train, seed):
        fitted["means"], fitted["net"] = real_fit(net, train, seed), net
        return fitted["means"]

    monkeypatch.setattr(module, "fit_means", spy)
    png = module.main([*_data_args(data_cfg), "--max-train-examples", "256", "--images", "1",
                       "--out", str(tmp_path / "fig4.png")])
    assert _is_png(png) and len(figures) == 1
    mean = fitted["means"]["conv1"]
    order = sorted(range(10), key=lambda j: -float(mean[j]))
    axes = figures[0].axes
    titles = [ax.get_title() for ax in axes[1:5]]
    assert titles == [f"{r}: channel {ch}\nD·E[s]={10 * float(mean[ch]):.2f}"
                      for r, ch in zip(["#1", "#2", "#3", "least"], order[:3] + order[-1:])]
    image = torch.as_tensor(axes[0].get_images()[0].get_array().data)
    maps = module.first_layer_maps(fitted["net"], image[None, None].float())
    for ax, ch in zip(axes[1:5], order[:3] + order[-1:]):
        torch.testing.assert_close(torch.as_tensor(ax.get_images()[0].get_array().data).float(), maps[0, ch])
