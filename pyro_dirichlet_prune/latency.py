"""Measured latency of forward passes, and the speed-up of a pruned network against its MAC reduction.

Method (``measure_latency``). For every cell (batch size B, intra-op thread count T) of
``batch_sizes`` × ``threads``, torch's CPU threads are set to T and one input batch of shape
``(B, *input_shape)`` is drawn from a local ``torch.Generator`` seeded with ``seed`` (the global
random generators are not touched). Every network is a copy on ``device`` in eval mode, run under
``torch.inference_mode()``. After ``warmup`` untimed rounds (fewer, but at least one, when they
pass a quarter of ``cell_seconds``), rounds are timed: a round runs one forward pass
of every network, in an order rotated by one each round (round-robin interleaving, so that the
machine's drifts and noise hit all networks alike), each pass timed alone with
``time.perf_counter`` (on CUDA the device is synchronised before and after it). A cell runs
``repeats`` rounds, or fewer when its timed rounds pass ``cell_seconds`` (never fewer than
``min(MIN_REPEATS, repeats)``); the rounds of both kinds are recorded in the cell. Per network
and cell: the median, 10th and 90th percentile of its pass times, in milliseconds. Torch's
thread count is restored afterwards.

``speedup_table`` turns a measurement of a base and a pruned network into per-cell speed-ups
(base median / pruned median), the MAC reduction (base MACs / pruned MACs) and their ratio
(speed-up / MAC reduction: 1 when the time falls as the MACs do). ``latency_report`` does both for
``run_prune``'s report: on the CPU at one and all threads, and on the GPU when asked.
"""
from __future__ import annotations

import copy
import os
import platform
import time
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["BATCH_SIZES", "CELL_SECONDS", "MIN_REPEATS", "REPEATS", "THREADS", "WARMUP", "all_threads",
           "latency_report", "measure_latency", "speedup_table"]

BATCH_SIZES = (1, 256)
THREADS: tuple[int | None, ...] = (1, None)  # None: all the threads this process may use
REPEATS = 50
WARMUP = 3
CELL_SECONDS = 2.0
MIN_REPEATS = 5
METHOD = ("forward passes under torch.inference_mode() in eval mode on a fixed input from a local generator; "
          "networks interleaved round-robin within each (batch, threads) cell after warm-up rounds; "
          "median, p10 and p90 over the timed rounds")


def all_threads() -> int:
    """The CPU cores this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _positive_ints(name: str, values: Iterable, allow_none: bool = False) -> list:
    values = list(values)
    ok = all((v is None and allow_none) or (isinstance(v, int) and not isinstance(v, bool) and v > 0)
             for v in values)
    if not values or not ok:
        extra = " or None (all threads)" if allow_none else ""
        raise ValueError(f"{name} must be a non-empty sequence of positive integers{extra}, got {values!r}")
    return values


def _check(nets: Mapping[str, nn.Module], repeats: int, warmup: int, cell_seconds: float | None) -> None:
    if not isinstance(nets, Mapping) or not nets:
        raise TypeError(f"nets must be a non-empty mapping of names to nn.Module, got {type(nets).__name__}")
    bad = [k for k, v in nets.items() if not isinstance(k, str) or not isinstance(v, nn.Module)]
    if bad:
        raise TypeError(f"nets must map names (str) to nn.Module; not so for {bad!r}")
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
    if cell_seconds is not None and not cell_seconds > 0:
        raise ValueError(f"cell_seconds must be a positive number or None, got {cell_seconds!r}")


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return dev


def _timed(net: nn.Module, x: torch.Tensor, sync: bool) -> float:
    """Seconds of one forward pass of ``net`` on ``x``."""
    if sync:
        torch.cuda.synchronize(x.device)
    t = time.perf_counter()
    net(x)
    if sync:
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - t


def _cell(nets: dict[str, nn.Module], x: torch.Tensor, repeats: int, warmup: int,
          cell_seconds: float | None) -> dict[str, Any]:
    """Time the interleaved forward passes of one cell (module docstring)."""
    names, sync = list(nets), x.device.type == "cuda"
    times: dict[str, list[float]] = {n: [] for n in names}
    limit = float("inf") if cell_seconds is None else cell_seconds
    start, warm = time.perf_counter(), 0
    while warm < warmup and not (warm and time.perf_counter() - start > limit / 4):
        for n in names:
            _timed(nets[n], x, sync)
        warm += 1
    start, rounds = time.perf_counter(), 0
    while rounds < repeats:
        for i in range(len(names)):  # round r starts with network r mod len(names)
            n = names[(rounds + i) % len(names)]
            times[n].append(_timed(nets[n], x, sync))
        rounds += 1
        if rounds >= min(MIN_REPEATS, repeats) and time.perf_counter() - start > limit:
            break
    ms = {n: dict(zip(("p10", "median", "p90"), (float(v) for v in np.percentile(np.array(t) * 1e3, [10, 50, 90]))))
          for n, t in times.items()}
    return {"repeats": rounds, "warmup": warm, "ms": ms}


def measure_latency(
    nets: Mapping[str, nn.Module],
    input_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    threads: Sequence[int | None] = THREADS,
    repeats: int = REPEATS,
    warmup: int = WARMUP,
    cell_seconds: float | None = CELL_SECONDS,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Forward-pass latency of ``nets`` (name → network) on inputs of ``input_shape`` (without the
    batch dimension), by the module docstring's method; the networks themselves are not changed.

    Returns ``{"method", "device", "input_shape", "seed", "warmup", "max_repeats", "cell_seconds",
    "all_threads", "networks", "cells"}``; ``cells`` holds, per (batch, threads) in the order
    given (``threads`` None: ``all_threads()``; a thread count that repeats is measured once),
    ``{"batch", "threads", "repeats", "warmup", "ms": {name: {"median", "p10", "p90"}}}``. Raises
    ``TypeError`` naming ``nets`` and ``ValueError`` naming the argument that is wrong."""
    _check(nets, repeats, warmup, cell_seconds)
    shape = _positive_ints("input_shape", input_shape)
    batches = _positive_ints("batch_sizes", batch_sizes)
    counts = list(dict.fromkeys(all_threads() if t is None else t for t in _positive_ints("threads", threads, True)))
    dev = _device(device)
    copies = {n: copy.deepcopy(net).to(dev).eval() for n, net in nets.items()}
    gen = torch.Generator().manual_seed(seed)
    cells, before = [], torch.get_num_threads()
    try:
        with torch.inference_mode():
            for b in batches:
                x = torch.randn((b, *shape), generator=gen).to(dev)
                for t in counts:
                    torch.set_num_threads(t)
                    cells.append({"batch": b, "threads": t, **_cell(copies, x, repeats, warmup, cell_seconds)})
    finally:
        torch.set_num_threads(before)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.machine()
    return {"method": METHOD, "device": str(dev), "device_name": name, "input_shape": shape, "seed": seed,
            "warmup": warmup, "max_repeats": repeats, "cell_seconds": cell_seconds, "all_threads": all_threads(),
            "networks": list(nets), "cells": cells}


