"""Measured latency of a base and a pruned network: ``latency.latency_report`` on a prune run
folder (the base network from its report's ``checkpoint``, the pruned one from its ``pruned.pt``)
or on two checkpoints, written as JSON: per (batch, threads) cell the median, p10 and p90
milliseconds of both networks (interleaved round-robin), the speed-up, the MAC reduction and their
ratio. The method is ``pyro_dirichlet_prune.latency``'s docstring.

    python benchmarks/latency.py --run runs/demo --out benchmarks/results/latency_demo.json
    python benchmarks/latency.py --base model.pt --pruned run/pruned.pt --batch-sizes 1 256 --threads 1 0
    python benchmarks/latency.py --run runs/vgg --device cuda   # the CPU and the GPU
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pyro_dirichlet_prune.errors import UserError
from pyro_dirichlet_prune.latency import BATCH_SIZES, CELL_SECONDS, REPEATS, WARMUP, latency_report
from pyro_dirichlet_prune.metrics import count_macs
from pyro_dirichlet_prune.models.checkpoint import load_checkpoint
from pyro_dirichlet_prune.report import now, versions, write_json


def _pair(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.run is not None:
        report = json.loads((Path(args.run) / "report.json").read_text())
        return Path(report["checkpoint"]), Path(args.run) / "pruned.pt"
    if args.base is None or args.pruned is None:
        raise SystemExit("give --run FOLDER, or --base and --pruned")
    return Path(args.base), Path(args.pruned)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="a prune output folder (report.json and pruned.pt)")
    p.add_argument("--base", help="the base checkpoint (instead of --run)")
    p.add_argument("--pruned", help="the pruned checkpoint (instead of --run)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="load pickled networks (a --model-file run); unpickling runs arbitrary code")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    p.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="CPU thread counts; 0: all (default 1 0)")
    p.add_argument("--repeats", type=int, default=REPEATS)
    p.add_argument("--warmup", type=int, default=WARMUP)
    p.add_argument("--cell-seconds", type=float, default=CELL_SECONDS,
                   help="stop a cell's timed rounds after this many seconds (0: always all --repeats)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda to measure the GPU as well as the CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    args = p.parse_args()

    base_path, pruned_path = _pair(args)
    try:
        base, _ = load_checkpoint(base_path, allow_pickle=args.allow_pickle)
        pruned, info = load_checkpoint(pruned_path, allow_pickle=args.allow_pickle)
    except UserError as exc:
        raise SystemExit(f"latency.py: {exc}") from None
    shape = tuple(info["input_shape"])
    macs = count_macs(base, shape), count_macs(pruned, shape)
    devices = ("cpu",) if args.device == "cpu" else ("cpu", args.device)
    t = time.perf_counter()
    result = latency_report(base, pruned, shape, *macs, devices, batch_sizes=args.batch_sizes,
                            threads=[n or None for n in args.threads], repeats=args.repeats, warmup=args.warmup,
                            cell_seconds=args.cell_seconds or None, seed=args.seed)
    seconds = time.perf_counter() - t
    for kind, table in result.items():
        for c in table["cells"]:
            print(f"{kind} batch {c['batch']:4d} threads {c['threads']:2d} ({c['repeats']:3d} repeats): base "
                  f"{c['base_ms']['median']:9.3f} ms, pruned {c['pruned_ms']['median']:9.3f} ms, speed-up "
                  f"{c['speedup']:.2f}x, MACs {c['mac_reduction']:.2f}x fewer, ratio {c['ratio']:.2f}")
    print(f"{seconds:.1f} s")
    if args.out:
        write_json(Path(args.out), {"command": "benchmarks/latency.py", "created": now(), "base": str(base_path),
                                    "pruned": str(pruned_path), "latency": result, "seconds": seconds,
                                    "versions": versions()})


if __name__ == "__main__":
    main()
