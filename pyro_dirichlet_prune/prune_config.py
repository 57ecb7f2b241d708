"""``PruneConfig``: the options of a ``prune`` run (``pipeline.run_prune``), and the defaults of
its cut-off. The training defaults live in one place, ``pretraining.train_defaults``: a config
that is given no ``finetune`` recipe fine-tunes with the one of its model and data set
(``finetune_recipe``), which is also what the command line starts from."""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UserError
from .inference.svi import SwitchConfig
from .pretraining import train_defaults
from .pruning.cutoff import DELTA, TAU
from .pruning.cutoffs import Cutoff
from .pruning.decision import DEFAULT_EXAMPLES
from .training import TrainConfig

CUTOFFS = ("uncertainty", "budget", "arch", "rate", "decision")
DEFAULT_MODEL = "lenet5"


@dataclass
class PruneConfig:
    """Options of ``run_prune``. ``model`` names a registered network (default ``lenet5`` when no
    ``model_file`` is given); ``model_file`` (a whole pickled ``nn.Module``; unpickling runs
    arbitrary code, so only a trusted file) replaces ``model`` and ``checkpoint``, and giving it
    with ``model`` is an error; its input shape is ``input_shape`` (e.g. ``"3,32,32"``; default
    the data set's). ``layers`` names the layers to switch (default: all that the model declares,
    or that discovery finds). ``ranking`` names the ``pruning.ranking`` that orders the units for
    the ``arch`` and ``rate`` cut-offs (None: ``posterior-mean``, E_q[s_l] of the switch fit).
    ``cutoff``: a cut-off name (implied by ``arch``, ``rate``, ``target_macs``/``target_params``
    or ``lam`` when None; ``uncertainty`` when none of them is given), or a ``Cutoff`` object
    (``pruning.cutoffs``), a user's own included, which then carries its own settings.
    ``finetune``: the fine-tuning recipe, None for the model's and data set's default
    (``finetune_recipe()``). ``latency``: measure the base and the pruned network's forward
    passes (``latency.latency_report``: CPU, and the GPU too with ``device="cuda"``) into the
    report's ``latency``."""

    model: str | None = None
    dataset: str = "mnist"
    data_dir: str | None = None
    checkpoint: str | None = None
    switch: SwitchConfig = field(default_factory=SwitchConfig)
    cutoff: str | Cutoff | None = None
    arch: str | None = None
    rate: float | None = None
    tau: float = TAU
    delta: float = DELTA
    target_macs: int | None = None
    target_params: int | None = None
    finetune: TrainConfig | None = None
    seed: int = 0
    val_size: int = 5000
    split_seed: int = 0
    max_train_examples: int | None = None
    model_file: str | None = None
    input_shape: str | None = None
    layers: list[str] | None = None
    device: str = "cpu"
    ranking: str | None = None
    latency: bool = True
    lam: float | None = None
    decision_measure: str = "macs+params"
    decision_examples: int = DEFAULT_EXAMPLES
    decision_draws: int = 0
    rounds: int = 1

    def __post_init__(self) -> None:
        if self.model_file is not None and self.model is not None:
            raise UserError(f"give model or model_file, not both (model {self.model!r}, model_file "
                            f"{self.model_file!r}): a model file is the whole network")
        if self.model_file is None and self.model is None:
            self.model = DEFAULT_MODEL
        if self.finetune is not None and not isinstance(self.finetune, TrainConfig):
            raise TypeError(f"finetune must be a TrainConfig or None, got {type(self.finetune).__name__}")

    def finetune_recipe(self) -> TrainConfig:
        """``finetune``, or the default recipe of the model and data set (``train_defaults``)."""
        if self.finetune is not None:
            return self.finetune
        return TrainConfig(**train_defaults(self.model, self.dataset, "finetune"))
