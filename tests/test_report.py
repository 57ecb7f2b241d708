"""Report helpers: the all-or-nothing output folder, atomic JSON and the version record."""
from __future__ import annotations

import json

import pytest
import torch

from pyro_dirichlet_prune.errors import UserError
from pyro_dirichlet_prune.report import output_folder, versions, write_json


def test_output_folder_appears_only_on_success(tmp_path):
    out = tmp_path / "a" / "run"
    with output_folder(out) as tmp:
        assert tmp.parent == out.parent and tmp.name == ".run.partial" and not out.exists()
        (tmp / "f.txt").write_text("x")
    assert (out / "f.txt").read_text() == "x"
    assert [p.name for p in out.parent.iterdir()] == ["run"]


def test_output_folder_failure_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with output_folder(out) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_output_folder_existing(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(UserError, match=r"already exists \(pass overwrite=True to replace it\)"):
        with output_folder(out):
            pass
    with pytest.raises(UserError, match="resume=True and overwrite=True exclude each other"):
        with output_folder(out, overwrite=True, resume=True):
            pass
    assert (out / "old.txt").read_text() == "old"
    with pytest.raises(RuntimeError):  # a failed overwrite keeps the old folder
        with output_folder(out, overwrite=True):
            raise RuntimeError
    assert (out / "old.txt").read_text() == "old"
    with output_folder(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_write_json_round_trip_with_tensors_and_paths(tmp_path):
    obj = {"t": torch.tensor([1.5, 2.0]), "p": tmp_path / "x", "n": [1, {"a": None}], "nan": float("nan")}
    write_json(tmp_path / "r.json", obj)
    back = json.loads((tmp_path / "r.json").read_text())
    assert back["t"] == [1.5, 2.0] and back["p"] == str(tmp_path / "x") and back["n"] == [1, {"a": None}]
    assert back["nan"] != back["nan"]
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    with pytest.raises(TypeError):
        write_json(tmp_path / "bad.json", {"o": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temp file left


def test_versions_names_the_stack():
    v = versions()
    assert v["torch"] == torch.__version__.split("+")[0] or v["torch"].startswith(torch.__version__.split("+")[0])
    for key in ("python", "platform", "pyro-ppl", "torch-pruning", "pyro-dirichlet-prune", "torch_threads"):
        assert key in v and v[key] and v[key] != "not installed"
