"""The settings of a search (``SearchConfig``), the switch settings of its switch rankings, and
the rankings themselves (``SearchConfig.ranking``: ``pruning.ranking.get_ranking``)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import UserError
from ..inference.svi import SwitchConfig
from ..pruning.baselines import BASELINES, FISHER_BATCH_SIZE, FISHER_BATCHES
from ..pruning.ranking import RANKINGS, Ranking, get_ranking
from ..training import TrainConfig

DIRICHLET_METHODS = ("dirichlet", "dirichlet-mean")
"""The search's rankings that fit switches, each with the guide of its name."""
METHODS = (*DIRICHLET_METHODS, *BASELINES)
"""The rankings a search compares by default; any name of ``pruning.ranking.RANKINGS`` can be searched."""
DEFAULT_FINETUNE_EPOCHS = 2
FINETUNE_LR = 2e-3
AUGMENT_SHIFT = 2


@dataclass
class SearchConfig:
    """Settings of a search. ``methods`` are names of ``pruning.ranking.RANKINGS``. ``switch``
    holds extra ``SwitchConfig`` fields (e.g. ``scale``, ``schedule``) for the rankings that fit
    switches; ``guide`` and ``seed`` are set by the search (the method and the seed). ``finetune``
    holds ``TrainConfig`` fields that override every record's brief fine-tuning (Adam at
    ``finetune_lr``, cosine decay, shifts of ``augment_shift``), e.g. the SGD recipe of
    ``pretraining.train_defaults`` for a VGG-16; ``epochs`` (``finetune_epochs``) and ``seed``
    (each record's) are set by the search (``train_config``)."""

    model: str = "lenet5"
    dataset: str = "mnist"
    data_dir: str | None = None
    checkpoint: str | None = None
    pool: str = "lenet5-108"
    every: int = 1
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    finetune_epochs: int = DEFAULT_FINETUNE_EPOCHS
    finetune_lr: float = FINETUNE_LR
    augment_shift: int = AUGMENT_SHIFT
    switch: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    fisher_batches: int = FISHER_BATCHES
    fisher_batch_size: int = FISHER_BATCH_SIZE
    val_size: int = 5000
    split_seed: int = 0
    max_train_examples: int | None = None

    def validate(self) -> None:
        """Raise ``UserError`` (a ``ValueError``) naming the field that is out of range."""
        bad = [m for m in self.methods if m not in RANKINGS]
        if not self.methods or bad or len(set(self.methods)) != len(self.methods):
            raise UserError(f"methods must be distinct names from {', '.join(RANKINGS)}, got {self.methods}")
        if not self.seeds or any(int(s) < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"seeds must be distinct non-negative integers, got {self.seeds}")
        if self.finetune_epochs < 0 or self.augment_shift < 0:
            raise UserError(f"finetune_epochs and augment_shift must be non-negative, got {self.finetune_epochs} "
                            f"and {self.augment_shift}")
        if not (self.finetune_lr > 0 and math.isfinite(self.finetune_lr)):
            raise UserError(f"finetune_lr must be positive, got {self.finetune_lr}")
        if self.fisher_batches < 1 or self.fisher_batch_size < 1:
            raise UserError(f"fisher_batches and fisher_batch_size must be positive, got {self.fisher_batches} "
                            f"and {self.fisher_batch_size}")
        if self.val_size < 1:
            raise UserError(f"val_size must be positive, got {self.val_size}: the search needs a validation split "
                            f"(fine-tuning keeps the best validation epoch)")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise UserError(f"max_train_examples must be positive, got {self.max_train_examples}")
        for method in self.methods:
            self.ranking(method)
        self.train_config(0)

    def train_config(self, seed: int) -> TrainConfig:
        """The fine-tuning of every record of ``seed``: ``finetune_epochs`` epochs of Adam at
        ``finetune_lr``, cosine decay, shifts of ``augment_shift``, with ``finetune``'s fields over
        them; ``UserError`` naming a field that ``TrainConfig`` lacks or that the search sets."""
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(self.finetune) - names)
        if unknown:
            raise UserError(f"unknown finetune settings {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        fixed = sorted(set(self.finetune) & {"epochs", "seed"})
        if fixed:
            raise UserError(f"finetune settings {', '.join(fixed)} are set by the search (finetune_epochs and the seed)")
        base = {"lr": self.finetune_lr, "augment_shift": self.augment_shift}
        try:
            tcfg = TrainConfig(**{**base, **self.finetune, "epochs": self.finetune_epochs, "seed": int(seed)})
            tcfg.validate()
            return tcfg
        except (TypeError, ValueError) as exc:
            raise UserError(f"finetune: {exc}") from None

    def ranking(self, method: str) -> Ranking:
        """The ranking registered as ``method`` with this search's switch settings
        (``switch_settings``) and Fisher batches; ``UserError`` naming the method if they do not
        suit it."""
        try:
            return get_ranking(method, switch=switch_settings(self.switch), fisher_batches=self.fisher_batches,
                               fisher_batch_size=self.fisher_batch_size)
        except UserError:
            raise
        except ValueError as exc:
            raise UserError(f"{method}: {exc}") from None


def switch_settings(overrides: Mapping[str, Any]) -> SwitchConfig:
    """The ``SwitchConfig`` defaults with ``overrides``, checked; the guide and the seed are not
    among them (each switch ranking sets its guide, each record its seed)."""
    names = {f.name for f in dataclasses.fields(SwitchConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UserError(f"unknown switch settings {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    fixed = sorted(set(overrides) & {"guide", "seed"})
    if fixed:
        raise UserError(f"switch settings {', '.join(fixed)} are set by the search (method and seed)")
    cfg = SwitchConfig(**dict(overrides))
    try:
        cfg.validate()
    except ValueError as exc:
        raise UserError(f"switch: {exc}") from None
    return cfg
