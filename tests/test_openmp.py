"""The command line's OpenMP spin count: set before torch loads, for the command only."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pyro_dirichlet_prune import _openmp

PROBE = ("import sys; sys.argv[0] = {argv0!r}; import pyro_dirichlet_prune, os, torch; "
         "print(os.environ.get('GOMP_SPINCOUNT'))")


def _policy(argv0: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv0=argv0)], env=clean | env, capture_output=True,
                         text=True, check=True, timeout=120)
    return out.stdout.split()[-1]


def test_the_command_spins_briefly_and_a_library_user_is_left_alone():
    assert _policy("/usr/local/bin/dirichlet-prune") == "1000"
    assert _policy("my_script.py") == "None"
    assert _policy("/usr/local/bin/dirichlet-prune", GOMP_SPINCOUNT="50000") == "50000"
    assert _policy("/usr/local/bin/dirichlet-prune", OMP_WAIT_POLICY="ACTIVE") == "None"


@pytest.mark.parametrize("orig, expected", [
    (["python", "-m", "pyro_dirichlet_prune", "prune"], True),
    (["python", "-m", "pytest", "tests"], False),
    (["python", "script.py"], False),
])
def test_python_dash_m_is_the_command_line(monkeypatch, orig, expected):
    monkeypatch.setattr(sys, "orig_argv", orig)
    monkeypatch.setattr(sys, "argv", [orig[1] if orig[1] != "-m" else "-m"])
    assert _openmp.invoked_as_command_line() is expected


def test_nothing_is_set_once_torch_is_loaded(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dirichlet-prune"])
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert "torch" in sys.modules and _openmp.set_spin_count() is False
    assert "GOMP_SPINCOUNT" not in os.environ


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_default_threads_follow_omp_num_threads_and_the_cpu_affinity():
    probe = ("import os; os.sched_setaffinity(0, {{min(os.sched_getaffinity(0))}}) if {pin} else None; "
             "from pyro_dirichlet_prune.cli.options import set_threads; print(set_threads(None), set_threads(3))")
    clean = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}

    def run(pin: bool, **env: str) -> list[str]:
        return subprocess.run([sys.executable, "-c", probe.format(pin=pin)], env=clean | env, capture_output=True,
                              text=True, check=True, timeout=120).stdout.split()

    assert run(True) == ["1", "3"]  # one core allowed: one thread, unless told
    assert run(False, OMP_NUM_THREADS="1") == ["1", "3"]
