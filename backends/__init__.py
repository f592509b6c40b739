"""Backends: where calls run. Looked up by name from a registry.

Built-in backends are registered lazily by import path, so importing acme never
imports what a backend needs (mpi4py, ...). Third parties add backends with
:func:`register_backend` or through the ``acme.backends`` entry-point group; a plug-in
that fails to load is logged, not fatal.
"""
from __future__ import annotations

import importlib
import logging
from typing import Any, Callable, Optional, Union

from .base import Backend

log = logging.getLogger("acme")

__all__ = ["Backend", "register_backend", "registered_backends", "get_backend", "is_registered",
           "auto_backend_name", "choose_auto_backend"]

ENTRY_POINT_GROUP = "acme.backends"

# name -> Backend subclass, or "module:Class" to import on first use
_REGISTRY: dict[str, Union[type, str]] = {
    "sequential": "acme.backends.sequential:SequentialBackend",
    "local": "acme.backends.local:LocalBackend",
    "mpi": "acme.backends.mpi:MPIBackend",
    "slurm": "acme.backends.slurm:SlurmBackend",
}
_entry_points_loaded = False


def register_backend(name: str, backend: Union[type, str]) -> None:
    """Make ``backend`` (a Backend subclass or ``"module:Class"``) available as ``name``."""
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"a backend name has to be a non-empty string other than "
                         f"'auto', not {name!r}")
    if not isinstance(backend, str) and not (isinstance(backend, type)
                                             and issubclass(backend, Backend)):
        raise TypeError(f"backend {name!r} has to be a Backend subclass or a "
                        f"'module:Class' string, not {backend!r}")
    _REGISTRY[name] = backend


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    try:
        from importlib.metadata import entry_points
        found = entry_points(group=ENTRY_POINT_GROUP)
    except Exception as exc:  # broken metadata must not break acme
        log.warning("could not read the %s entry points: %s", ENTRY_POINT_GROUP, exc)
        return
    for ep in found:
        if ep.name not in _REGISTRY:
            _REGISTRY[ep.name] = ep.value


def registered_backends() -> list[str]:
    """Names that ``backend=`` accepts (besides "auto")."""
    _load_entry_points()
    return sorted(_REGISTRY)


def is_registered(name: str) -> bool:
    """Whether ``backend=name`` is accepted; plug-ins are looked up only for names
    that are not built in (reading entry points costs tens of milliseconds)."""
    if name in _REGISTRY:
        return True
    _load_entry_points()
    return name in _REGISTRY


def get_backend(name: str) -> type:
    """The Backend subclass registered as ``name``."""
    if not is_registered(name):
        raise ValueError(f"`backend` has to be 'auto' or one of {registered_backends()}, "
                         f"not {name!r}")
    target = _REGISTRY[name]
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:
            raise ImportError(f"backend {name!r} could not be loaded from {module_name}: "
                              f"{exc}") from exc
        _REGISTRY[name] = target
    return target


def auto_backend_name() -> str:
    """What ``backend="auto"`` means here, for no particular function and ignoring
    running pools: "mpi", "slurm" or "local" (see :func:`choose_auto_backend`)."""
    return choose_auto_backend(None, pools=False)[0]


def choose_auto_backend(func: Optional[Callable] = None, pools: bool = True) -> tuple:
    """What ``backend="auto"`` runs the calls of ``func`` on, and why.

    In order: MPI inside an ``acme.mpi_run`` job; the running pool of
    :func:`acme.local_cluster_setup` / :func:`acme.slurm_cluster_setup` (``pools``);
    SLURM (one job per run) where SLURM is usable, this process is neither part of
    an MPI run nor inside a SLURM job, and the job could run the calls (its Python
    imports mpi4py and acme, its ranks can load ``func``); else local processes.
    ``ACME_AUTO_SLURM=0`` in the environment keeps "auto" off SLURM (the test suite
    sets it; a user on a login node may too).

    Returns
    -------
    tuple
        ``(name, pool, reason)``: the backend's name, the running pool to use (or
        None) and a sentence saying why.
    """
    import sys
    runner = sys.modules.get("acme.mpi_run")
    mpi_pool = getattr(runner, "active_pool", lambda: None)() if runner else None
    if mpi_pool is not None:
        return "mpi", None, (f"inside an acme.mpi_run job: the calls run on its "
                             f"{len(getattr(mpi_pool, 'workers', []))} worker rank(s)")
    if pools:
        from acme.clusters import current_pool
        pool = current_pool()
        if pool is not None:
            return pool.backend_name, pool, _pool_reason(pool)
    why_not = _why_not_slurm(func)
    if why_not is None:
        return "slurm", None, ("SLURM is usable here, this process is not inside a job, "
                               "and the job can run the calls: one sbatch job per run; "
                               "ACME_AUTO_SLURM=0 keeps auto local")
    return "local", None, why_not


def _pool_reason(pool: Any) -> str:
    if pool.backend_name == "slurm":
        return (f"the running SLURM worker pool (job {pool.job_id}, {pool.n_workers} "
                f"worker rank(s), partition {pool.partition}) of slurm_cluster_setup")
    return (f"the running {pool.backend_name} worker pool ({pool.n_workers} workers) of "
            f"{pool.backend_name}_cluster_setup or of a map with stop_client=False")


# --- SLURM detection for "auto" (see backends/slurm.py) -----------------------------
_MPI_LAUNCH_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


def _why_not_slurm(func: Optional[Callable]) -> Optional[str]:
    """Why "auto" does not submit to SLURM (None: it does)."""
    import os
    from acme.progress import env_flag  # the one grammar of acme's yes/no variables
    setting = os.environ.get("ACME_AUTO_SLURM", "").strip()
    if setting and not env_flag("ACME_AUTO_SLURM"):
        return f"ACME_AUTO_SLURM={setting} keeps auto off SLURM"
    launcher = next((v for v in _MPI_LAUNCH_VARIABLES if os.environ.get(v)), None)
    if launcher:
        return f"this process was started by an MPI launcher ({launcher} is set)"
    from .slurm import (function_problem, in_slurm_allocation, job_python_problem,
                        slurm_unusable_reason)
    if in_slurm_allocation():
        return (f"this process runs inside SLURM job "
                f"{os.environ.get('SLURM_JOB_ID') or os.environ.get('SLURM_JOBID')}")
    unusable = slurm_unusable_reason()
    if unusable:
        return f"SLURM is not usable here: {unusable}"
    problem = job_python_problem()[0] or (function_problem(func) if func is not None
                                          else None)
    return f"SLURM is usable here, but {problem}" if problem else None
