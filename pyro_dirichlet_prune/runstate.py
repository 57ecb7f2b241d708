"""Resumable loops: the state of switch learning and fine-tuning saved at an interval.

A run keeps one file, ``state.pt``, in its work folder. Each loop (``switches``,
``finetune``) stores under its own key everything needed to continue exactly where it
stopped: parameters, optimiser state, the data order of the current epoch, the position in
it, the random generators, the history so far. A loop that finished stores its result, so a
resumed run skips it. Every save is atomic (temporary file, then rename).

For tests, ``DIRICHLET_PRUNE_FAULT=<loop>:<step>`` kills the process (SIGKILL) right after
global step ``<step>`` of ``<loop>``, as a crash or an out-of-memory kill would.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from . import distributed
from .data import resume_epoch
from .errors import UserError
from .models.checkpoint import atomic_torch_save

STATE_FILE = "state.pt"
FAULT_ENV = "DIRICHLET_PRUNE_FAULT"


class RunState:
    """The resumable state of one run, kept in ``folder/state.pt``.

    Args:
        folder: the run's work folder (``None``: keep nothing, e.g. for library calls).
        every: save a loop's state every ``every`` steps (and at the end of every epoch).
        config: the run's configuration; a resumed run must have the same one.
    """

    def __init__(self, folder: str | os.PathLike | None, every: int = 100, config: dict | None = None) -> None:
        if every < 1:
            raise ValueError(f"checkpoint interval must be at least 1 step, got {every}")
        self.folder = Path(folder) if folder is not None else None
        self.every = int(every)
        self.config = config or {}
        self._state: dict[str, Any] = {"config": self.config}
        self.resumed_from: dict[str, int | str] = {}
        fault = os.environ.get(FAULT_ENV, "")
        self._fault = None
        if fault:
            loop, _, step = fault.partition(":")
            self._fault = (loop, int(step))

    @property
    def path(self) -> Path | None:
        return self.folder / STATE_FILE if self.folder is not None else None

    def exists(self) -> bool:
        return self.path is not None and self.path.is_file()

    def load(self) -> None:
        """Read a saved state; its configuration must equal this run's."""
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise UserError(f"cannot read the saved run state {self.path} ({type(exc).__name__}); "
                            f"start over with overwrite=True") from None
        if saved.get("config") != self.config:
            diff = sorted(k for k in set(saved.get("config", {})) | set(self.config)
                          if saved.get("config", {}).get(k) != self.config.get(k))
            raise UserError(f"cannot resume {self.folder}: its configuration differs in {', '.join(diff)}")
        self._state = saved

    def get(self, loop: str) -> dict | None:
        """The saved state of ``loop``, if any; where it resumes is noted in ``resumed_from``
        (the global step, or ``"done"`` for a loop that had finished)."""
        saved = self._state.get(loop)
        if saved is not None:
            self.resumed_from[loop] = "done" if saved.get("done") else int(saved["global_step"])
        return saved

    def save(self, loop: str, state: dict) -> None:
        """Keep ``state`` as ``loop``'s and write the file (only rank 0 writes when several
        processes run, ``distributed``: every rank holds the same state)."""
        self._state[loop] = state
        if self.path is not None and distributed.is_main():
            atomic_torch_save(self._state, self.path)

    def step(self, loop: str, global_step: int, snapshot: Callable[[], dict], force: bool = False) -> None:
        """Called after every step: save ``snapshot()`` every ``every`` steps (or when
        ``force``), then fire an injected fault if one is set for this step."""
        if self.path is not None and distributed.is_main() and (force or global_step % self.every == 0):
            self.save(loop, snapshot())
        if self._fault is not None and self._fault == (loop, global_step):
            os.kill(os.getpid(), signal.SIGKILL)


def open_loop(state: RunState | None, checkpoint: str | os.PathLike | None, every: int,
              loop: str) -> tuple[RunState | None, dict | None]:
    """The run state a loop saves into and the saved state of ``loop`` in it: ``state`` if given,
    else one kept in the folder ``checkpoint`` (read when a saved state is there), else none."""
    if state is None and checkpoint is not None:
        state = RunState(checkpoint, every)
        if state.exists():
            state.load()
    return state, (state.get(loop) if state is not None else None)


class LoopPosition:
    """Where a resumable loop stands in its data: the epoch, the minibatches of it done, torch's
    global generator state at the epoch start (where a plain ``DataLoader``'s shuffle starts)
    and the loader's own position (``load_state_dict``) where it was saved mid-epoch.

    ``save(data)`` is its part of a loop's snapshot (with torch's global generator state);
    ``restored(saved)`` puts that generator state back and continues from the position."""

    def __init__(self, epoch: int = 0, batch: int = 0, epoch_rng: torch.Tensor | None = None,
                 loader: dict | None = None) -> None:
        self.epoch, self.batch, self.epoch_rng, self.loader = epoch, batch, epoch_rng, loader

    @classmethod
    def restored(cls, saved: dict) -> LoopPosition:
        torch.set_rng_state(saved["rng"])
        return cls(saved["epoch"], saved["batch"], saved["epoch_rng"], saved["loader"])

    def save(self, data: Iterable) -> dict:
        return {"rng": torch.get_rng_state(), "epoch_rng": self.epoch_rng,
                "loader": data.state_dict() if hasattr(data, "state_dict") else None,
                "epoch": self.epoch, "batch": self.batch}

    def batches(self, data: Iterable) -> Iterator[tuple]:
        """The rest of the current epoch of ``data`` as ``(x, y[, idx])``, each minibatch counted
        in ``batch`` as it is handed out; ``next_epoch`` moves on once it is done."""
        if self.batch == 0:
            self.epoch_rng = torch.get_rng_state()
        for item in resume_epoch(data, self.batch, self.loader, self.epoch_rng):
            self.batch += 1
            yield item

    def next_epoch(self) -> None:
        self.epoch, self.batch, self.loader, self.epoch_rng = self.epoch + 1, 0, None, None
