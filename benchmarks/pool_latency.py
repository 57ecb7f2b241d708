"""Measured CPU latency and ONNX export of the pruned networks of a search pool (``macs:2,4``).

A search records test errors, not networks. The speed of a pruned network depends on its
architecture only, not on which units were kept, so for every architecture of the pool this
keeps the units of highest L1 norm of the shipped network, cuts it physically (``prune_units``,
checked against the masked network), times base and pruned forward passes interleaved
(``latency.latency_report``: CPU, batches 1 and 256, one and all threads) and exports the pruned
network to ONNX, checked against PyTorch at batches 1 and 8 (``export.export``). Run it with
nothing else on the machine: the timings are what it is for.

    python benchmarks/pool_latency.py --models vgg16 wrn-16-1 --pool macs:2,4 \\
        --out benchmarks/results/real_networks/pool_latency_fashion.json
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pyro_dirichlet_prune.export import export
from pyro_dirichlet_prune.latency import latency_report
from pyro_dirichlet_prune.metrics import count_macs, count_params
from pyro_dirichlet_prune.models.checkpoint import load_checkpoint, shipped_checkpoint
from pyro_dirichlet_prune.models.switch_points import switch_points
from pyro_dirichlet_prune.pruning.budget import size_function
from pyro_dirichlet_prune.pruning.cutoff import keep_top, parse_arch
from pyro_dirichlet_prune.pruning.ranking import get_ranking
from pyro_dirichlet_prune.pruning.surgery import prune_units, verify_surgery
from pyro_dirichlet_prune.report import versions, write_json
from pyro_dirichlet_prune.search import load_pool


def pool_rows(model: str, dataset: str, pool: str, export_dir: Path) -> list[dict]:
    """One row per architecture of ``pool`` on the shipped ``model``: size, surgery check,
    latency cells and the ONNX check."""
    net, info = load_checkpoint(shipped_checkpoint(model, dataset), model)
    shape = tuple(info["input_shape"])
    widths = {p.name: p.width for p in switch_points(net)}
    size = size_function(net, shape)
    archs = load_pool(pool, widths, 1, macs=lambda kept: size(kept)["macs"])
    scores = get_ranking("l1")(net)
    base_macs = count_macs(net, shape)
    rows = []
    for arch in archs:
        keep = keep_top(scores, parse_arch(arch, widths))
        pruned = prune_units(net, keep, shape)
        diff = verify_surgery(net, pruned, keep, shape)
        macs = count_macs(pruned, shape)
        t0 = time.perf_counter()
        latency = latency_report(net, pruned, shape, base_macs, macs)
        onnx = export(pruned, export_dir / f"{model}-{arch}.onnx", format="onnx", input_shape=shape)
        rows.append({"model": model, "arch": arch, "macs": macs, "macs_base": base_macs,
                     "mac_reduction": base_macs / macs, "params": count_params(pruned),
                     "params_base": count_params(net), "surgery_max_abs_diff": diff, "latency": latency,
                     "onnx": onnx.to_dict(), "seconds": time.perf_counter() - t0})
        for c in latency["cpu"]["cells"]:
            print(f"{model} {arch}: batch {c['batch']}, threads {c['threads']}: speed-up {c['speedup']:.2f}x "
                  f"against {c['mac_reduction']:.2f}x fewer MACs ({c['ratio']:.2f} of it)")
        print(f"{model} {arch}: ONNX max |diff| {onnx.max_abs_diff:.2e}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["vgg16", "wrn-16-1"])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--pool", default="macs:2,4")
    ap.add_argument("--out", default="benchmarks/results/real_networks/pool_latency_fashion.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for m in args.models for r in pool_rows(m, args.dataset, args.pool, Path(tmp))]
    write_json(args.out, {"config": vars(args), "rows": rows, "versions": versions()})
    print(args.out)


if __name__ == "__main__":
    main()
