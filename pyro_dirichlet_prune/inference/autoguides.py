"""Pyro's autoguides as switch posteriors, behind the same interface as the Dirichlet guide.

* ``normal``: ``AutoNormal``, a mean-field Gaussian in the unconstrained space of each simplex
  (Pyro's stick-breaking bijection), i.e. a logistic-normal-type switch posterior;
* ``delta``: ``AutoDelta``, a point estimate (MAP);
* ``lowrank``: ``AutoLowRankMultivariateNormal``, a Gaussian with low-rank correlations across
  all switches, as a correlated reference.

All start at the prior mean (``init_to_mean``: uniform switches) and must be fitted with
``Trace_ELBO``: in Pyro 1.9.2 ``TraceMeanField_ELBO`` mis-handles the log-density that these
guides attach to their ``Delta`` sites and optimises another objective
(``tests/test_autoguides.py`` shows the two disagree).
"""
from __future__ import annotations

from pyro.infer.autoguide import AutoDelta, AutoLowRankMultivariateNormal, AutoNormal, init_to_mean


AUTOGUIDES = {"normal": AutoNormal, "delta": AutoDelta, "lowrank": AutoLowRankMultivariateNormal}


def make_autoguide(name: str, model):
    """The autoguide ``name`` (a key of ``AUTOGUIDES``) for ``model``, started at the prior mean."""
    if name not in AUTOGUIDES:
        raise ValueError(f"name must be one of {', '.join(AUTOGUIDES)}, got {name!r}")
    return AUTOGUIDES[name](model, init_loc_fn=init_to_mean)
