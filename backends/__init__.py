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

__all__ = ["Backend", "register_backend", "registered_backends", "get_backend",
           "auto_backend_name"]

ENTRY_POINT_GROUP = "acme.backends"

# name -> Backend subclass, or "module:Class" to import on first use
_REGISTRY: dict[str, Union[type, str]] = {
    "sequential": "acme.backends.sequential:SequentialBackend",
    "local": "acme.backends.local:LocalBackend",
    "mpi": "acme.backends.mpi:MPIBackend",
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


def get_backend(name: str) -> type:
    """The Backend subclass registered as ``name``."""
    _load_entry_points()
    if name not in _REGISTRY:
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
    """What ``backend="auto"`` means here: MPI inside an ``acme.mpi_run`` job, else local."""
    import sys
    runner = sys.modules.get("acme.mpi_run")
    if runner is not None and getattr(runner, "active_pool", lambda: None)() is not None:
        return "mpi"
    return "local"
