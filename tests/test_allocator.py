"""retain_freed_memory: after it, a loop of switch-learning steps stops faulting pages in."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pyro_dirichlet_prune import retain_freed_memory

LOOP = textwrap.dedent("""
    import resource, sys
    import pyro, pyro.optim, torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro_dirichlet_prune import DirichletGuide, SwitchModel, build_model, retain_freed_memory
    taken = retain_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SwitchModel(build_model("lenet5").eval(), num_data=55000)
    svi = SVI(model, DirichletGuide(model), pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    x, y = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))
    for _ in range(5):
        svi.step(x, y)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        svi.step(x, y)
    print(taken, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_svi_steps_fault_no_pages_in_once_freed_memory_is_retained():
    # With glibc's defaults this loop faulted ~6,000 pages in per step (a batch of 256 through
    # LeNet-5 allocates ~40 MB of activations and gradients); kept memory is reused instead.
    out = subprocess.run([sys.executable, "-c", LOOP], capture_output=True, text=True, check=True, timeout=300)
    taken, faults = out.stdout.split()
    assert taken == "True"
    assert float(faults) < 50, f"{faults} minor page faults per step"


@pytest.mark.parametrize("kwargs, error", [({"mmap_threshold": -1}, ValueError), ({"trim_threshold": 1.5}, TypeError),
                                           ({"mmap_threshold": True}, TypeError)])
def test_bad_thresholds_are_refused_by_name(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        retain_freed_memory(**kwargs)
