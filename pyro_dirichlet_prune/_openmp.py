"""OpenMP's wait policy for the command line, set before torch is imported.

torch's CPU kernels run on OpenMP threads (GNU libgomp in the PyPI wheels) whose idle threads spin
by default. A ``dirichlet-prune prune`` run alone on an idle machine gains from that, but two runs
side by side, each with a thread per core, spin against each other: on the project's 2-core
machine, a short prune run (6-8-40-20, 5 fine-tuning epochs) took 37 s alone and 226 s each with
two side by side (6.1×). With ``OMP_WAIT_POLICY=PASSIVE`` idle threads sleep: 47 s alone and
73-74 s for two side by side (2.0× the spinning run alone); ``GOMP_SPINCOUNT=10000`` gave 40 s
and 109 s (docs/measurements.md). libgomp reads the variable when it is loaded, with torch, so it
has to be set before; the command line (the ``dirichlet-prune`` script and ``python -m
pyro_dirichlet_prune``) sets it, unless the user set a wait policy or spin count of their own. A
library user's process is left as it is.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

WAIT_POLICY = "PASSIVE"


def invoked_as_command_line() -> bool:
    """Whether this process is the ``dirichlet-prune`` command (script or ``python -m``)."""
    if Path(sys.argv[0]).name == "dirichlet-prune":
        return True
    orig = getattr(sys, "orig_argv", [])
    return "-m" in orig and orig[orig.index("-m") + 1:orig.index("-m") + 2] == ["pyro_dirichlet_prune"]


def set_wait_policy() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` for the command line's process (module docstring) when
    torch is not loaded yet and the user set neither ``OMP_WAIT_POLICY`` nor ``GOMP_SPINCOUNT``;
    returns whether it did."""
    if "torch" in sys.modules or not invoked_as_command_line():
        return False
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
    return True
