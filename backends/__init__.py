"""Backends: where calls run. Looked up by name from a registry.

Built-in backends are registered lazily by import path, so importing acme never
imports what a backend needs (mpi4py, ...). Third parties add backends with
:func:`register_backend` or through the ``acme.backends`` entry-point group; a plug-in
that fails to load is logged, not fatal.
"""
from __future__ import annotations

import importlib
import logging
from typing import Union

from .base import Backend

log = logging.getLogger("acme")

__all__ = ["Backend", "register_backend", "registered_backends", "get_backend", "is_registered",
           "auto_backend_name"]

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
    """What ``backend="auto"`` means here: MPI inside an ``acme.mpi_run`` job; SLURM
    (one job submitted per run) where SLURM is usable and this process is not part of
    an MPI run or a SLURM job; else local processes.

    ``ACME_AUTO_SLURM=0`` in the environment keeps "auto" off SLURM (the test suite
    sets it; a user on a login node may too).
    """
    import sys
    runner = sys.modules.get("acme.mpi_run")
    if runner is not None and getattr(runner, "active_pool", lambda: None)() is not None:
        return "mpi"
    if _slurm_auto():
        return "slurm"
    return "local"


# --- SLURM detection for "auto" (see backends/slurm.py) -----------------------------
_MPI_LAUNCH_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


def _slurm_auto() -> bool:
    """Whether "auto" submits to SLURM: usable (``sbatch`` on PATH, ``sinfo``
    answers), and we are neither inside a SLURM job nor started by an MPI launcher."""
    import os
    if os.environ.get("ACME_AUTO_SLURM", "").strip().lower() in ("0", "no", "false", "off"):
        return False
    if any(os.environ.get(v) for v in _MPI_LAUNCH_VARIABLES):
        return False
    from .slurm import in_slurm_allocation, slurm_usable
    return not in_slurm_allocation() and slurm_usable()
