"""Export a (pruned) network to a file that loads without this package: ONNX or TorchScript.

    from pyro_dirichlet_prune.export import export, export_checkpoint
    result = export(small, "small.onnx", input_shape=(1, 28, 28))          # or format="torchscript"
    result = export_checkpoint("runs/prune/pruned.pt", format="torchscript")  # beside the checkpoint
    result.max_abs_diff                                                     # the load-back check

An ONNX file runs in ONNX Runtime (``onnxruntime.InferenceSession(path)``, input ``"input"``,
output ``"output"``); a TorchScript file in plain PyTorch (``torch.jit.load(path)``). Neither
refers to this package's classes (nor to a user's: the network is traced), so a pruned user
network can be run where its Python code is not available.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .errors import NumericalError, UserError
from .models.checkpoint import load_checkpoint
from .report import now, versions, write_json

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
"""The file suffix of each format (``pruned.pt`` → ``pruned.onnx``, ``pruned.torchscript.pt``)."""
OPSET = 17
"""The ONNX opset written: old enough for every current ONNX Runtime, new enough for any CNN."""
CHECK_SEED = 0


@dataclass
class ExportResult:
    """What ``export`` wrote and how the file, loaded back, compared with the network.

    ``max_abs_diff`` is the largest absolute difference between the file's outputs and the
    network's over the checked batches (None without a check); ``output_scale`` the largest
    absolute output of the network there, and ``tolerance`` the allowed difference relative to
    ``max(1, output_scale)``."""

    path: str
    format: str
    input_shape: list[int]
    batch_size: int
    dynamic_batch: bool
    tolerance: float
    checked_batches: list[int] = field(default_factory=list)
    max_abs_diff: float | None = None
    output_scale: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")


def _check_args(format: str, input_shape: Sequence[int] | None, batch_size: int, tolerance: float) -> tuple[int, ...]:
    _check_format(format)
    try:
        shape = tuple(int(s) for s in input_shape)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise UserError(f"input_shape must be the shape of one input, e.g. (1, 28, 28), got {input_shape!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not tolerance > 0:
        raise UserError(f"tolerance must be positive, got {tolerance!r}")
    return shape


@contextlib.contextmanager
def _eval_on_cpu(net: nn.Module) -> Iterator[nn.Module]:
    """``net`` in eval mode on the CPU (a copy if it is elsewhere); its mode is restored after."""
    on_cpu = all(t.device.type == "cpu" for t in [*net.parameters(), *net.buffers()])
    model = net if on_cpu else copy.deepcopy(net).cpu()
    training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(training)


def _write_onnx(model: nn.Module, example: torch.Tensor, tmp: str, dynamic_batch: bool) -> None:
    """The TorchScript-based exporter (``dynamo=False``): it traces like ``torch.jit.trace``,
    so it takes whatever the TorchScript export takes, needs no ``onnxscript``, and takes a
    fraction of a second where the ``torch.export``-based default takes seconds per network."""
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    torch.onnx.export(model, (example,), tmp, input_names=["input"], output_names=["output"],
                      dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True, **legacy)


def _write_torchscript(model: nn.Module, example: torch.Tensor, tmp: str) -> None:
    traced = torch.jit.trace(model, example)
    traced.save(tmp)


def _runner(path: str, format: str):
    """A function batch → numpy outputs of the file at ``path``, loaded as a user would."""
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"input": x.numpy()})[0]
    with warnings.catch_warnings():  # torch >= 2.14 marks torch.jit deprecated; it still loads
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(path, map_location="cpu")
    loaded.eval()
    return lambda x: loaded(x).detach().numpy()


def _check(model: nn.Module, path: str, format: str, shape: tuple[int, ...], batches: list[int],
           result: ExportResult) -> None:
    """Load the file back, run it and ``model`` on seeded random batches, record the largest
    difference; raise ``NumericalError`` when it exceeds the tolerance."""
    run = _runner(path, format)
    g = torch.Generator().manual_seed(CHECK_SEED)
    diff, scale = 0.0, 0.0
    for b in batches:
        x = torch.randn(b, *shape, generator=g)
        with torch.no_grad():
            expected = model(x).numpy()
        try:
            got = np.asarray(run(x))
        except Exception as exc:  # ONNX Runtime's and TorchScript's own errors
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise NumericalError(f"the exported {format} file fails on a batch of {b} ({type(exc).__name__}: "
                                 f"{first})") from None
        if got.shape != expected.shape:
            raise NumericalError(f"the exported {format} file gives outputs of shape {list(got.shape)} at batch "
                                 f"{b}, the network {list(expected.shape)}")
        diff = max(diff, float(np.abs(got - expected).max()))
        scale = max(scale, float(np.abs(expected).max()))
    result.checked_batches, result.max_abs_diff, result.output_scale = batches, diff, scale
    if not diff <= result.tolerance * max(1.0, scale):
        raise NumericalError(f"the exported {format} file differs from the network by up to {diff:.3g} "
                             f"(outputs up to {scale:.3g}, tolerance {result.tolerance:g} of that)")


def export(
    net: nn.Module,
    path: str | os.PathLike,
    *,
    format: str = "onnx",
    input_shape: Sequence[int],
    batch_size: int = 1,
    dynamic_batch: bool = True,
    check: bool = True,
    tolerance: float = 1e-4,
) -> ExportResult:
    """Write ``net`` (in eval mode, on the CPU) to ``path`` as ``format`` (``"onnx"`` or
    ``"torchscript"``) for inputs of shape ``(batch, *input_shape)``.

    The network is traced on a batch of ``batch_size``; with ``dynamic_batch`` the file takes
    any batch size (ONNX: a symbolic batch axis; TorchScript: a traced graph is shape-generic as
    long as ``forward`` reads the batch size from its input, e.g. ``x.flatten(1)``), and the check
    runs at batch 1 and 8, so a graph that froze the batch size fails it. TorchScript is
    written with ``torch.jit.trace`` (it takes any module whose ``forward`` runs tensors only,
    where ``torch.jit.script`` needs type-annotated code); ONNX with ``torch.onnx.export(...,
    dynamo=False)``, the TorchScript-based exporter (opset ``OPSET``): the ``torch.export``-based
    default of torch ≥ 2.9 needs the extra package ``onnxscript`` and takes seconds where this
    takes a fraction of one, for the same outputs.

    The file is written under a temporary name beside ``path``; with ``check`` it is loaded back
    (``onnxruntime.InferenceSession`` / ``torch.jit.load``) and run on seeded random batches
    against ``net``, and renamed to ``path`` only when the largest absolute difference is at most
    ``tolerance × max(1, largest |output|)``; otherwise ``NumericalError`` is raised and nothing is
    written. Raises ``UserError`` (a ``ValueError``) for a bad argument and ``TypeError`` when
    ``net`` is not an ``nn.Module`` or does not return one tensor.
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    shape = _check_args(format, input_shape, batch_size, tolerance)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = ExportResult(os.fspath(path), format, list(shape), batch_size, bool(dynamic_batch), float(tolerance))
    with _eval_on_cpu(net) as model:
        example = torch.randn(batch_size, *shape, generator=torch.Generator().manual_seed(CHECK_SEED))
        with torch.no_grad():
            out = model(example)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"net must return one tensor to be exported, it returns a {type(out).__name__}")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            with warnings.catch_warnings():  # the exporters' deprecation and tracer notes
                warnings.simplefilter("ignore")
                if format == "onnx":
                    _write_onnx(model, example, tmp, dynamic_batch)
                else:
                    _write_torchscript(model, example, tmp)
            if check:
                batches = sorted({1, 8, batch_size}) if dynamic_batch else [batch_size]
                _check(model, tmp, format, shape, batches, result)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return result


