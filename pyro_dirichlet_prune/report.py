"""Run reports: versions, atomic JSON files and an all-or-nothing output folder."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import torch

from . import distributed
from .errors import UserError

_PACKAGES = ("pyro-dirichlet-prune", "torch", "torchvision", "pyro-ppl", "torch-pruning", "numpy", "tqdm")


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess | None:
    """Run ``git args`` in ``cwd``; None when git is missing, fails to start or takes too long."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0", LC_ALL="C")  # never take the index lock
    try:
        return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def code_commit() -> dict[str, str | bool | None]:
    """The git commit of the checkout this package runs from, once per process.

    ``code_commit`` is the commit (40 hex digits) and ``code_dirty`` whether tracked files differ
    from it; both are None when the package does not run from a git checkout (an installed
    wheel, no git, a timeout). The package's own files must be tracked by the repository found,
    so a virtual environment inside some other repository does not report that repository.
    """
    none = {"code_commit": None, "code_dirty": None}
    here = Path(__file__).resolve().parent
    tracked = _git(["ls-files", "--error-unmatch", Path(__file__).name], here)
    head = _git(["rev-parse", "HEAD"], here)
    if tracked is None or tracked.returncode != 0 or head is None or head.returncode != 0:
        return none
    commit = head.stdout.strip()
    if len(commit) != 40:
        return none
    diff = _git(["diff", "--quiet", "HEAD", "--"], here)
    dirty = None if diff is None or diff.returncode not in (0, 1) else diff.returncode == 1
    return {"code_commit": commit, "code_dirty": dirty}


def versions() -> dict[str, str | bool | None]:
    """Python, platform, the versions of the packages a result depends on and, when the package
    runs from a git checkout, its commit (``code_commit``) and whether the tree differs from it
    (``code_dirty``); both None otherwise."""
    out: dict[str, str | bool | None] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["torch_threads"] = str(torch.get_num_threads())
    out.update(code_commit())
    return out


def _default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if callable(getattr(obj, "describe", None)):  # a user's guide builder or cut-off in a config
        return obj.describe()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=_default, allow_nan=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def work_folder(out: str | os.PathLike) -> Path:
    """The hidden folder ``<parent>/.<name>.partial`` where a run builds ``out``."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def check_output(out: str | os.PathLike, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse an output folder that holds a finished run (unless ``overwrite``), an interrupted
    run that is neither resumed nor overwritten, or a resume with nothing to resume."""
    if not distributed.is_main():  # rank 0 checks and owns the folder (``output_folder``)
        return
    out = Path(out)
    work = work_folder(out)
    if resume and overwrite:
        raise UserError("resume=True and overwrite=True exclude each other")
    if out.exists() and not overwrite:
        raise UserError(f"output folder {out} already exists (pass overwrite=True to replace it)")
    if resume and not (work / "state.pt").is_file():
        raise UserError(f"nothing to resume: no interrupted run in {work}")
    if work.exists() and not resume and not overwrite:
        raise UserError(
            f"an interrupted run of {out} is kept in {work}; pass resume=True to continue it or overwrite=True to start over"
        )


def _rank_folder(work: Path, resume: bool, keep: tuple[str, ...]) -> Iterator[Path]:
    """The folder a rank other than 0 writes into: a private temporary one, removed afterwards, so
    that only rank 0's outputs reach ``out``; on resume it starts with rank 0's saved state."""
    private = Path(tempfile.mkdtemp(prefix=f"{work.name}.rank{distributed.rank()}."))
    try:
        for k in keep:
            if resume and (work / k).is_file():
                shutil.copy2(work / k, private / k)
        yield private
    finally:
        shutil.rmtree(private, ignore_errors=True)


@contextlib.contextmanager
def output_folder(
    out: str | os.PathLike, overwrite: bool = False, resume: bool = False, keep: tuple[str, ...] = ("state.pt",)
) -> Iterator[Path]:
    """Yield the work folder of ``out``; it becomes ``out`` only if the block succeeds.

    On failure the work folder is removed, unless it holds one of the ``keep`` files (the
    resumable state of a long run), so ``out`` never holds a partial run and a crash loses
    nothing that ``resume=True`` could use. On success the ``keep`` files are deleted and an
    existing ``out`` is replaced only when ``overwrite``.
    """
    out = Path(out)
    if not distributed.is_main():
        yield from _rank_folder(work_folder(out), resume, keep)
        return
    check_output(out, overwrite, resume)
    work = work_folder(out)
    if work.exists() and overwrite:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    except BaseException:
        if not any((work / k).exists() for k in keep):
            shutil.rmtree(work, ignore_errors=True)
        raise
    for k in keep:
        (work / k).unlink(missing_ok=True)
    if out.exists():
        shutil.rmtree(out)
    os.replace(work, out)
