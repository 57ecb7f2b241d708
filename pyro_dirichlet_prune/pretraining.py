"""``dirichlet-prune pretrain``'s pipeline (``run_pretrain``), the training defaults of the models
(``train_defaults``) and the set-up that every run shares: seeding and the training subset."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyro

from .data import DataBundle, Split, dataset_spec, load_data
from .errors import UserError
from .metrics import count_macs, count_params
from .inputs import pad_images
from .models import build_model, check_model_name, default_widths, model_input_size
from .models.checkpoint import save_checkpoint
from .models.common import scale_widths
from .pruning.cutoff import parse_widths
from .report import check_output, now, output_folder, versions, write_json
from .runstate import RunState
from .devices import check_device
from .training import TrainConfig, evaluate, train


def seed_everything(seed: int) -> None:
    """Seed torch's, Python's and NumPy's global generators (``pyro.set_rng_seed``)."""
    pyro.set_rng_seed(seed)


def subset_train(data: DataBundle, max_train: int | None) -> DataBundle:
    """``data`` with its training split cut to the first ``max_train`` examples (None: all)."""
    if not max_train or max_train >= len(data.train):
        return data
    if max_train < 1:
        raise UserError(f"max_train_examples must be positive, got {max_train}")
    return dataclasses.replace(data, train=Split(data.train.x[:max_train], data.train.y[:max_train]))


LENET_FINETUNE = {"optimizer": "adam", "lr": 2e-3, "weight_decay": 0.0, "epochs": 40, "schedule": "plateau"}
"""Fine-tuning of a pruned LeNet-5: Adam at 2e-3 on minibatches of 128, no distillation, for as
long as the validation split says (``schedule="plateau"``: the rate held until two epochs bring no
progress, cut tenfold twice, the next such plateau ends the run; 40 epochs at most). On MNIST at
6-8-40-20 it ran 12-15 epochs at 0.76 ± 0.03% test error over seeds 0-2, where the fixed 40-epoch
cosine gave 0.84 ± 0.07%; distillation lowered the validation error by 0.05 points at 1.6 times
the time an epoch (docs/finetuning.md)."""

LENET_FINETUNE_BY_DATASET = {"fashion-mnist": {"epochs": 80, "lr": 5e-3}}
"""What a pruned LeNet-5's fine-tuning changes by data set. On Fashion-MNIST the plateau schedule
at 5e-3 had the lower validation error at 6-8-40-20 over seeds 0-2 (10.95% against 11.47% at
2e-3, running 12-20 epochs), with at most 80 epochs; the fixed 80-epoch cosine it replaces gave
10.09% validation and 9.98% test error at five times the fine-tuning time (docs/finetuning.md)."""


def train_defaults(model: str | None, dataset: str, stage: str) -> dict:
    """The training options a model gets unless told otherwise (``stage``: ``pretrain`` or
    ``finetune``). The LeNets: Adam without weight decay, lr 2e-3, minibatches of 128; 20
    pre-training epochs with cosine decay, and fine-tuning on the plateau schedule, for at most
    40 epochs (``LENET_FINETUNE``; on Fashion-MNIST lr 5e-3 and 80 at most,
    ``LENET_FINETUNE_BY_DATASET``). VGG-16, WRNs and user networks
    (``model`` None): SGD with Nesterov momentum 0.9, weight decay 5e-4, lr 0.1 for 200
    pre-training epochs and 0.01 for 40 fine-tuning epochs, cosine decay, no distillation,
    channels-last memory order (faster on a CPU: ``training.finetune``).
    Augmentation follows the data: random crop of the 4-pixel zero-padded image and horizontal
    flip for 3-channel (CIFAR) images, a random shift by up to 2 pixels otherwise."""
    if stage not in ("pretrain", "finetune"):
        raise ValueError(f"unknown training stage {stage!r}")
    cifar = dataset_spec(dataset)[0][0] == 3
    augment = {"augment_shift": 0, "augment_crop": 4, "augment_flip": True} if cifar else \
        {"augment_shift": 2, "augment_crop": 0, "augment_flip": False}
    if model is not None and model.startswith("lenet5"):
        optim = {"optimizer": "adam", "lr": 2e-3, "weight_decay": 0.0, "epochs": 20} if stage == "pretrain" else \
            LENET_FINETUNE | LENET_FINETUNE_BY_DATASET.get(dataset, {})
    else:
        optim = {"optimizer": "sgd", "lr": 0.1 if stage == "pretrain" else 0.01, "weight_decay": 5e-4,
                 "epochs": 200 if stage == "pretrain" else 40, "channels_last": True}
    return optim | augment


