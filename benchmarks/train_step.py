"""Seconds per SGD training step of the networks built for 32x32 inputs, on one-channel 32x32
inputs (Fashion-MNIST zero-padded), contiguous against channels-last memory order: what chose
the widths of the networks shipped for Fashion-MNIST and ``TrainConfig.channels_last``.

    python benchmarks/train_step.py --threads 1

Prints one line per (network, memory order, batch): MACs, params, the median of five steps after
one warm-up step, and the minutes an epoch of 430 steps of 128 (55,000 examples) would take."""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from pyro_dirichlet_prune.metrics import count_macs, count_params
from pyro_dirichlet_prune.models import build_model, default_widths
from pyro_dirichlet_prune.models.common import scale_widths

CANDIDATES = [("vgg16", 0.25), ("vgg16", 0.125), ("vgg16", 0.5), ("wrn-10-1", None), ("wrn-16-1", None),
              ("wrn-22-1", None), ("wrn-10-2", None), ("wrn-16-2", None), ("wrn-16-4", None)]


def step_seconds(name: str, multiplier: float | None, channels_last: bool, batch: int, steps: int = 6) -> dict:
    widths = list(scale_widths(default_widths(name), multiplier)) if multiplier else None
    torch.manual_seed(0)
    net = build_model(name, widths, 10, 1)
    x, y = torch.randn(batch, 1, 32, 32), torch.randint(0, 10, (batch,))
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t)
    per_128 = statistics.median(times[1:]) * 128 / batch
    return {"network": name if multiplier is None else f"{name} x{multiplier:g}", "channels_last": channels_last,
            "batch": batch, "macs": count_macs(net, (1, 32, 32)), "params": count_params(net),
            "seconds_per_128": per_128, "epoch_minutes": per_128 * 430 / 60}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name, mult in CANDIDATES:
        for channels_last in (False, True):
            r = step_seconds(name, mult, channels_last, args.batch)
            print(f"{r['network']:14s} {'channels-last' if channels_last else 'contiguous   '} batch {r['batch']}: "
                  f"{r['macs']:>11,} MACs {r['params']:>9,} params  {r['seconds_per_128']:.3f} s per 128, "
                  f"epoch {r['epoch_minutes']:.1f} min", flush=True)


if __name__ == "__main__":
    main()
