"""Saving and loading networks as plain state dicts plus the facts needed to rebuild them.

A checkpoint is a ``torch.save``'d dict (loaded with ``weights_only=True``, so no code is
unpickled) with keys ``format``, ``model``, ``widths``, ``num_classes``, ``input_shape``,
``dataset``, ``state_dict`` and ``meta``. A pruned network is the same model built with
smaller widths, so ``evaluate`` can rebuild it in a fresh process.

A user's network (``prune --model-file``) cannot be rebuilt from a name: it is read from a
whole pickled ``nn.Module`` (``torch.save(model)``), and its pruned version is written as a
*module checkpoint*, a dict with ``format`` = ``MODULE_FORMAT``, ``model`` = ``"user"``,
``module`` (the pickled network), ``layers`` (the switched layers), ``num_classes``,
``input_shape``, ``dataset`` and ``meta``. Reading either unpickles arbitrary code: only
``load_model_file`` and ``load_checkpoint(..., allow_pickle=True)`` do it, for trusted files.
"""
from __future__ import annotations

import os
import pickle
import pickletools
import re
import tempfile
import warnings
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .registry import build_model

FORMAT = "pyro-dirichlet-prune/1"
MODULE_FORMAT = "pyro-dirichlet-prune-module/1"
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


def save_module_checkpoint(
    path: str | os.PathLike,
    net: nn.Module,
    dataset: str,
    num_classes: int,
    input_shape: tuple[int, ...],
    layers: list[str],
    meta: dict | None = None,
) -> None:
    """Write a module checkpoint (module docstring): the whole network pickled, with its facts."""
    atomic_torch_save(
        {
            "format": MODULE_FORMAT,
            "model": "user",
            "module": net,
            "layers": list(layers),
            "num_classes": int(num_classes),
            "input_shape": [int(s) for s in input_shape],
            "dataset": dataset,
            "meta": meta or {},
        },
        path,
    )


def _pickled_classes(path: Path) -> list[tuple[str, str]]:
    """The ``(module, name)`` of every global (class or function) that the pickle of a
    ``torch.save`` zip archive refers to, in order; ``[]`` when it cannot be read."""
    found: list[tuple[str, str]] = []
    try:
        with zipfile.ZipFile(path) as z:
            name = next(n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
            data = z.read(name)
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                found.append((module, attr))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append((strings[-2], strings[-1]))
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:
        pass
    return found


def _unimportable(path: Path, exc: Exception) -> str | None:
    """A message that names the class of a pickled network that cannot be imported and says
    how to make it importable, or None when ``exc`` is not such a failure."""
    need = ("the network's class must be importable when the file is loaded (pickles refer to classes "
            "by module and name, they do not hold their code)")
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        classes = [f"{m}.{c}" for m, c in _pickled_classes(path) if m == exc.name or m.startswith(f"{exc.name}.")]
        what = f"class {classes[0]}" if classes else f"classes of module {exc.name}"
        return (f"model file {path} holds a network of {what}, but no module named {exc.name!r} can be imported "
                f"here: {need}. Put the folder that holds {exc.name.split('.')[0]} (its .py file or package) on "
                f"PYTHONPATH, or install its package, and load the file again")
    m = re.match(r"Can't get attribute '([^']+)' on <module '([^']+)'", str(exc))
    if isinstance(exc, AttributeError) and m:
        cls, module = m.groups()  # the module as imported here (``python -m x`` shows __main__ as x)
        module = next((mod for mod, c in _pickled_classes(path) if c == cls), module)  # as the pickle names it
        if module == "__main__":
            return (f"model file {path} holds a network of class {cls}, which was defined in the script that saved "
                    f"it (module __main__) and cannot be imported here: {need}. Define {cls} in a module of its "
                    f"own (e.g. mynet.py), import it from there, save the network again, and put that module on "
                    f"PYTHONPATH when you load the file")
        return (f"model file {path} holds a network of class {module}.{cls}, but module {module} has no {cls} "
                f"(renamed or moved since the file was saved?): {need}. Make {cls} importable from {module} "
                f"again, or save the network again from where it now lives")
    return None


def load_model_file(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Unpickle a whole network: a file written by ``torch.save(model)`` or a module checkpoint.

    This runs ``torch.load(..., weights_only=False)``, which executes whatever code the file's
    pickle names: only load files you trust. The classes of the network must be importable (the
    pickle names them by module and class; their module must be on ``sys.path``); a class that
    cannot be imported is a ``UserError`` that names it and says how to make it importable.
    Returns the network on the CPU in eval mode, and the module checkpoint's facts (``{}`` for a
    bare module). Raises ``UserError`` for a missing or unreadable file, a TorchScript archive,
    or a file that holds no ``nn.Module`` (e.g. only a state dict).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        message = _unimportable(path, exc)
        if message is None:
            first = str(exc).splitlines()[0][:160] if str(exc) else ""
            message = f"model file {path} could not be loaded ({type(exc).__name__}: {first})"
        raise UserError(message) from None
    except Exception as exc:
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise UserError(f"model file {path} could not be loaded ({type(exc).__name__}: {first})") from None
    info: dict = {}
    if isinstance(obj, dict) and obj.get("format") == MODULE_FORMAT:
        info = {k: v for k, v in obj.items() if k != "module"}
        obj = obj.get("module")
    if isinstance(obj, torch.jit.ScriptModule):
        raise UserError(f"model file {path} is a TorchScript archive; save the network with torch.save(model)")
    if not isinstance(obj, nn.Module):
        hint = ""
        if isinstance(obj, dict):
            hint = (" (a pyro-dirichlet-prune checkpoint: pass it as checkpoint=PATH, not as a model file)"
                    if obj.get("format") == FORMAT
                    else " (a state dict? save the whole network with torch.save(model))")
        raise UserError(f"model file {path} holds a {type(obj).__name__}, not a torch.nn.Module{hint}")
    obj.eval()
    return obj, info


def load_checkpoint(
    path: str | os.PathLike, model: str | None = None, allow_pickle: bool = False
) -> tuple[nn.Module, dict]:
    """Rebuild the network saved at ``path``; ``model`` (if given) must match its model name.

    A file that holds pickled code (a module checkpoint of a pruned user network) is loaded
    with ``load_model_file`` when ``allow_pickle`` (only for trusted files: unpickling runs
    arbitrary code), and refused otherwise. Raises ``UserError`` for a missing, unreadable or
    foreign file, or one of another model.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not zipfile.is_zipfile(path):
            raise UserError(f"checkpoint {path} is not a readable PyTorch file (UnpicklingError)") from None
        if allow_pickle and model is None:
            return load_model_file(path)
        raise UserError(
            f"checkpoint {path} holds pickled Python objects (a whole network, as pruning a model file writes), "
            f"not a {FORMAT} checkpoint; load it as a model file (model_file=PATH) or with allow_pickle=True, "
            f"and only if you trust it: unpickling runs arbitrary code") from None
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


def load_pretrained(name: str, dataset: str) -> nn.Module:
    """The pre-trained network ``name`` for ``dataset`` that ships with the package (``lenet5``
    for ``mnist`` and ``fashion-mnist``), in eval mode."""
    path = shipped_checkpoint(name, dataset)
    if path is None:
        raise ValueError(f"no pre-trained {name} for {dataset} ships with the package")
    net, _ = load_checkpoint(path, name)
    return net.eval()
