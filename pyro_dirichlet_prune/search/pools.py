"""Pools of architectures to search: the built-in ``lenet5-108`` grid of Fig. 3, or a text file
with one architecture per line."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable, Mapping

from ..errors import UserError
from ..pruning.cutoff import arch_string, parse_arch, rate_widths

POOLS = ("lenet5-108",)


def lenet5_108() -> list[str]:
    """The 108 LeNet-5 architectures of Fig. 3: (c1, c2, f1, f2) in {4,5,6} × {6,7,8} ×
    {35,40,45,50} × {15,17,20}, in lexicographic order."""
    grid = itertools.product((4, 5, 6), (6, 7, 8), (35, 40, 45, 50), (15, 17, 20))
    return ["-".join(map(str, a)) for a in grid]


def parse_pool_text(text: str, widths: Mapping[str, int], source: str = "pool", item: str = "line") -> list[str]:
    """Architectures of a pool file: one per line, ``#`` starts a comment, blank lines are
    ignored. Each is validated against the network's ``widths``; errors name the line."""
    archs: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            arch = arch_string(parse_arch(line, widths))
        except UserError as exc:
            raise UserError(f"{source} {item} {lineno}: {exc}") from None
        if arch in seen:
            raise UserError(f"{source} {item} {lineno}: architecture {arch} repeats {item} {seen[arch]}")
        seen[arch] = lineno
        archs.append(arch)
    if not archs:
        raise UserError(f"{source} holds no architecture")
    return archs


def uniform_rates(text: str, widths: Mapping[str, int]) -> list[str]:
    """The architectures that remove a fraction ``r`` of every layer (``pruning.cutoff.rate_widths``),
    one per comma-separated rate of ``text`` such as ``"0.3,0.5"``: the uniform-rate pool of any
    network, e.g. a VGG-16 at about 2x and 4x fewer MACs."""
    rates = _numbers(text, f"rates:{text}")
    archs = []
    for rate in rates:
        arch = arch_string(rate_widths(rate, widths))  # UserError for a rate outside [0, 1)
        if arch in archs:
            raise UserError(f"pool rates:{text}: rate {rate:g} gives {arch} again")
        archs.append(arch)
    return archs


def _numbers(text: str, spec: str) -> list[float]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        values = [float(t) for t in items]
    except ValueError:
        values = []
    if not values:
        raise UserError(f"pool {spec}: expected comma-separated numbers such as {spec.split(':')[0]}:2,4")
    return values


def macs_rates(text: str, widths: Mapping[str, int], macs: Callable[[Mapping[str, int]], int]) -> list[str]:
    """For every factor F of ``text`` (``"2,4"``), the uniform-rate architecture (``rate_widths``)
    with the smallest rate, to 0.001, whose MACs are at most 1/F of the whole network's: the pool
    of "F times fewer MACs" for any network. ``macs(kept)`` counts the MACs of the network keeping
    ``kept[l]`` units of each layer (``pruning.budget.size_function``)."""
    base = macs(dict(widths))
    archs = []
    for factor in _numbers(text, f"macs:{text}"):
        if not factor > 1:
            raise UserError(f"pool macs:{text}: factors must be above 1, got {factor:g}")
        target = base / factor
        if macs(rate_widths(0.999, widths)) > target:
            raise UserError(f"pool macs:{text}: no uniform rate reaches {factor:g}x fewer MACs than {base}")
        lo, hi = 0, 999  # rate lo/1000 is above the target, hi/1000 meets it
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if macs(rate_widths(mid / 1000, widths)) <= target else (mid, hi)
        arch = arch_string(rate_widths(hi / 1000, widths))
        if arch in archs:
            raise UserError(f"pool macs:{text}: factor {factor:g} gives {arch} again")
        archs.append(arch)
    return archs


def load_pool(spec: str, widths: Mapping[str, int], every: int = 1,
              macs: Callable[[Mapping[str, int]], int] | None = None) -> list[str]:
    """The architectures of pool ``spec`` (a name in ``POOLS``, ``rates:R1,R2,...`` for uniform
    rates, ``uniform_rates``, ``macs:F1,F2,...`` for F times fewer MACs, ``macs_rates``, which needs
    ``macs``, or a text file), every ``every``-th one kept (the 1st, the (1+every)-th, ...)."""
    if every < 1:
        raise UserError(f"every must be a positive integer, got {every}")
    if spec == "lenet5-108":
        archs = parse_pool_text("\n".join(lenet5_108()), widths, source="pool lenet5-108", item="architecture")
    elif spec.startswith("rates:"):
        archs = uniform_rates(spec[len("rates:"):], widths)
    elif spec.startswith("macs:"):
        if macs is None:
            raise UserError(f"pool {spec}: counting MACs needs the network (load_pool's macs)")
        archs = macs_rates(spec[len("macs:"):], widths, macs)
    else:
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"pool {spec!r} is neither a built-in pool ({', '.join(POOLS)}), rates:R1,R2,..., "
                            f"macs:F1,F2,... nor a file")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read pool file {path} ({type(exc).__name__})") from None
        archs = parse_pool_text(text, widths, source=f"pool file {path}")
    return archs[::every]
