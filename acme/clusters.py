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
    """The most recently started pool that is still running, or None."""
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
        Pass it to :func:`cluster_cleanup` (or ``ParallelMap(..., backend=pool)``).
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
    """Start an allocation of MPI workers on SLURM and return a handle to it.

    Maps run on it one after another without waiting in the queue again; release it
    with :func:`cluster_cleanup`.
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
    """esi-acme's name for :func:`slurm_cluster_setup`; works on any SLURM site,
    choosing the partition like ``partition="auto"`` of ParallelMap."""
    kwargs.pop("n_jobs", None)
    kwargs.pop("mem_per_job", None)
    return slurm_cluster_setup(partition=partition, n_workers=n_workers,
                               mem_per_worker=mem_per_worker, timeout=timeout,
                               interactive=interactive, **kwargs)


def cluster_cleanup(handle: Optional[Any] = None) -> None:
    """Stop ``handle``, or the current pool when none is given."""
    pool = handle if handle is not None else current_pool()
    if pool is None:
        log.info("cluster_cleanup: no running worker pool")
        return
    pool.close()
    if pool in _pools:
        _pools.remove(pool)
    log.info("stopped %r", pool)
