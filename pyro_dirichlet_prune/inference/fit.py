"""``fit``: the SVI loop for those who do not write their own.

It maximises the ELBO of a ``SwitchModel`` under a guide over the minibatches of any iterable
of ``(x, y)`` or ``(x, y, idx)`` batches (a ``torch`` ``DataLoader``, or ``data.SplitLoader`` for
tensors in memory), one layer at a time (``schedule="sequential"``, the default and the paper's:
input layer first; while layer l learns the other layers carry no switch, i.e. the pre-trained
network) or all layers jointly, with the numerical guards of this package and resumable state.

A step is Pyro's SVI step written as Pyro's ``examples/svi_lightning.py`` writes it: the ELBO as
a module (``Trace_ELBO()(model, guide)``, whose parameters are the guide's module-local ones),
its differentiable loss backward, and one ``torch.optim.Adam`` step; the same module is what DDP
wraps across processes (``distributed``). Its update is ``SVI(model, guide, pyro.optim.Adam,
loss).step``'s (Adam works element by element), without the per-step parameter capture. Pyro's
validation checks (site shapes, model/guide agreement, NaN warnings) run on the first step of
every stage, where a wrong guide shows itself; later steps skip them, and the numerical guard
checks every step's loss and gradients.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Iterable, Sequence

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.util import is_validation_enabled, torch_item

from .. import distributed
from ..data import split_batch
from ..errors import NumericalError
from ..loop import Checkpoint, EpochLoop, LoopCallback, Progress, as_callbacks
from ..models.switched import SwitchModel
from ..runstate import LoopPosition, RunState, open_loop
from .callbacks import Callback, FitResult, FitStep
from .frozen_head import FrozenHeads
from .guards import CollapseGuard, NonFiniteStep, diagnose_nonfinite
from .guides import DirichletGuide, all_layers, follows_active_layers

SCHEDULES = ("joint", "sequential")
DEFAULT_SCHEDULE = "sequential"
"""The paper's: one layer at a time, input first (``fit``, ``SwitchConfig`` and the command line)."""


def _adam(guide, lr: float, weight_lr: float) -> torch.optim.Adam:
    """``torch.optim.Adam`` over the guide's parameters at ``lr``, the learned weights a guide holds
    (``PointWeights``) in a group of their own at ``weight_lr``: they learn far more slowly than
    the concentrations. Adam works element by element, so this is the update of Pyro's
    per-parameter ``pyro.optim.Adam``; parameters without a gradient (layers that sit out a
    stage) are left alone."""
    weights = getattr(guide, "point_weights", None)
    held = {id(p) for p in weights.parameters()} if weights is not None else set()
    groups = [{"params": [p for p in guide.parameters() if id(p) not in held], "lr": lr}]
    if held:
        groups.append({"params": list(weights.parameters()), "lr": weight_lr})
    return torch.optim.Adam([g for g in groups if g["params"]])


