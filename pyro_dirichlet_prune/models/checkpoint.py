"""Saving and loading networks as plain state dicts plus the facts needed to rebuild them.

A checkpoint is a ``torch.save``'d dict (loaded with ``weights_only=True``, so no code is
unpickled) with keys ``format``, ``model``, ``widths``, ``num_classes``, ``input_shape``,
``dataset``, ``state_dict`` and ``meta``. A pruned network is the same model built with
smaller widths, so ``evaluate`` can rebuild it in a fresh process.
"""
from __future__ import annotations

import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError

FORMAT = "pyro-dirichlet-prune/1"
_KEYS = ("format", "model", "widths", "num_classes", "input_shape", "state_dict")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    path: str | os.PathLike,
    net: nn.Module,
    model: str,
    dataset: str,
    num_classes: int,
    input_shape: tuple[int, ...],
    meta: dict | None = None,
) -> None:
    atomic_torch_save(
        {
            "format": FORMAT,
            "model": model,
            "widths": [int(w) for w in net.widths],
            "num_classes": int(num_classes),
            "input_shape": [int(s) for s in input_shape],
            "dataset": dataset,
            "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "meta": meta or {},
        },
        path,
    )


def load_checkpoint(path: str | os.PathLike, model: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the network saved at ``path``; ``model`` (if given) must match its model name.

    Raises ``UserError`` for a missing, unreadable or foreign file, or one of another model.
    """
    from . import build_model

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"checkpoint {path} is not a readable PyTorch file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or any(k not in payload for k in _KEYS) or payload["format"] != FORMAT:
        raise UserError(f"checkpoint {path} is not a {FORMAT} checkpoint")
    if model is not None and payload["model"] != model:
        raise UserError(f"checkpoint {path} holds a {payload['model']} network, not {model}")
    try:
        shape = payload["input_shape"]
        net = build_model(payload["model"], payload["widths"], payload["num_classes"], in_channels=shape[0])
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise UserError(f"checkpoint {path} has inconsistent metadata ({exc})") from None
    try:
        net.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"checkpoint {path} does not fit {payload['model']} {payload['widths']}: {first}") from None
    net.eval()
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    return net, info


def shipped_checkpoint(model: str, dataset: str) -> Path | None:
    """The pre-trained checkpoint shipped in the package for ``model`` on ``dataset``, if any."""
    path = Path(str(resources.files(__package__) / "checkpoints" / f"{model}-{dataset}.pt"))
    return path if path.is_file() else None
