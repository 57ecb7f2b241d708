"""Throughput of data-parallel switch learning and fine-tuning: 1 against N processes.

    python benchmarks/ddp_scaling.py [--processes 1 2] [--model vgg16] [--width-multiplier 0.5] \
        [--steps 12] [--batch-size 128] [--repeats 3] [--out benchmarks/results/ddp_scaling.json]

For every process count P > 1 the script launches ``torchrun --nproc-per-node P`` on itself
(``--worker``), one torch thread per process (``OMP_NUM_THREADS=1``), gloo on the CPU; P = 1 is
the plain one-process run (``python`` itself: a single process under ``torchrun`` measured 15%
slower on this machine, which is the launcher's cost, not the method's). Each
launch runs the library's two loops on ``fake-cifar10`` with the global minibatch of
``--batch-size`` examples split across the ranks (``pyro_dirichlet_prune.distributed``):

* switch learning: ``fit`` of the Dirichlet guide with ``Trace_ELBO``, all layers jointly (so
  every step costs the same), one epoch of ``(steps + 1) * batch_size`` examples;
* fine-tuning: ``finetune`` (SGD, the settings ``prune`` uses for VGG) of the whole network for
  one epoch of the same examples, without validation.

Every process keeps freed memory as the command line does (``allocator.retain_freed_memory``).
Throughput is global examples per second of the loop's wall time on rank 0, the first step
(warm-up) excluded; the median over ``--repeats`` interleaved rounds. The network is freshly initialised (its weights do not change the cost).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    from pyro_dirichlet_prune import distributed
    from pyro_dirichlet_prune.data import Split, SplitLoader, load_data
    from pyro_dirichlet_prune.inference.fit import fit
    from pyro_dirichlet_prune.inference.guides import DirichletGuide
    from pyro_dirichlet_prune.inference.svi import SwitchConfig, make_elbo, switch_model
    from pyro_dirichlet_prune.models import SwitchedNetwork, build_model
    from pyro_dirichlet_prune.models.common import scale_widths
    from pyro_dirichlet_prune.models.registry import default_widths
    from pyro_dirichlet_prune.training import finetune

    from pyro_dirichlet_prune.allocator import retain_freed_memory

    retain_freed_memory()  # as the command line runs (pyro_dirichlet_prune.allocator)
    torch.set_num_threads(1)
    distributed.init_from_env("cpu")
    torch.manual_seed(0)
    n = (args.steps + 1) * args.batch_size
    data = load_data("fake-cifar10", None, 500, 0)
    train = Split(data.train.x[:n], data.train.y[:n])
    net = build_model(args.model, scale_widths(default_widths(args.model), args.width_multiplier), 10, 3).eval()
    cfg = SwitchConfig(batch_size=args.batch_size, schedule="joint", seed=0)
    switched = SwitchedNetwork(net, net.switch_points())
    model = switch_model(cfg, switched, len(train))
    guide = DirichletGuide(model, cfg.init_concentration, cfg.floor)
    loader = distributed.sharded(SplitLoader(train, args.batch_size, True, torch.Generator().manual_seed(0)))
    timed = _Timed(loader)
    fit(model, guide, timed, epochs=1, schedule="joint", loss=make_elbo(cfg), lr=cfg.lr, seed=0, progress=False)
    switches = timed.seconds_after_first()
    timed = _Timed(distributed.sharded(SplitLoader(train, args.batch_size, True, torch.Generator().manual_seed(0))))
    finetune(net, timed, None, epochs=1, lr=0.01, optimizer="sgd", weight_decay=5e-4, progress=False)
    tune = timed.seconds_after_first()
    if distributed.is_main():
        steps = args.steps  # the first of steps + 1 minibatches is the warm-up
        result = {"processes": distributed.world_size(), "batch_size": args.batch_size, "timed_steps": steps,
                  "switch_seconds": switches, "finetune_seconds": tune,
                  "switch_examples_per_s": steps * args.batch_size / switches,
                  "finetune_examples_per_s": steps * args.batch_size / tune}
        Path(args.worker).write_text(json.dumps(result))
    distributed.barrier()


class _Timed:
    """A loader that notes when each minibatch is asked for and when the epoch ends: the loop's
    time after its first (warm-up) step runs from the second request to the end."""

    def __init__(self, loader) -> None:
        self.loader, self.times = loader, []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.times.append(time.perf_counter())
            yield batch
        self.times.append(time.perf_counter())

    def seconds_after_first(self) -> float:
        return self.times[-1] - self.times[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--model", default="vgg16")
    p.add_argument("--width-multiplier", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=12, help="timed minibatches per loop (after one warm-up)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the medians are reported")
    p.add_argument("--out", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    from pyro_dirichlet_prune.report import versions

    runs = {procs: [] for procs in args.processes}
    for rep in range(args.repeats):  # interleaved, so that machine noise hits every count alike
        for procs in args.processes:
            out = Path(f"/tmp/ddp_scaling_{os.getpid()}_{procs}.json")
            launch = [] if procs == 1 else ["-m", "torch.distributed.run", "--nproc-per-node", str(procs),
                                            "--master-addr", "127.0.0.1", "--master-port", str(29400 + procs)]
            cmd = [sys.executable, *launch, __file__, "--worker", str(out), "--model", args.model,
                   "--width-multiplier", str(args.width_multiplier), "--steps", str(args.steps), "--batch-size",
                   str(args.batch_size)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=ROOT)
            run = json.loads(out.read_text()) | {"launch_wall_s": time.perf_counter() - t0}
            out.unlink()
            runs[procs].append(run)
            print(f"round {rep + 1}, {procs} process(es): switch learning {run['switch_examples_per_s']:.1f} "
                  f"examples/s, fine-tuning {run['finetune_examples_per_s']:.1f} examples/s", flush=True)
    summary = []
    for procs, rs in runs.items():
        summary.append({"processes": procs, **{k: statistics.median(r[k] for r in rs) for k in
                                               ("switch_examples_per_s", "finetune_examples_per_s")},
                        "rounds": rs})
    runs = summary
    base = runs[0]
    for run in runs:
        run["switch_speedup"] = run["switch_examples_per_s"] / base["switch_examples_per_s"]
        run["finetune_speedup"] = run["finetune_examples_per_s"] / base["finetune_examples_per_s"]
    report = {"benchmark": "ddp_scaling", "config": vars(args), "cpus": os.cpu_count(), "runs": runs,
              "versions": versions()}
    for run in runs[1:]:
        print(f"{run['processes']} against {base['processes']} (medians): switch learning {run['switch_speedup']:.2f}x, "
              f"fine-tuning {run['finetune_speedup']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
