"""The local Dask cluster of ``jobs``: its workers' environment."""
from __future__ import annotations

import os

from pyro_dirichlet_prune.jobs import dask_client


def _environ(names):
    return {n: os.environ.get(n) for n in names}


def test_local_workers_keep_glibcs_own_trim_threshold():
    """Dask's nannies would start the workers with MALLOC_TRIM_THRESHOLD_=65536, which doubles a
    fine-tuning epoch's time in page faults; the cluster ``dask_client`` starts unsets it and keeps
    Dask's one-thread settings."""
    with dask_client(2) as (client, threads):
        seen = client.run(_environ, ["MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS"])
    assert threads == 1 and len(seen) == 2
    assert all(env == {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"} for env in seen.values()), seen
