"""Worker pools that outlive one map ("clients" in esi-acme's words).

    pool = acme.local_cluster_setup(n_workers=4)
    with ParallelMap(f, xs) as pmap:      # runs on the pool: no start-up per map
        pmap.compute()
    acme.cluster_cleanup()                # or cluster_cleanup(pool)

``ParallelMap`` uses the most recently started pool that is still running, or the
one passed as ``backend=pool``. ``stop_client="auto"`` stops pools a map started
itself and leaves the user's; ``True`` stops both; ``False`` leaves both running
(a map's own pool then becomes the current pool for the next maps).

The functions take esi-acme 2026.6.2's parameters in esi-acme's order, so scripts
written for it run unchanged; the site presets :func:`esi_cluster_setup` and
:func:`bic_cluster_setup` fall back to local worker processes where SLURM is not
usable, as esi-acme's do.
"""
from __future__ import annotations

import datetime
import getpass
import logging
import os
import platform
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

log = logging.getLogger(__name__)

__all__ = ["local_cluster_setup", "slurm_cluster_setup", "esi_cluster_setup",
           "bic_cluster_setup", "cluster_cleanup", "current_pool"]

_pools: list = []  # running pools, most recent last

#: Seconds between two looks at the memory of a local pool's workers.
MEMORY_CHECK_SECONDS = 0.25


def _register(pool: Any) -> Any:
    _pools.append(pool)
    return pool


def current_pool() -> Optional[Any]:
    """The most recently started worker pool that is still running.

    Returns
    -------
    LocalPool or SlurmPool or None
        The pool that ``ParallelMap(..., backend="auto")`` runs on, or None when no
        pool is running.
    """
    while _pools and getattr(_pools[-1], "closed", False):
        _pools.pop()
    return _pools[-1] if _pools else None


def _is_pool(value: Any) -> bool:
    return hasattr(value, "backend_name") and callable(getattr(value, "close", None))


def _count(value: Any, name: str, minimum: int) -> int:
    """An integer ``>= minimum`` (TypeError / ValueError naming ``name`` otherwise)."""
    from .validation import _is_int
    if not _is_int(value):
        raise TypeError(f"`{name}` has to be an integer >= {minimum}, not "
                        f"{type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` has to be an integer >= {minimum}, not {value}")
    return int(value)


def _amount(value: Any, name: str, unit: str) -> float:
    """A number (of ``unit``) ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` has to be a number of {unit} >= 0, not "
                        f"{type(value).__name__} {value!r}")
    if not value >= 0:
        raise ValueError(f"`{name}` has to be a number of {unit} >= 0, not {value}")
    return float(value)


# ------------------------------------------------------------------ local pools
def local_cluster_setup(n_workers: Optional[Union[int, str]] = None,
                        mem_per_worker: Optional[str] = None, interactive: bool = True,
                        *, timeout: float = 60, start_client: bool = True) -> Any:
    """Start worker processes on this machine and return a handle to them.

    Parameters
    ----------
    n_workers : int, "auto" or None
        Number of worker processes (None or "auto": the cores this process may use).
    mem_per_worker : str or None
        Memory cap of each worker process, such as ``"2GB"`` (esi-acme: Dask's
        ``memory_limit``); "auto": this machine's memory shared by the workers;
        None: no cap. A worker whose own memory grows past the cap is stopped: its
        call fails (``WorkerDied``) and a new worker takes its place.
    interactive : bool
        On a terminal, ask whether to go on when fewer workers came up than asked.
    timeout : float
        Seconds to wait for the workers to come up (keyword only).
    start_client : bool
        Accepted for esi-acme scripts (keyword only); the pool is always started.

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
    cap_mb = _memory_cap(mem_per_worker, count)
    timeout = check_positive_number(timeout, "timeout")
    check_bool(interactive, "interactive")
    check_bool(start_client, "start_client")
    pool = LocalPool(count, setup_timeout=timeout)
    _accept_fewer(pool, count, len(pool.workers), interactive)
    pool.mem_per_worker_mb = cap_mb
    if cap_mb is not None:
        _watch_memory(pool, cap_mb)
    log.info("started a local pool of %d worker processes%s", len(pool.workers),
             f", at most {cap_mb:.0f} MB each" if cap_mb is not None else "")
    return _register(pool)


