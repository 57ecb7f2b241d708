"""The one prune → fine-tune → evaluate path of every command and benchmark.

``prune_and_finetune(net, keep, data, finetune)``:

1. surgery: a physically smaller copy of ``net`` keeping the units ``keep[l]`` of every layer l
   (``pruning.surgery.prune_units``), checked against the masked network on a random batch
   drawn with ``seed`` (``verify_surgery``: max |pruned(x) - masked(x)| within tolerance);
2. its size (parameters, MACs, widths of the switched layers) and its error and mean negative
   log-likelihood on the ``splits`` of ``data``;
3. fine-tuning of every parameter with ``training.train`` (the best validation epoch is kept);
4. the error and NLL on the same splits again.

``net`` is not changed; the result holds the pruned, fine-tuned network on ``finetune.device``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from torch import nn

from .data import DataBundle
from .metrics import network_size
from .models.switch_points import SwitchPoint, rebind, switch_points
from .pruning.surgery import prune_units, verify_surgery
from .runstate import RunState
from .training import TrainConfig, TrainResult, evaluate, train

SPLITS = ("test", "val")


@dataclass
class PruneResult:
    """What ``prune_and_finetune`` did. ``size``: ``{"params", "macs", "arch"}`` of the pruned
    network (``arch`` the widths of its switched layers, ``"6-8-40-20"``); ``pruned`` and
    ``finetuned``: ``{split: {"error", "nll"}}`` after surgery and after fine-tuning;
    ``seconds``: ``{"surgery", "finetune"}``."""

    net: nn.Module
    keep: dict[str, list[int]]
    points: list[SwitchPoint]
    surgery_max_abs_diff: float
    size: dict
    pruned: dict[str, dict[str, float]]
    finetuned: dict[str, dict[str, float]]
    training: TrainResult
    seconds: dict[str, float] = field(default_factory=dict)

    def metrics(self, stage: str) -> dict:
        """``size`` and the split metrics of ``stage`` (``"pruned"`` or ``"finetuned"``) in one
        dict: ``{"params", "macs", "arch", "test": {...}, "val": {...}}``."""
        if stage not in ("pruned", "finetuned"):
            raise ValueError(f"stage must be 'pruned' or 'finetuned', got {stage!r}")
        return {**self.size, **getattr(self, stage)}


def _evaluate(net: nn.Module, data: DataBundle, splits: Sequence[str]) -> dict[str, dict[str, float]]:
    return {s: evaluate(net, getattr(data, s)) for s in splits}


def prune_and_finetune(
    net: nn.Module,
    keep: Mapping[str, Sequence[int]],
    data: DataBundle,
    finetune: TrainConfig,
    points: Sequence[SwitchPoint] | None = None,
    *,
    seed: int = 0,
    splits: Sequence[str] = SPLITS,
    state: RunState | None = None,
    desc: str = "fine-tune",
    progress: bool = True,
) -> PruneResult:
    """Prune ``net`` to ``keep``, check the surgery, fine-tune with ``finetune`` and evaluate on
    ``splits`` before and after (module docstring). ``points``: the switch points of ``net``
    (default: the ones it declares, or discovery finds); ``seed``: the surgery check's batch;
    ``state``: a ``RunState`` that fine-tuning saves to and resumes from. With
    ``finetune.distill`` the network before surgery is the teacher; ``progress``: fine-tuning's
    (``finetune``). Raises
    ``NumericalError`` when the surgery check fails, ``ValueError`` naming ``splits`` or
    ``finetune`` when they are wrong."""
    if not isinstance(finetune, TrainConfig):
        raise TypeError(f"finetune must be a TrainConfig, got {type(finetune).__name__}")
    bad = [s for s in splits if s not in ("train", "val", "test")]
    if bad or isinstance(splits, str):
        raise ValueError(f"splits must name train, val or test, got {splits!r}")
    finetune.validate()
    shape = tuple(data.input_shape)
    t = time.perf_counter()
    pruned = prune_units(net, keep, shape, points)
    diff = verify_surgery(net, pruned, keep, shape, seed=seed, points=points)
    pruned_points = rebind(switch_points(net, shape) if points is None else points, net, pruned)
    surgery_seconds = time.perf_counter() - t
    pruned.to(finetune.device)
    size = network_size(pruned, shape, pruned_points)
    before = _evaluate(pruned, data, splits)
    t = time.perf_counter()
    result = train(pruned, data, finetune, desc=desc, state=state, teacher=net if finetune.distill else None,
                   progress=progress)
    finetune_seconds = time.perf_counter() - t
    return PruneResult(net=pruned, keep={k: list(v) for k, v in keep.items()}, points=pruned_points,
                       surgery_max_abs_diff=diff, size=size, pruned=before, finetuned=_evaluate(pruned, data, splits),
                       training=result, seconds={"surgery": surgery_seconds, "finetune": finetune_seconds})
