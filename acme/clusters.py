"""Worker pools that outlive one map ("clients" in esi-acme's words).

    pool = acme.local_cluster_setup(n_workers=4)
    with ParallelMap(f, xs) as pmap:      # runs on the pool: no start-up per map
        pmap.compute()
    acme.cluster_cleanup()                # or cluster_cleanup(pool)

``ParallelMap`` uses the most recently started pool that is still running, or the
one passed as ``backend=pool``. ``stop_client="auto"`` stops pools a map started
itself and leaves the user's; ``True`` stops both; ``False`` leaves both running
(a map's own pool then becomes the current pool for the next maps).
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Optional, Union

log = logging.getLogger("acme")

__all__ = ["local_cluster_setup", "slurm_cluster_setup", "esi_cluster_setup",
           "cluster_cleanup", "current_pool"]

_pools: list = []  # running pools, most recent last


def _register(pool: Any) -> Any:
    _pools.append(pool)
    return pool


def current_pool() -> Optional[Any]:
    """The most recently started worker pool that is still running.

    Returns
    -------
    LocalPool or None
        The pool that ``ParallelMap(..., backend="auto")`` runs on, or None when no
        pool is running.
    """
    while _pools and getattr(_pools[-1], "closed", False):
        _pools.pop()
    return _pools[-1] if _pools else None


def _n_workers(n_workers: Union[int, str], name: str = "n_workers") -> Optional[int]:
    from .validation import check_auto_or_int
    value = check_auto_or_int(n_workers, name)
    return None if value == "auto" else value


def local_cluster_setup(n_workers: Union[int, str] = "auto", timeout: float = 60,
                        interactive: bool = True, start_client: bool = True) -> Any:
    """Start worker processes on this machine and return a handle to them.

    Parameters
    ----------
    n_workers : int or "auto"
        Number of worker processes ("auto": the cores this process may use).
    timeout : float
        Seconds to wait for the workers to come up.
    interactive : bool
        On a terminal, ask whether to go on when fewer workers came up than asked.
    start_client : bool
        Accepted for esi-acme scripts; the pool is always started.

    Returns
    -------
    LocalPool
        The running pool; it is also the current pool, which every
        ``ParallelMap(..., backend="auto")`` uses until it is stopped. Pass it to
        ``ParallelMap(..., backend=pool)`` to choose it explicitly, and to
        :func:`cluster_cleanup` to stop it.

    Raises
    ------
    TypeError, ValueError
        A parameter has the wrong type or value.
    RuntimeError
        No worker came up within ``timeout``, or fewer did and the user chose on
        the terminal not to go on.
    """
    from .validation import check_bool, check_positive_number
    from .backends.local import LocalPool, usable_cores
    count = _n_workers(n_workers) or usable_cores()
    timeout = check_positive_number(timeout, "timeout")
    check_bool(interactive, "interactive")
    pool = LocalPool(count, setup_timeout=timeout)
    _accept_fewer(pool, count, len(pool.workers), interactive)
    log.info("started a local pool of %d worker processes", len(pool.workers))
    return _register(pool)


def _accept_fewer(pool: Any, asked: int, got: int, interactive: bool) -> None:
    """Fewer workers than asked: ask on a terminal, otherwise go on with what came up."""
    if got >= asked:
        return
    if got == 0:
        pool.close()
        raise RuntimeError(f"none of the {asked} workers came up in time")
    message = f"only {got} of {asked} workers came up in time"
    if interactive and sys.stdin is not None and sys.stdin.isatty():
        answer = input(f"{message}. Go on with {got}? [Y/n] ")
        if answer.strip().lower() in ("n", "no"):
            pool.close()
            raise RuntimeError(f"{message}; stopped as asked")
    log.warning("%s; going on with %d", message, got)


def slurm_cluster_setup(partition: str = "auto", n_workers: Union[int, str] = "auto",
                        mem_per_worker: str = "auto", timeout: float = 60,
                        interactive: bool = True, **kwargs: Any) -> Any:
    """Hold a SLURM allocation of MPI workers for several maps.

    Submits ONE MPI job (``sbatch``; ``n_workers`` worker ranks + 1 scheduling rank)
    and waits until its ranks are up. Maps then run on it one after another without
    waiting in the queue again: every ``ParallelMap(..., backend="auto")`` uses the
    current pool, or pass it as ``backend=pool``. See :mod:`acme.backends.slurm_pool`.

    Parameters
    ----------
    partition : str
        SLURM partition, or "auto": the one whose memory per CPU fits
        ``mem_per_worker`` (or, when that is "auto", a worker's base need) with the
        least waste.
    n_workers : int or "auto"
        Number of worker ranks ("auto": one per idle CPU of the partition, at most 64).
    mem_per_worker : str
        Memory per worker, such as ``"4GB"``, or "auto" for the partition's default.
    timeout : float
        Seconds to wait for the job to start and its ranks to come up.
    interactive : bool
        When the job is still pending after ``timeout``: on a terminal, ask whether
        to keep waiting; otherwise cancel it and raise ``SlurmSetupTimeout``.
    **kwargs
        ``time_limit`` (minutes or a SLURM time), ``sbatch_args`` / ``job_extra``
        (more sbatch options), ``job_name``, ``folder`` (the pool folder),
        ``orphan_timeout`` (seconds after which the job ends by itself once this
        process is gone).

    Returns
    -------
    SlurmPool
        The running pool (attributes ``job_id``, ``n_workers``, ``partition``,
        ``closed``); also the current pool. Stop it with :func:`cluster_cleanup`.

    Raises
    ------
    SlurmSetupTimeout
        The job did not start within ``timeout`` (it was cancelled).
    SlurmSubmitError, SlurmJobError, RuntimeError
        sbatch refused the job, the job ended before its ranks came up, or SLURM is
        not usable here.
    """
    try:
        from .backends.slurm import start_allocation
    except ImportError as exc:
        raise RuntimeError("this acme has no SLURM allocation support: "
                           f"{exc}") from exc
    pool = start_allocation(partition=partition, n_workers=_n_workers(n_workers),
                            mem_per_worker=mem_per_worker, timeout=timeout,
                            interactive=interactive, **kwargs)
    return _register(pool)


def esi_cluster_setup(partition: str = "auto", n_workers: Union[int, str] = "auto",
                      mem_per_worker: str = "auto", timeout: float = 60,
                      interactive: bool = True, **kwargs: Any) -> Any:
    """esi-acme's name for :func:`slurm_cluster_setup`; works on any SLURM site.

    Parameters
    ----------
    partition, n_workers, mem_per_worker, timeout, interactive, **kwargs
        As for :func:`slurm_cluster_setup`, to which they are passed on. The
        keywords ``n_jobs`` and ``mem_per_job`` of old esi-acme versions are
        dropped without a message.

    Returns
    -------
    SlurmPool
        What :func:`slurm_cluster_setup` returns.
    """
    kwargs.pop("n_jobs", None)
    kwargs.pop("mem_per_job", None)
    return slurm_cluster_setup(partition=partition, n_workers=n_workers,
                               mem_per_worker=mem_per_worker, timeout=timeout,
                               interactive=interactive, **kwargs)


def cluster_cleanup(handle: Optional[Any] = None) -> None:
    """Stop a worker pool.

    Parameters
    ----------
    handle : LocalPool or None
        The pool to stop, as returned by :func:`local_cluster_setup`. None (the
        default) stops the current pool, the most recently started one that is
        still running; with no pool running, nothing happens.
    """
    pool = handle if handle is not None else current_pool()
    if pool is None:
        log.info("cluster_cleanup: no running worker pool")
        return
    pool.close()
    if pool in _pools:
        _pools.remove(pool)
    log.info("stopped %r", pool)