def _step(elbo: torch.nn.Module, optimizer: torch.optim.Optimizer, *args, validate: bool = True) -> float:
    """One SVI step in plain PyTorch: the ELBO module's ``differentiable_loss`` (one rank's share of
    the minibatch under DDP, which averages the gradients), backward, and the optimiser's step,
    which is not taken when the loss or a gradient is not finite (``NonFiniteStep``): the guide
    keeps its last good state. Returns the loss (the ranks' mean across processes). Without
    ``validate`` Pyro's validation checks are off for the step (``fit`` validates the first step
    of every stage; the guard above checks every step)."""
    optimizer.zero_grad(set_to_none=True)
    with pyro.validation_enabled(validate and is_validation_enabled()):
        local = elbo(*args)
    local.backward()
    loss = distributed.all_mean(torch_item(local)) if distributed.active() else torch_item(local)
    grads = [p.grad.reshape(-1) for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not math.isfinite(loss) or (grads and not bool(torch.isfinite(torch.cat(grads)).all())):  # one sync
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteStep(loss, "the ELBO" if not math.isfinite(loss) else "its gradient")
    optimizer.step()
    return loss


def fit(
    model: SwitchModel,
    guide,
    data: Iterable,
    *,
    epochs: int = 1,
    schedule: str = DEFAULT_SCHEDULE,
    loss=None,
    lr: float = 0.05,
    num_particles: int = 1,
    seed: int | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 100,
    state: RunState | None = None,
    loop: str = "switches",
    weight_lr: float = 1e-3,
    callback: Callback | LoopCallback | Sequence[Callback | LoopCallback] | None = None,
    lr_decay: float = 0.0,
    heads: FrozenHeads | None = None,
) -> FitResult:
    """Fit ``guide`` to ``model`` by SVI with Adam(lr) over ``epochs`` passes of ``data``.

    Args:
        model: the ``SwitchModel``.
        guide: any guide of it: ``DirichletGuide``, ``LayerwiseGuide``, or a Pyro autoguide
            (``AutoNormal(model)``, ...) for the joint schedule.
        data: an iterable of ``(x, y)`` or ``(x, y, idx)`` minibatches, e.g. a ``DataLoader``.
        schedule: ``"sequential"`` (the default, the paper's: one layer after another, ``epochs``
            passes each; needs a guide that samples the active layers only: ``DirichletGuide``,
            ``LayerwiseGuide`` or ``ModuleLocal``) or ``"joint"`` (all layers at once; a model
            with learned weights needs it).
        loss: the ELBO, default ``Trace_ELBO(num_particles)``; ``MeanSwitchELBO()`` for the mean variant.
        lr: Adam's learning rate of the guide's parameters; ``weight_lr`` that of the learned
            weights of a model with ``weight_scale`` (a ``DirichletGuide``'s ``point_weights``).
        seed: seeds Pyro's (and torch's) generators first, when given.
        progress: show progress on stderr: a bar on a terminal, else one line per epoch (``Progress``).
        callback: a callable, or a list of them, called after every step with a ``FitStep``;
            one that returns True ends the current stage there (e.g. a convergence rule; the
            stage's ``stopped`` is then True). A ``loop.LoopCallback`` is also told every epoch
            end (``on_epoch_end``) and closed when the stage ends. A callback that raises stops the fit, the guide
            keeping its state after the last step taken.
        checkpoint: a folder where the loop saves its state every ``checkpoint_every`` steps and
            at every epoch end; when a state is there, the loop continues from it, to the same
            result as an uninterrupted run when ``data`` can restore its position
            (``state_dict``/``load_state_dict``) or reshuffles from torch's global generator, as a
            ``DataLoader(shuffle=True)`` without its own generator does.
        checkpoint_every: steps between two saves of the state.
        state: a ``runstate.RunState`` shared by several loops of one run (the command line's
            ``prune`` keeps switch learning and fine-tuning in one state file); ``checkpoint``
            makes one for this fit alone. ``loop`` is this fit's name in that state.
        heads: under the layer-by-layer schedule, ``FrozenHeads`` of the network on the split that
            ``data``'s ``(x, y, idx)`` minibatches index (a ``SplitLoader`` over it): each stage
            computes the layers below its switch once and its steps run only the rest
            (``SwitchModel.computing_below``; the same ELBO, checked per minibatch).

    Returns a ``FitResult`` (the losses and every stage's steps, epochs and time).

    Under ``torchrun`` (a process group of several ranks, ``pyro_dirichlet_prune.distributed``),
    each rank fits on the minibatches of ``data`` it is given (its share of each global
    minibatch: ``distributed.sharded(loader)``) and DDP averages the guide's gradients; with the
    same seed on every rank the fit is the one-process fit of the global minibatches.

    Raises ``NumericalError`` naming the layer and step if the ELBO stops being finite, or if
    every concentration of a layer of a ``DirichletGuide`` collapses to the floor (checked at
    every epoch end).
    """
    if not isinstance(model, SwitchModel):
        raise TypeError(f"model must be a SwitchModel, got {type(model).__name__}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if schedule == "sequential" and not follows_active_layers(guide):
        raise ValueError("schedule 'sequential' needs a guide that samples the active layers only: a DirichletGuide, "
                         "LayerwiseGuide(model, factory), ModuleLocal(autoguide), or a guide whose "
                         "follows_active_layers attribute is True")
    for name, value in (("epochs", epochs), ("num_particles", num_particles), ("checkpoint_every", checkpoint_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    for name, value in (("lr", lr), ("weight_lr", weight_lr)):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be positive, got {value}")
    if isinstance(lr_decay, bool) or not isinstance(lr_decay, (int, float)) or not 0 <= lr_decay <= 1:
        raise ValueError(f"lr_decay must be a number in [0, 1], got {lr_decay!r}")
    if lr_decay and not hasattr(data, "__len__"):
        raise ValueError("lr_decay: the decay's time scale is one epoch, len(data); give data with a length")
    callbacks = as_callbacks(callback)
    if model.weight_prior is not None and schedule != "joint":
        raise ValueError("schedule: a model with learned weights (weight_scale) needs schedule='joint': layer by "
                         "layer, the weights would learn under one layer's switch and then lose it")
    if model.weight_prior is not None and not isinstance(guide, DirichletGuide):
        raise ValueError("guide: a model with learned weights (weight_scale) needs a DirichletGuide, which holds "
                         "their point estimate")
    state, saved = open_loop(state, checkpoint, checkpoint_every, loop)
    if loss is None:
        loss = Trace_ELBO(num_particles=num_particles, vectorize_particles=False)
    stages = [list(model.layers)] if schedule == "joint" else [[layer] for layer in model.layers]
    if seed is not None:
        pyro.set_rng_seed(seed)
    result = FitResult()
    stage_index, seconds_before, optim_state, at = 0, 0.0, None, LoopPosition()
    if saved is not None:
        _warm_up(model, guide, data)
        guide.load_state_dict(saved["guide"], strict=False)
        result = FitResult(list(saved["losses"]), list(saved["stages"]), saved["seconds"])
        if saved.get("done"):
            return result
        at = LoopPosition.restored(saved)
        stage_index, optim_state, seconds_before = saved["stage"], saved["optim"], saved["seconds"]
    elbo = _elbo_module(model, guide, loss, data, unused=len(stages) > 1)
    start = time.perf_counter()
    for stage_index in range(stage_index, len(stages)):
        layers = stages[stage_index]
        label = "+".join(layers)
        optimizer = _adam(guide, lr, weight_lr)  # a fresh one each stage
        bases = [group["lr"] for group in optimizer.param_groups]  # before a resumed state's decayed ones
        if optim_state is not None:
            optimizer.load_state_dict(optim_state)
            optim_state = None

        def event(epoch: int, step: int, loss: float, epoch_end: bool, stage=stage_index, layers=layers) -> FitStep:
            return FitStep(epoch, step, loss, epoch_end, stage, layers, model, guide, result)

        per_epoch = len(data) if hasattr(data, "__len__") else None
        loop_ = EpochLoop(data, epochs, at, at.epoch * per_epoch + at.batch if per_epoch is not None else 0, event)
        first = loop_.steps  # Pyro's validation checks run on the stage's first step (or the first after a resume)

        def snapshot(done: bool = False, loop_=loop_, optimizer=optimizer) -> dict:
            return {
                "done": done, "guide": copy.deepcopy(guide.state_dict()), "optim": copy.deepcopy(optimizer.state_dict()),
                **loop_.at.save(data), "stage": stage_index, "losses": list(result.losses),
                "stages": list(result.stages), "seconds": seconds_before + time.perf_counter() - start,
                "global_step": len(result.losses),
            }

        def step(x, y, *idx, loop_=loop_, optimizer=optimizer, label=label, bases=bases) -> float:
            if lr_decay:  # a function of the stage's step count alone: a resumed stage continues it exactly
                factor = (1 + loop_.steps / per_epoch) ** -lr_decay
                for group, base in zip(optimizer.param_groups, bases):
                    group["lr"] = base * factor
            try:
                value = _step(elbo, optimizer, x, y, *idx, validate=loop_.steps == first)
            except NonFiniteStep as bad:
                raise NumericalError(
                    f"{bad.what} became non-finite (loss {bad.loss}) at step {loop_.steps + 1} of switch learning "
                    f"({label}); that step was not applied, the guide keeps the state of step {loop_.steps}: "
                    f"{diagnose_nonfinite(model, guide, x, y, *idx)}"
                ) from None
            result.losses.append(value)
            return value

        watchers = [Progress(f"switches {label}", epochs * per_epoch if per_epoch is not None else None, loop_.steps,
                             epochs, progress), *callbacks]
        if isinstance(guide, DirichletGuide):
            watchers.append(CollapseGuard(guide, layers, label))
        if state is not None:
            watchers.append(Checkpoint(state, loop, snapshot, loop_, steps=lambda: len(result.losses)))
        t0 = time.perf_counter()
        head = heads.get(layers[0]) if heads is not None and len(layers) == 1 else None
        with model.switching(layers), model.computing_below(head):
            stopped = loop_.run(step, watchers)
        result.stages.append({"layers": layers, "steps": loop_.steps, "epochs": loop_.at.epoch,
                              "seconds": time.perf_counter() - t0, "stopped": stopped})
        at = loop_.at = LoopPosition()  # the next stage starts at its beginning (and is saved so)
        if state is not None:
            stage_index += 1
            state.save(loop, snapshot(done=stage_index == len(stages)))
    result.seconds = seconds_before + time.perf_counter() - start
    return result


def _elbo_module(model: SwitchModel, guide, loss, data: Iterable, unused: bool) -> torch.nn.Module:
    """The ELBO as a module, ``loss(model, guide)`` (Pyro's ``ELBOModule``: its forward is the
    differentiable loss, its parameters the guide's), wrapped in DDP when several ranks run
    (``distributed``; DDP broadcasts rank 0's parameters; layers that sit out a stage leave theirs
    unused). A lazily built guide (an autoguide) is run once first, so that its parameters exist
    for the optimiser and DDP."""
    _warm_up(model, guide, data)
    if not distributed.active():
        return loss(model, guide)
    if model.sampling != "shared":
        raise ValueError(f"model: sampling {model.sampling!r} draws one switch per example; across ranks that "
                         f"share a seed the draws of different examples would repeat. Use sampling='shared' with "
                         f"several processes")
    return distributed.ddp(loss(model, guide), find_unused_parameters=unused)


def _warm_up(model: SwitchModel, guide, data: Iterable) -> None:
    """Create a lazily built guide's parameters (autoguides) by running it once on a batch, with
    every layer switched; the random generators are left as they were."""
    if isinstance(guide, DirichletGuide):
        return
    with torch.random.fork_rng(), all_layers(model), poutine.block():
        if hasattr(data, "split"):  # a SplitLoader: leave its position alone
            x, y = data.split.x[: data.batch_size], data.split.y[: data.batch_size]
            guide(x, y)
        else:
            x, y, *idx = split_batch(next(iter(data)))
            guide(x, y, *idx)