def _n_workers(n_workers: Optional[Union[int, str]],
               name: str = "n_workers") -> Optional[int]:
    from .validation import check_auto_or_int
    if n_workers is None:
        return None
    value = check_auto_or_int(n_workers, name)
    return None if value == "auto" else value


def _memory_cap(mem_per_worker: Optional[str], count: int) -> Optional[float]:
    """``mem_per_worker`` of a local pool in MB (None: no cap)."""
    from .validation import parse_memory
    if mem_per_worker is None:
        return None
    value = parse_memory(mem_per_worker, "mem_per_worker")
    if value == "auto":  # as Dask's memory_limit="auto": the machine's memory, shared
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 20
        return total / count
    return float(value)


def _private_mb(pid: int) -> Optional[float]:
    """Memory that process ``pid`` holds for itself, in MB (pages it shares with the
    process it was forked from do not count); None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            kb = sum(int(line.split()[1]) for line in fh
                     if line.startswith(("Private_Clean:", "Private_Dirty:")))
    except (OSError, ValueError, IndexError):
        return None
    return kb / 1024


def _watch_memory(pool: Any, cap_mb: float) -> None:
    """Stop any worker of ``pool`` whose own memory exceeds ``cap_mb`` (as Dask's
    nanny stops a worker past its memory limit), until the pool is closed."""
    if _private_mb(os.getpid()) is None:
        log.warning("mem_per_worker cannot be enforced here (no /proc/PID/smaps_rollup):"
                    " the workers run without a memory cap")
        return

    def watch() -> None:
        while not pool.closed:
            for worker in list(pool.workers):
                used = _private_mb(worker.process.pid)
                if used is not None and used > cap_mb and worker.alive():
                    log.warning("worker process %d uses %.0f MB, more than mem_per_worker"
                                " (%.0f MB): stopping it; its call fails and a new "
                                "worker takes its place", worker.process.pid, used, cap_mb)
                    # only the signal: the pool's scheduler sees the death and
                    # replaces the worker (closing its pipes here would break that)
                    worker.process.kill()
            threading.Event().wait(MEMORY_CHECK_SECONDS)

    threading.Thread(target=watch, daemon=True, name="acme-memory-watch").start()


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


# ------------------------------------------------------------------ SLURM pools
def slurm_cluster_setup(partition: str = "auto", n_cores: int = 1,
                        n_workers: Union[int, str] = "auto", processes_per_worker: int = 1,
                        mem_per_worker: str = "auto", n_workers_startup: int = 1,
                        timeout: float = 60, interactive: bool = True,
                        interactive_wait: float = 10, start_client: bool = True,
                        job_extra: Optional[list] = None,
                        worker_extra_args: Optional[list] = None,
                        scheduler_options: Optional[dict] = None,
                        avail_partitions: Optional[list] = None,
                        invalid_partitions: Optional[list] = None,
                        mem_cushion: int = 100, **kwargs: Any) -> Any:
    """Hold a SLURM allocation of MPI workers for several maps.

    Submits ONE MPI job (``sbatch``; the worker ranks + 1 scheduling rank) and waits
    until its ranks are up. Maps then run on it one after another without waiting
    in the queue again: every ``ParallelMap(..., backend="auto")`` uses the current
    pool, or pass it as ``backend=pool``. See :mod:`acme.backends.slurm_pool`. The
    parameters are esi-acme's, in its order.

    Parameters
    ----------
    partition : str
        SLURM partition, or "auto": the one whose memory per CPU fits
        ``mem_per_worker`` (or, when that is "auto", a worker's base need) with the
        least waste.
    n_cores : int
        CPU cores of each worker (``--cpus-per-task``).
    n_workers : int or "auto"
        Number of workers ("auto": one per idle CPU of the partition, at most 64).
    processes_per_worker : int
        Worker processes per worker: the job has ``n_workers * processes_per_worker``
        worker ranks, each with ``n_cores // processes_per_worker`` cores (at least
        one) and its share of ``mem_per_worker``.
    mem_per_worker : str
        Memory per worker, such as ``"4GB"``, or "auto" for the partition's default.
        More than the partition allows (less ``mem_cushion``) is capped, with a
        warning.
    n_workers_startup : int
        Workers to wait for (>= 0). All ranks of the job start together, so the
        wait ends when the job's ranks are up, whatever this number.
    timeout : float
        Seconds to wait for the job to start and its ranks to come up.
    interactive : bool
        When the job is still pending after ``timeout``: on a terminal, ask whether
        to keep waiting; otherwise cancel it and raise ``SlurmSetupTimeout``.
    interactive_wait : float
        Seconds that question waits for an answer; without one the job is
        cancelled (it has no worker up to go on with).
    start_client : bool
        Accepted for esi-acme scripts: acme has no separate client, the pool it
        returns is both.
    job_extra : list of str or None
        More sbatch options, each starting with ``-``. ``--output=PATH`` (whose
        folder must exist) moves the job's log there.
    worker_extra_args, scheduler_options : None
        Options of Dask's worker and scheduler in esi-acme; acme has neither, so
        anything but None (or empty) is refused.
    avail_partitions : list of str or None
        The partitions acme may use (None: every partition sinfo lists).
    invalid_partitions : list of str or None
        Partitions acme must not use.
    mem_cushion : int
        MB of each worker's memory kept clear of the partition's limit.
    **kwargs
        ``time_limit`` (minutes or a SLURM time), ``sbatch_args`` (more sbatch
        options), ``job_name``, ``folder`` (the pool folder), ``orphan_timeout``
        (seconds after which the job ends by itself once this process is gone).

    Returns
    -------
    SlurmPool
        The running pool (attributes ``job_id``, ``n_workers`` (worker ranks),
        ``partition``, ``cpus_per_worker``, ``mem_per_worker_mb``, ``closed``); also
        the current pool. Stop it with :func:`cluster_cleanup`.

    Raises
    ------
    SlurmUnavailableError
        SLURM is not usable here (an ``OSError``, as esi-acme's ``IOError``).
    SlurmSetupTimeout
        The job did not start within ``timeout`` (it was cancelled).
    SlurmSubmitError, SlurmJobError, RuntimeError
        sbatch refused the job, the job ended before its ranks came up, or the
        job's Python cannot run the ranks (mpi4py missing).
    TypeError, ValueError
        A parameter has the wrong type or value.
    """
    from .validation import check_bool
    cores = _count(n_cores, "n_cores", 1)
    processes = _count(processes_per_worker, "processes_per_worker", 1)
    workers = _n_workers(n_workers)
    _count(n_workers_startup, "n_workers_startup", 0)
    wait = _amount(interactive_wait, "interactive_wait", "seconds")
    check_bool(start_client, "start_client")
    cushion = _amount(mem_cushion, "mem_cushion", "MB")
    extra = _check_job_extra(job_extra)
    for name, value in (("worker_extra_args", worker_extra_args),
                        ("scheduler_options", scheduler_options)):
        if value:
            raise ValueError(
                f"`{name}` are options of Dask's {name.split('_')[0]}, which acme does "
                "not have: its workers are the MPI ranks of one SLURM job. Leave it out;"
                " pass sbatch options as job_extra")
    only = _partition_names(avail_partitions, "avail_partitions")
    excluded = _partition_names(invalid_partitions, "invalid_partitions")
    mem = mem_per_worker
    if processes > 1:  # esi-acme: several Dask worker processes share one job's share
        workers = workers * processes if workers else None
        cores = max(1, cores // processes)
        mem = _split_memory(mem_per_worker, processes)
    try:
        from .backends.slurm import start_allocation
    except ImportError as exc:
        raise RuntimeError("this acme has no SLURM allocation support: "
                           f"{exc}") from exc
    pool = start_allocation(partition=partition, n_workers=workers, mem_per_worker=mem,
                            timeout=timeout, interactive=interactive,
                            cpus_per_worker=cores, interactive_wait=wait,
                            only_partitions=only, excluded_partitions=excluded,
                            mem_cushion=cushion, job_extra=extra, **kwargs)
    return _register(pool)


def _check_job_extra(job_extra: Any) -> list:
    """esi-acme's checks of ``job_extra``: a list of sbatch options."""
    if job_extra is None:
        return []
    if not isinstance(job_extra, list):
        raise TypeError(f"`job_extra` has to be a list of sbatch options, not "
                        f"{type(job_extra).__name__} {job_extra!r}")
    for option in job_extra:
        if not isinstance(option, str):
            raise TypeError(f"`job_extra` has to hold sbatch options (strings), not "
                            f"{type(option).__name__} {option!r}")
        if not option.startswith("-"):
            raise ValueError(f"`job_extra` options start with - or --, not {option!r} "
                             "(write '--name=value' as one item)")
        if option.startswith(("--output", "-o")):
            path = option.partition("=")[2]
            if "=" not in option or not path:
                raise ValueError(f"the SLURM output file is given as --output=PATH in "
                                 f"`job_extra`, not {option!r}")
            folder = os.path.dirname(os.path.expanduser(path))
            if folder and not os.path.isdir(folder):
                raise ValueError(f"the folder of the SLURM output file in `job_extra` "
                                 f"has to exist: {folder!r} does not")
    return list(job_extra)


def _partition_names(value: Any, name: str) -> Optional[set]:
    """A list of partition names as a set; None for None or an empty list (esi-acme's
    default ``[]``: avail_partitions then means every partition sinfo lists)."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple, set)) or \
            not all(isinstance(v, str) for v in value):
        raise TypeError(f"`{name}` has to be a list of partition names, not "
                        f"{type(value).__name__} {value!r}")
    return set(value) or None


def _split_memory(mem_per_worker: Any, parts: int) -> Any:
    """A worker's memory shared by ``parts`` ranks."""
    from .validation import parse_memory
    value = parse_memory(mem_per_worker, "mem_per_worker")
    return value if value == "auto" else f"{value / parts:.3f}MB"


# ------------------------------------------------------------------ site presets
@dataclass(frozen=True)
class _Site:
    """What esi-acme's preset for one HPC site sets before slurm_cluster_setup."""

    name: str
    invalid_partitions: tuple
    marker: str                       # a folder that exists only at that site ({user})
    log_root: str                     # the site's folder for SLURM logs ({user})
    cores: Callable[[float], int]     # a worker's cores from mem / DefMemPerCPU
    wrong_arch: Callable[[str, str], bool]  # (partition, machine): cannot start there


_ESI = _Site("esi_cluster_setup", ("PREPO", "ESI"), "/cs/slurm", "/cs/slurm/{user}",
             lambda ratio: max(1, int(ratio)),
             lambda part, arch: (part == "E880" and arch == "x86_64")
             or (arch == "ppc64le" and part != "E880"))
_BIC = _Site("bic_cluster_setup", ("VISppc", "VISx86"), "/mnt/hpc/home/{user}",
             "/mnt/hpc/home/{user}/slurm",
             lambda ratio: max(1, round(ratio)),
             lambda part, arch: (arch == "ppc64le" and "x86" in part)
             or (arch == "x86_64" and "ppc" in part))


def esi_cluster_setup(partition: str = "auto", n_workers: Union[int, str] = 2,
                      mem_per_worker: str = "auto", cores_per_worker: Optional[int] = None,
                      n_workers_startup: int = 1, timeout: float = 60,
                      interactive: bool = True, interactive_wait: float = 120,
                      start_client: bool = True, job_extra: Optional[list] = None,
                      mem_cushion: int = 100, **kwargs: Any) -> Any:
    """Start SLURM workers as esi-acme does on the ESI HPC cluster; local worker
    processes where SLURM is not usable.

    A running pool is returned as it is (no second pool on top of it). Where SLURM
    is not usable: on a terminal (with ``interactive``) the user is asked whether
    to start local workers instead, else they are started with a warning; either
    way :func:`local_cluster_setup` with one worker per core, as esi-acme.

    Parameters
    ----------
    partition : str
        SLURM partition, or "auto" (see :func:`slurm_cluster_setup`); PREPO and ESI
        are not for workers.
    n_workers : int or "auto"
        Number of SLURM workers.
    mem_per_worker : str
        Memory per worker, such as ``"8GB"``, or "auto".
    cores_per_worker : int or None
        CPU cores per worker; None: ``mem_per_worker`` divided by the partition's
        DefMemPerCPU (at least 1000 MB), at least one.
    n_workers_startup, timeout, interactive, interactive_wait, start_client, mem_cushion
        As for :func:`slurm_cluster_setup`.
    job_extra : list of str or None
        More sbatch options. Without ``--output``, the job's log goes to
        ``/cs/slurm/USER/USER_DATE/`` where that folder exists (at ESI), else into
        the pool folder.
    **kwargs
        ``processes_per_worker``, and the keywords of :func:`slurm_cluster_setup`.
        ``n_jobs`` and ``mem_per_job`` of old esi-acme versions are dropped.

    Returns
    -------
    SlurmPool or LocalPool
        The pool (see :func:`slurm_cluster_setup`, :func:`local_cluster_setup`).

    Raises
    ------
    SlurmUnavailableError
        SLURM is not usable and the user chose not to start local workers.
    ValueError
        The partition is not for this machine's architecture, or not one to use.
    """
    return _site_setup(_ESI, partition, n_workers, mem_per_worker, cores_per_worker,
                       n_workers_startup, timeout, interactive, interactive_wait,
                       start_client, job_extra, mem_cushion, kwargs)


def bic_cluster_setup(partition: str = "auto", n_workers: Union[int, str] = 2,
                      mem_per_worker: str = "auto", cores_per_worker: Optional[int] = None,
                      n_workers_startup: int = 1, timeout: float = 120,
                      interactive: bool = True, interactive_wait: float = 120,
                      start_client: bool = True, job_extra: Optional[list] = None,
                      mem_cushion: int = 500, **kwargs: Any) -> Any:
    """Start SLURM workers as esi-acme does on the CoBIC HPC cluster; local worker
    processes where SLURM is not usable.

    As :func:`esi_cluster_setup`, with CoBIC's settings: the partitions VISppc and
    VISx86 are not for workers; x86 partitions cannot be used from a POWER host nor
    ppc partitions from an x86_64 host; ``cores_per_worker=None`` rounds
    ``mem_per_worker`` / DefMemPerCPU; logs go to ``/mnt/hpc/home/USER/slurm/``
    where that folder exists; ``timeout`` 120 s and ``mem_cushion`` 500 MB by
    default. (Dask's dashboard ports and the ssh tunnel hint have no counterpart:
    acme has no dashboard.)

    Parameters
    ----------
    partition, n_workers, mem_per_worker, cores_per_worker, n_workers_startup, timeout, \
interactive, interactive_wait, start_client, job_extra, mem_cushion, **kwargs
        As for :func:`esi_cluster_setup`.

    Returns
    -------
    SlurmPool or LocalPool
        The pool (see :func:`slurm_cluster_setup`, :func:`local_cluster_setup`).
    """
    return _site_setup(_BIC, partition, n_workers, mem_per_worker, cores_per_worker,
                       n_workers_startup, timeout, interactive, interactive_wait,
                       start_client, job_extra, mem_cushion, kwargs)


def _site_setup(site: _Site, partition: str, n_workers: Union[int, str],
                mem_per_worker: str, cores_per_worker: Optional[int],
                n_workers_startup: int, timeout: float, interactive: bool,
                interactive_wait: float, start_client: bool, job_extra: Optional[list],
                mem_cushion: float, kwargs: dict) -> Any:
    """esi-acme's site preset: a running pool, else local workers without SLURM,
    else the site's settings handed to :func:`slurm_cluster_setup`."""
    from .validation import check_bool
    check_bool(interactive, "interactive")
    kwargs.pop("n_jobs", None)
    kwargs.pop("mem_per_job", None)
    running = _running_pool(site.name)
    if running is not None:
        return running
    if _go_local(site.name, interactive):
        return local_cluster_setup(interactive=interactive)
    if not isinstance(partition, str):
        raise TypeError(f"`partition` has to be 'auto' or the name of a SLURM "
                        f"partition, not {type(partition).__name__} {partition!r}")
    machine = platform.machine()
    if partition != "auto" and site.wrong_arch(partition, machine):
        raise ValueError(f"{site.name}: workers in partition {partition!r} cannot be "
                         f"started from this {machine} host; use a partition of its "
                         "architecture")
    if cores_per_worker is None:
        cores_per_worker = _cores_from_memory(site, partition, mem_per_worker)
    extra = _check_job_extra(job_extra)
    if not any(o.startswith(("--output", "-o")) for o in extra):
        extra += _site_log_option(site)
    return slurm_cluster_setup(
        partition, cores_per_worker, n_workers, kwargs.pop("processes_per_worker", 1),
        mem_per_worker, n_workers_startup, timeout, interactive, interactive_wait,
        start_client, extra, invalid_partitions=list(site.invalid_partitions),
        mem_cushion=mem_cushion, **kwargs)


def _running_pool(name: str) -> Optional[Any]:
    """The current pool when it still has workers (esi-acme does not start a new
    cluster on top of one); a pool without any is stopped."""
    pool = current_pool()
    if pool is None:
        return None
    try:
        pool.check()
    except RuntimeError as exc:
        log.info("%s: the current worker pool has no active workers (%s): stopping it",
                 name, exc)
        cluster_cleanup(pool)
        return None
    log.info("%s: a worker pool is running (%r): using it, not starting a new one",
             name, pool)
    return pool


def _go_local(name: str, interactive: bool) -> bool:
    """Whether to start local workers because SLURM is not usable from here."""
    from .backends.slurm_site import SlurmUnavailableError, slurm_unusable_reason
    reason = slurm_unusable_reason(refresh=True)
    if reason is None:
        return False
    host = socket.gethostname()
    if interactive and sys.stdin is not None and sys.stdin.isatty():
        answer = input(f"SLURM is not usable on {host} ({reason}). Start local worker "
                       "processes instead? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise SlurmUnavailableError(f"{name}: SLURM is not usable on {host} "
                                        f"({reason}); no local workers started, as asked")
    log.warning("%s: SLURM is not usable on %s (%s): starting local worker processes "
                "instead, one per core, as local_cluster_setup() does (n_workers and "
                "mem_per_worker are for SLURM workers)", name, host, reason)
    return True


def _cores_from_memory(site: _Site, partition: str, mem_per_worker: Any) -> int:
    """esi-acme's ``cores_per_worker=None``: the worker's memory in units of the
    partition's DefMemPerCPU (at least 1000 MB); 1 when either is not known yet."""
    from .validation import parse_memory
    mem = parse_memory(mem_per_worker, "mem_per_worker")
    if mem == "auto" or partition == "auto":
        return 1
    from .backends.slurm_site import read_partitions
    info = read_partitions().get(partition)
    if info is None:
        return 1  # slurm_cluster_setup names the partitions there are
    cores = site.cores(mem / max(1000.0, info.def_mem_per_cpu or 0.0))
    log.debug("%s: %d core(s) per worker for %.0f MB in partition %s", site.name, cores,
              mem, partition)
    return cores


def _site_log_option(site: _Site) -> list:
    """``--output=`` into the site's folder for SLURM logs, where it exists."""
    user = getpass.getuser()
    if not os.path.isdir(site.marker.format(user=user)):
        return []
    folder = os.path.join(site.log_root.format(user=user),
                          f"{user}_{datetime.datetime.now():%Y%m%d-%H%M%S}")
    os.makedirs(folder, exist_ok=True)
    log.debug("%s: SLURM logs go to %s", site.name, folder)
    return [f"--output={os.path.join(folder, 'slurm-%j.out')}"]


# ------------------------------------------------------------------ stopping
def cluster_cleanup(client: Optional[Any] = None) -> None:
    """Stop a worker pool.

    Parameters
    ----------
    client : LocalPool or SlurmPool or None
        The pool to stop, as returned by one of the ``*_cluster_setup`` functions.
        None (the default) stops the current pool, the most recently started one
        that is still running; with no pool running, nothing happens.

    Raises
    ------
    TypeError
        ``client`` is neither a worker pool nor None.
    """
    if client is not None and not _is_pool(client):
        raise TypeError("`client` has to be a worker pool returned by "
                        "local_cluster_setup, slurm_cluster_setup, esi_cluster_setup or "
                        "bic_cluster_setup, or None for the current pool; not "
                        f"{type(client).__name__} {client!r}")
    pool = client if client is not None else current_pool()
    if pool is None:
        log.warning("cluster_cleanup: no running worker pool found")
        return
    pool.close()
    if pool in _pools:
        _pools.remove(pool)
    log.info("stopped %r", pool)
