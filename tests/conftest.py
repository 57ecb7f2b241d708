"""Shared fixtures: the data set the suite runs on, tiny networks, a clean Pyro state.

The suite uses the real MNIST when ``$DATA_DIR`` (or ``<repo>/../shared/data``) holds it in
torchvision's layout, otherwise ``fake-mnist`` (torchvision FakeData); ``PDP_TEST_FAKE_DATA=1``
forces the fallback. Which one is used is printed in the pytest header and at the end.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyro
import pytest
import torch

os.environ.setdefault("DIRICHLET_PRUNE_AUTO_QUADRATIC_COST", "-1")  # see _quadratic_settle_where_asked

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def _find_mnist_dir() -> Path | None:
    if os.environ.get("PDP_TEST_FAKE_DATA"):  # force the FakeData fallback (to test it)
        return None
    candidates = []
    env = os.environ.get("DATA_DIR")
    if env:
        p = Path(env)
        candidates += [p] if p.is_absolute() else [Path.cwd() / p, REPO / p]
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if (c / "MNIST" / "raw" / "train-images-idx3-ubyte").exists() or (c / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").exists():
            return c.resolve()
    return None


@dataclass(frozen=True)
class DataChoice:
    """Which data set the end-to-end tests use, and the CLI options that select it."""

    dataset: str
    data_dir: Path | None
    val_size: int
    max_train: int

    def cli_args(self) -> list[str]:
        args = ["--dataset", self.dataset, "--val-size", str(self.val_size), "--max-train-examples", str(self.max_train)]
        if self.data_dir is not None:
            args += ["--data-dir", str(self.data_dir)]
        return args

    def describe(self) -> str:
        if self.data_dir is not None:
            return f"real {self.dataset} from {self.data_dir}"
        return f"{self.dataset} (torchvision FakeData; no MNIST found under $DATA_DIR or ../shared/data)"


def data_choice() -> DataChoice:
    d = _find_mnist_dir()
    if d is not None:
        return DataChoice("mnist", d, val_size=1000, max_train=2000)
    return DataChoice("fake-mnist", None, val_size=500, max_train=1500)


def pytest_report_header(config):
    return f"pyro_dirichlet_prune tests: data = {data_choice().describe()}"


@pytest.fixture(scope="session")
def data_cfg() -> DataChoice:
    """The data set of the end-to-end tests (real MNIST if available, else fake-mnist)."""
    choice = data_choice()
    print(f"\n[data] {choice.describe()}")
    return choice


@pytest.fixture(scope="session")
def mnist_dir() -> Path | None:
    return _find_mnist_dir()


@pytest.fixture
def adam_rates(monkeypatch) -> list[float]:
    """The learning rate of every ``torch.optim.Adam`` step taken in the test, in order (the first
    group's); ``adam_rates.clear()`` and ``monkeypatch.undo()`` as a test needs."""
    seen: list[float] = []
    real = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    return seen


@pytest.fixture(autouse=True)
def _quadratic_settle_where_asked(request, monkeypatch):
    """The suite runs with ``DIRICHLET_PRUNE_AUTO_QUADRATIC_COST=-1`` (set above, so that the
    processes it starts inherit it): ``concentration="auto"`` is then ``fitted``, as the quadratic
    settle's exact Hessian adds seconds to every LeNet-5 fit, minutes over the suite. Tests marked
    ``default_recipe`` get the library's own threshold, in this process."""
    if request.node.get_closest_marker("default_recipe") is not None:
        import pyro_dirichlet_prune.inference.svi as svi

        monkeypatch.setattr(svi, "AUTO_QUADRATIC_COST", svi.DEFAULT_AUTO_QUADRATIC_COST)
    yield


@pytest.fixture(autouse=True)
def _clean_pyro():
    """Every test starts with an empty param store and seeded generators."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def pytest_terminal_summary(terminalreporter):
    """Also name the data set at the end (the header is hidden under ``-q``)."""
    terminalreporter.write_line(f"pyro_dirichlet_prune tests ran on: {data_choice().describe()}")