@dataclass
class PretrainConfig:
    model: str = "lenet5"
    dataset: str = "mnist"
    data_dir: str | None = None
    widths: str | None = None
    width_multiplier: float | None = None
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, lr=2e-3, augment_shift=2))
    val_size: int = 5000
    split_seed: int = 0
    max_train_examples: int | None = None
    image_size: int | None = None
    """Zero-pad the images to this square size (``inputs.pad_images``); None: the size the model
    is built for (``models.model_input_size``: 32 for VGG-16 and the WRNs), else the data's."""


def run_pretrain(
    cfg: PretrainConfig, out: str | Path, overwrite: bool = False, resume: bool = False, checkpoint_every: int = 100
) -> dict:
    """Train ``cfg.model`` from scratch; writes ``model.pt`` and ``report.json`` into ``out``.
    Training saves its state every ``checkpoint_every`` steps; ``resume`` continues a killed run."""
    check_model_name(cfg.model)
    widths = None
    if cfg.widths and cfg.width_multiplier is not None:
        raise UserError("give widths or width_multiplier, not both")
    if cfg.width_multiplier is not None:
        try:
            widths = list(scale_widths(default_widths(cfg.model), cfg.width_multiplier))
        except ValueError as exc:
            raise UserError(f"width_multiplier: {exc}") from None
    if cfg.widths:
        widths = parse_widths(cfg.widths)
        try:
            build_model(cfg.model, widths)
        except ValueError as exc:
            raise UserError(f"widths {cfg.widths}: {exc}") from None
    try:
        cfg.train.validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    check_device(cfg.train.device)
    size = cfg.image_size if cfg.image_size is not None else model_input_size(cfg.model)
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise UserError(f"image_size must be a positive int, got {size!r}")
    check_output(out, overwrite, resume)
    seed_everything(cfg.train.seed)
    data = subset_train(load_data(cfg.dataset, cfg.data_dir, cfg.val_size, cfg.split_seed), cfg.max_train_examples)
    if size is not None:
        try:
            data = pad_images(data, size)
        except ValueError as exc:
            raise UserError(f"image_size: {exc}") from None
    with output_folder(out, overwrite, resume) as tmp:
        state = RunState(tmp, checkpoint_every, config=dataclasses.asdict(cfg))
        if resume:
            state.load()
        net = build_model(cfg.model, widths, data.num_classes, data.input_shape[0])
        t0 = time.perf_counter()
        result = train(net, data, cfg.train, desc=f"pretrain {cfg.model}", state=state, loop="pretrain")
        seconds = time.perf_counter() - t0
        metrics = {
            "val": evaluate(net, data.val),
            "test": evaluate(net, data.test),
            "params": count_params(net),
            "macs": count_macs(net, data.input_shape),
            "widths": list(net.widths),
            "best_epoch": result.best_epoch,
            "history": result.history,
            "seconds": seconds,
        }
        save_checkpoint(
            tmp / "model.pt", net, cfg.model, cfg.dataset, data.num_classes, data.input_shape,
            meta={"test_error": metrics["test"]["error"], "train_config": dataclasses.asdict(cfg.train)},
        )
        report = {
            "command": "pretrain",
            "created": now(),
            "config": dataclasses.asdict(cfg),
            "data": {"source": data.source, "train": len(data.train), "val": len(data.val), "test": len(data.test),
                     "input_shape": list(data.input_shape)},
            "metrics": metrics,
            "resumed": resume,
            "resumed_from": state.resumed_from,
            "versions": versions(),
        }
        write_json(tmp / "report.json", report)
    return report