def default_export_path(checkpoint: str | os.PathLike, format: str) -> Path:
    """Where ``export_checkpoint`` writes by default: beside the checkpoint, its name with the
    format's suffix (``runs/x/pruned.pt`` → ``runs/x/pruned.onnx`` or ``pruned.torchscript.pt``)."""
    _check_format(format)
    checkpoint = Path(checkpoint)
    stem = checkpoint.name[: -len(checkpoint.suffix)] if checkpoint.suffix else checkpoint.name
    return checkpoint.with_name(stem + SUFFIXES[format])


def _export_versions() -> dict:
    found = versions()
    for name in ("onnx", "onnxruntime"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike | None = None,
    format: str = "onnx",
    *,
    allow_pickle: bool = False,
    overwrite: bool = False,
    input_shape: Sequence[int] | None = None,
    batch_size: int = 1,
    check: bool = True,
) -> ExportResult:
    """Export the network saved at ``checkpoint`` (a ``model.pt`` or ``pruned.pt`` of
    ``pretrain`` or ``prune``) with ``export`` to ``out`` (default ``default_export_path``),
    for the input shape the checkpoint records (``input_shape`` is needed only for a bare
    ``torch.save(model)`` file), and write the report ``<out>.json`` beside it: the checkpoint,
    the settings, the check's numbers and the versions of the packages.

    A pickled network (the ``pruned.pt`` of a run on a user's model) is loaded only with
    ``allow_pickle=True``: unpickling runs arbitrary code, so only for files you trust. Raises
    ``UserError`` for an unreadable checkpoint, an unknown format, or an ``out`` that exists
    (unless ``overwrite=True``) or is the checkpoint itself.
    """
    out = Path(out) if out is not None else default_export_path(checkpoint, format)
    _check_format(format)
    if out.exists() and out.resolve() == Path(checkpoint).resolve():
        raise UserError(f"out {out} is the checkpoint itself; give another out=PATH")
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; give overwrite=True to replace it")
    net, info = load_checkpoint(checkpoint, allow_pickle=allow_pickle)
    if input_shape is None:
        input_shape = info.get("input_shape")
        if input_shape is None:
            raise UserError(f"{checkpoint} does not say which inputs its network takes; give input_shape")
    result = export(net, out, format=format, input_shape=input_shape, batch_size=batch_size, check=check)
    write_json(out.with_name(out.name + ".json"), {
        "created": now(),
        "checkpoint": os.fspath(checkpoint),
        "model": info.get("model", "user"),
        "dataset": info.get("dataset"),
        "export": result.to_dict(),
        "versions": _export_versions(),
    })
    return result
