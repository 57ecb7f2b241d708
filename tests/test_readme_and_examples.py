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
    (tmp_path / "quick_start.py").write_text(code + AFTER_QUICK_START)
    out = _run([str(tmp_path / "quick_start.py")], mnist_dir, tmp_path)
    m = re.search(r"MACs (\d+) -> (\d+) test error ([0-9.]+)", out)
    assert m, out
    base, small, error = int(m.group(1)), int(m.group(2)), float(m.group(3))
    assert small < base and error < 0.05, out  # pruned by the posterior, and still a working classifier
    assert "saved, loaded and stepped: True" in out, out
    assert "the user's network: hooks 0, requires_grad True" in out, out


def test_example_your_own_guide_through_compare_guides(mnist_dir):
    out = _run([str(ROOT / "examples" / "your_own_guide.py"), "--examples", "1000"], mnist_dir, ROOT)
    rows = dict(re.findall(r"^(\S+) +ELBO +(-?[0-9.]+) ", out, re.M))
    assert set(rows) == {"dirichlet", "logistic-normal"}, out  # the user's guide ran beside the shipped one
    assert float(rows["logistic-normal"]) != float(rows["dirichlet"])
    errors = re.findall(r"test error after fine-tuning ([0-9.]+)", out)
    assert len(errors) == 2 and all(float(e) < 0.2 for e in errors), out  # both pruned networks still classify


def test_example_your_own_cutoff_through_run_prune(mnist_dir):
    out = _run([str(ROOT / "examples" / "your_own_cutoff.py"), "--examples", "5000",
                "--finetune-epochs", "3"], mnist_dir, ROOT)
    assert "cut-off {'kind': 'interval', 'tau': 1.0, 'credible_level': 0.95}" in out, out
    m = re.search(r"10-20-100-25 -> ([0-9-]+): MACs (\d+) -> (\d+), test error [0-9.]+ -> ([0-9.]+)", out)
    assert m and m.group(1) != "10-20-100-25" and int(m.group(3)) < int(m.group(2)), out  # the user's rule pruned
    assert float(m.group(4)) < 0.1, out


# What a user does next with the quick start's objects: the pruned network is a plain module
# (torch.save/torch.load, a plain optimiser step), and the network the switch model used is as
# it was (no hooks, every parameter trainable, as load_pretrained returned it).
AFTER_QUICK_START = """
import io
buffer = io.BytesIO()
torch.save(small, buffer)
buffer.seek(0)
loaded = torch.load(buffer, weights_only=False)
x, y = next(iter(test_loader))
with torch.no_grad():
    same = torch.equal(loaded.eval()(x), small.eval()(x))
opt = torch.optim.SGD(loaded.parameters(), lr=0.1)
loaded.train()
torch.nn.functional.cross_entropy(loaded(x), y).backward()
before = [p.detach().clone() for p in loaded.parameters()]
opt.step()
moved = all(not torch.equal(b, p) for b, p in zip(before, loaded.parameters()))
print("saved, loaded and stepped:", same and moved)
hooks = sum(len(m._forward_hooks) for m in list(net.modules()) + list(small.modules()))
print(f"the user's network: hooks {hooks}, requires_grad {all(p.requires_grad for p in net.parameters())}")
"""


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


def test_example_reads_two_guides_with_arviz(mnist_dir, tmp_path):
    out = _run([str(ROOT / "examples" / "arviz_posterior.py"), "--examples", "1500", "--draws", "400", "--out",
                str(tmp_path)], mnist_dir, ROOT)
    rows = re.findall(r"^switch\.conv1\[(\d)\] +([0-9.]+) +([0-9.]+) +([0-9.]+) +([0-9.]+)$", out, re.M)
    assert len(rows) == 2 * 10, out
    for _, mean, sd, low, high in rows:
        assert float(low) < float(mean) < float(high) and float(sd) > 0
    dirichlet = [float(r[1]) for r in rows[:10]]
    assert max(dirichlet) > 0.11 and min(dirichlet) < 0.09  # the fit moved conv1 away from the uniform 0.1
    assert "per-stage conditional" in out and "one joint variational posterior" in out
    assert (tmp_path / "forest_conv1.png").stat().st_size > 10_000 and (tmp_path / "posterior_conv1.png").is_file()
