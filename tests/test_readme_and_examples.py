"""The README's Python quick start and the scripts in examples/ run as written, on real MNIST."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, mnist_dir, cwd, timeout=900) -> str:
    if mnist_dir is None:
        pytest.skip("needs MNIST in torchvision's layout ($DATA_DIR or ../shared/data)")
    env = dict(os.environ, DATA_DIR=str(mnist_dir), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_readme_quick_start_runs_as_written(tmp_path, mnist_dir):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python quick start", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "quick_start.py").write_text(code)
    out = _run([str(tmp_path / "quick_start.py")], mnist_dir, tmp_path)
    m = re.search(r"MACs (\d+) -> (\d+) test error ([0-9.]+)", out)
    assert m, out
    base, small, error = int(m.group(1)), int(m.group(2)), float(m.group(3))
    assert small < base and error < 0.05, out  # pruned by the posterior, and still a working classifier


def test_example_own_svi_loop_compares_guides(mnist_dir):
    out = _run([str(ROOT / "examples" / "compare_guides_svi.py"), "--examples", "1500"], mnist_dir, ROOT)
    assert re.search(r"^dirichlet ELBO +-?[0-9.]+", out, re.M) and re.search(r"^normal +ELBO +-?[0-9.]+", out, re.M), out
    assert len(re.findall(r"conv1 unit \d+: mean [0-9.]+, 95% interval \[", out)) == 2 * 10
    after, before = re.search(r"after fitting AutoNormal: (-?[0-9.]+) \(before: (-?[0-9.]+)\)", out).groups()
    assert after == before  # the second fit left the first guide alone


def test_example_prunes_a_residual_cnn_by_uncertainty_and_budget(mnist_dir):
    out = _run([str(ROOT / "examples" / "prune_your_cnn.py"), "--examples", "3000", "--epochs", "2"], mnist_dir, ROOT)
    layers = re.search(r"switched layers: (\{.*\})", out).group(1)
    assert "'block.0'" in layers and "'stem.0'" not in layers and "'block.3'" not in layers  # residual-tied: left out
    base = int(re.search(r"trained: .*, (\d+) MACs", out).group(1))
    budget = re.search(r"budget +kept [0-9-]+: (\d+) MACs", out)
    assert budget and int(budget.group(1)) <= base // 2, out
    assert re.search(r"uncertainty kept [0-9-]+: \d+ MACs", out), out
