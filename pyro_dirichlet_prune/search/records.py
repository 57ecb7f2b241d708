"""The output folder of a search: record keys, durable JSON writes, reading the finished
records back, and preparing (or resuming) a folder for a configuration."""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from ..errors import UserError


def write_json_durable(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to a temporary file beside ``path``, fsync it, rename it into place and fsync
    the folder: ``path`` then holds either nothing or the whole object, even after a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, allow_nan=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def record_key(method: str, seed: int, arch: str) -> str:
    return f"{method}__seed{int(seed)}__{arch}"


def read_json(path: Path) -> Any | None:
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_records(out: str | os.PathLike) -> list[dict]:
    """Every finished record of a search folder (unreadable or temporary files are skipped)."""
    folder = Path(out) / "records"
    if not folder.is_dir():
        return []
    records = []
    for p in sorted(folder.glob("*.json")):
        if p.name.startswith("."):
            continue
        rec = read_json(p)
        if isinstance(rec, dict) and {"method", "seed", "arch", "test_error"} <= set(rec):
            records.append(rec)
    return records


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differing_keys(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The (dotted) keys whose values differ between two nested configurations."""
    fa, fb = _flatten(a), _flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k, "<absent>") != fb.get(k, "<absent>"))


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (a search's identity includes its checkpoint's)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_unfinished_search(out: str | os.PathLike) -> bool:
    """Whether ``out`` holds a search that was started and has not finished (``resume`` continues it)."""
    out = Path(out)
    config = read_json(out / "config.json") if (out / "config.json").is_file() else None
    return isinstance(config, dict) and config.get("command") == "search" and not (out / "report.json").is_file()


def prepare_folder(out: Path, identity: dict, overwrite: bool, resume: bool) -> bool:
    """Make ``out`` ready for a search of configuration ``identity``; return whether finished
    records are resumed. Refuses (``UserError``) a finished search unless ``overwrite``, an
    interrupted one unless ``resume`` or ``overwrite``, a resume of another configuration (naming
    the differing keys), and a non-empty folder that is not a search folder."""
    if resume and overwrite:
        raise UserError("resume=True and overwrite=True exclude each other")
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a folder")
    config_path = out / "config.json"
    if out.is_dir() and any(out.iterdir()):
        saved = read_json(config_path) if config_path.is_file() else None
        if not isinstance(saved, dict) or saved.get("command") != "search":
            raise UserError(f"output folder {out} is not empty and holds no search; choose another output folder")
        finished = (out / "report.json").is_file()
        if overwrite:
            shutil.rmtree(out)
        elif finished:
            raise UserError(f"output folder {out} holds a finished search (pass overwrite=True to replace it)")
        elif not resume:
            raise UserError(f"output folder {out} holds an interrupted search; pass resume=True to continue it "
                            f"or overwrite=True to start over")
        else:
            diff = differing_keys(saved.get("identity", {}), identity)
            if diff:
                raise UserError(f"cannot resume the search in {out}: its configuration differs in {', '.join(diff)}")
            for tmp in itertools.chain(out.glob(".*.json.*"), out.glob(".summary.md.*"), out.glob("*/.*.json.*")):
                tmp.unlink(missing_ok=True)  # temporaries of writes cut short by a kill
            return True
    elif resume:
        raise UserError(f"nothing to resume: no search in {out}")
    out.mkdir(parents=True, exist_ok=True)
    return False