def speedup_table(measurement: Mapping[str, Any], macs_base: int, macs_pruned: int, *,
                  base: str = "base", pruned: str = "pruned") -> list[dict[str, Any]]:
    """Per cell of ``measurement`` (``measure_latency``'s result): batch, threads, repeats, warmup, the
    median, p10 and p90 milliseconds of the networks named ``base`` and ``pruned``, the speed-up
    (base median / pruned median), the MAC reduction (``macs_base / macs_pruned``) and their ratio
    (speed-up / MAC reduction). Raises ``ValueError`` naming the argument that is wrong."""
    for key, value in (("macs_base", macs_base), ("macs_pruned", macs_pruned)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"{key} must be a positive number, got {value!r}")
    cells = measurement.get("cells") if isinstance(measurement, Mapping) else None
    if not isinstance(cells, list):
        raise ValueError("measurement must be a result of measure_latency (a mapping with 'cells')")
    for key, name in (("base", base), ("pruned", pruned)):
        if any(name not in c["ms"] for c in cells):
            raise ValueError(f"{key}={name!r} is not a network of the measurement")
    reduction = macs_base / macs_pruned
    table = []
    for c in cells:
        speedup = c["ms"][base]["median"] / c["ms"][pruned]["median"]
        table.append({"batch": c["batch"], "threads": c["threads"], "repeats": c["repeats"], "warmup": c.get("warmup"),
                      "base_ms": c["ms"][base], "pruned_ms": c["ms"][pruned], "speedup": speedup,
                      "mac_reduction": reduction, "ratio": speedup / reduction})
    return table


def latency_report(base: nn.Module, pruned: nn.Module, input_shape: Sequence[int], macs_base: int,
                   macs_pruned: int, devices: Sequence[str] = ("cpu",), **options: Any) -> dict[str, Any]:
    """``measure_latency`` of ``{"base": base, "pruned": pruned}`` on each of ``devices`` with its
    ``speedup_table`` as the cells: ``{device: {settings..., "cells": [...]}}``. The CPU is measured
    at ``THREADS`` (one and all threads); a GPU at all threads only (they only launch its work).
    ``options`` go to ``measure_latency``."""
    out, cpu_threads = {}, options.pop("threads", THREADS)
    for dev in devices:
        kind = _device(dev).type
        threads = cpu_threads if kind == "cpu" else (None,)
        m = measure_latency({"base": base, "pruned": pruned}, input_shape, threads=threads, device=dev, **options)
        out[kind] = {**{k: v for k, v in m.items() if k != "cells"}, "macs": {"base": macs_base, "pruned": macs_pruned},
                     "cells": speedup_table(m, macs_base, macs_pruned)}
    return out
