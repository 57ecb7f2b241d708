"""Independent jobs on a Dask cluster: the one runner of ``search`` and ``compare-guides``.

A job is a plain function of picklable arguments that returns a picklable result; the client
(the process that called ``run_search`` or ``run_compare``) submits the jobs and writes every
result as it comes back. Where the jobs run is the client's choice (``dask_client``):

* ``jobs=1`` (the default): one worker thread inside this process (a ``LocalCluster`` with
  ``processes=False``), so a laptop run needs no second process and sees the caller's objects;
* ``jobs=N``: a ``LocalCluster`` of N worker processes with one thread each;
* ``scheduler="tcp://HOST:PORT"``: the workers of an existing Dask scheduler (``dask scheduler``
  plus ``dask worker`` on any number of hosts, or ``dask-jobqueue`` on SLURM);
* ``client=``: a ``dask.distributed.Client`` the caller made (left open afterwards).

A worker that dies mid-job loses nothing: Dask runs the job again on another worker (up to
``distributed.scheduler.allowed-failures`` times). Workers need the inputs a job names (data
folder, checkpoint) at the same paths; ``cached`` keeps what a worker built for later jobs.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Hashable, Iterator

import torch

from .errors import UserError

_CACHE: dict[Hashable, Any] = {}
CONNECT_TIMEOUT = 20  # seconds to reach a scheduler
WORKER_ENVIRON = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
"""Dask's nannies start workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which makes glibc hand
every freed tensor buffer back to the system and fault it in again: a LeNet-5 fine-tuning epoch
then takes 12.6 s instead of 6.0 s (5 s of it system time, 2.5 million page faults;
docs/finetuning.md). The local cluster's workers keep glibc's own setting; for workers started
by hand, a Dask config file does the same (docs/distributed.md)."""


def cached(key: Hashable, build: Callable[[], Any]) -> Any:
    """``build()`` the first time a process asks for ``key``, the same object afterwards: what a
    worker loaded for one job (network, data) serves its next jobs."""
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def job_threads(threads: int | None) -> None:
    """Set torch's CPU threads for a job (``None``: leave them, as the in-process worker does)."""
    if threads is not None:
        torch.set_num_threads(threads)


def check_runner(jobs: int, scheduler: str | None, client: Any = None) -> None:
    """Raise ``UserError`` (a ``ValueError``) naming the argument when ``jobs``, ``scheduler`` and ``client`` do not
    describe one runner."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"jobs must be a positive integer, got {jobs!r}")
    if scheduler is not None and client is not None:
        raise UserError("give scheduler or client, not both")
    if scheduler is not None and jobs != 1:
        raise UserError(f"give jobs or scheduler, not both: {jobs} jobs start a local cluster, a scheduler runs the "
                        f"jobs on its own workers")
    if client is not None and jobs != 1:
        raise UserError(f"give jobs or client, not both: {jobs} jobs start a local cluster, a client runs the jobs "
                        f"on its own workers")
    if scheduler is not None and not isinstance(scheduler, str):
        raise UserError(f"scheduler must be an address such as 'tcp://host:8786', got {type(scheduler).__name__}")


@contextlib.contextmanager
def dask_client(jobs: int = 1, scheduler: str | None = None, client: Any = None,
                shared: tuple[Hashable, Any] | None = None) -> Iterator[tuple[Any, int | None]]:
    """A ``dask.distributed.Client`` for the jobs (module docstring) and the torch threads each
    job should set (``None`` for the in-process worker, which keeps the caller's setting; 1 for
    the workers of a local cluster, which share this machine's cores; 1 for a scheduler's
    workers too: start them with ``--nthreads`` per core). ``shared``, a ``(key, value)`` the
    caller has already built, is what ``cached(key, ...)`` returns to workers inside this
    process, for as long as the client is open. A cluster this function starts is closed on
    exit, also on an exception or Ctrl-C."""
    check_runner(jobs, scheduler, client)
    with _clients(jobs, scheduler, client) as (c, threads):
        if shared is None or not in_this_process(c):
            yield c, threads
            return
        key, value = shared
        _CACHE[key] = value
        try:
            yield c, threads
        finally:
            _CACHE.pop(key, None)


@contextlib.contextmanager
def _clients(jobs: int, scheduler: str | None, client: Any) -> Iterator[tuple[Any, int | None]]:
    from distributed import Client, LocalCluster

    if client is not None:
        yield client, 1
        return
    if scheduler is not None:
        try:
            c = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise UserError(f"scheduler {scheduler!r}: no Dask scheduler answered within {CONNECT_TIMEOUT} s "
                            f"({type(exc).__name__}: {exc})") from None
        with c:
            yield c, 1
        return
    import dask

    processes = jobs > 1
    with _quiet_distributed(), dask.config.set(WORKER_ENVIRON), \
            LocalCluster(n_workers=jobs, threads_per_worker=1, processes=processes, dashboard_address=":0",
                         silence_logs=logging.CRITICAL) as cluster, Client(cluster) as c:
        yield c, (1 if processes else None)


@contextlib.contextmanager
def _quiet_distributed() -> Iterator[None]:
    """Keep the local cluster's log quiet: a job's exception reaches the caller through its
    result, so the worker's own report of it (and of a worker restarted) would say it twice."""
    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def in_this_process(client: Any) -> bool:
    """Whether the client's workers run inside this process (``jobs=1``)."""
    cluster = getattr(client, "cluster", None)
    return cluster is not None and not getattr(cluster, "processes", True)


def collect(client: Any, pending: dict, on_result: Callable[[Any, Any], None]) -> None:
    """Hand every job's result to ``on_result(label, result)`` in this process as soon as it comes
    back; ``pending`` maps each submitted future to its label and is emptied as results arrive.
    A job that fails, or Ctrl-C, stops the collection: the results already back are handed
    over, the jobs still pending are cancelled, and the exception goes to the caller."""
    from distributed import as_completed

    def hand_over(future) -> None:
        label = pending.pop(future)
        on_result(label, future.result())

    try:
        for future in as_completed(list(pending)):
            if future in pending:
                hand_over(future)
    except BaseException:
        for future in [f for f in pending if f.status == "finished"]:
            hand_over(future)
        raise
    finally:
        if pending:
            client.cancel(list(pending))
