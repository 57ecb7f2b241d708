"""OpenMP's spin count for the command line, set before torch is imported.

torch's CPU kernels run on OpenMP threads (GNU libgomp in the PyPI wheels) whose idle threads spin
by default. A ``dirichlet-prune prune`` run alone on an idle machine gains from that, but two runs
side by side, each with a thread per core, spin against each other. On the project's 2-core
machine a short prune run (6-8-40-20, 5 fine-tuning epochs) took, alone and as one of two side by
side: 37 s and 226 s with libgomp's default spinning (6.1×); 47 s and 74 s with
``OMP_WAIT_POLICY=PASSIVE`` (but a whole 40-epoch run took 224 s instead of 156-183 s: sleeping
costs the small kernels of fine-tuning); 40 s and 74-75 s with ``GOMP_SPINCOUNT=1000`` (2.0×);
36 s and 82 s with 3000; 40 s and 109 s with 10000 (docs/measurements.md). libgomp reads the
variable when it is loaded, with torch, so it has to be set before: the command line (the
``dirichlet-prune`` script and ``python -m pyro_dirichlet_prune``) sets ``GOMP_SPINCOUNT=1000``
unless the user set a spin count or wait policy of their own. A library user's process is left as
it is.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

SPIN_COUNT = "1000"


def invoked_as_command_line() -> bool:
    """Whether this process is the ``dirichlet-prune`` command (script or ``python -m``)."""
    if Path(sys.argv[0]).name == "dirichlet-prune":
        return True
    orig = getattr(sys, "orig_argv", [])
    return "-m" in orig and orig[orig.index("-m") + 1:orig.index("-m") + 2] == ["pyro_dirichlet_prune"]


def set_spin_count() -> bool:
    """Set ``GOMP_SPINCOUNT=1000`` for the command line's process (module docstring) when torch is
    not loaded yet and the user set neither ``GOMP_SPINCOUNT`` nor ``OMP_WAIT_POLICY``; returns
    whether it did."""
    if "torch" in sys.modules or not invoked_as_command_line():
        return False
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return False
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return True
