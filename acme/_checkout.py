"""A source checkout imports its own backends.

A checkout keeps the backends next to the package (``backends/`` beside ``acme/``); only
an install maps that folder to ``acme.backends`` (``package_dir`` in setup.cfg). A
script run in a checkout, a notebook started there, or a checkout on ``PYTHONPATH``
would find no ``acme.backends`` -- or, worse, the backends of whichever checkout was
installed in editable mode last (its finder answers for ``acme.backends``).
:func:`map_checkout_backends` makes ``acme.backends`` this checkout's ``backends/``.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

__all__ = ["checkout_backends_dir", "map_checkout_backends"]


def checkout_backends_dir(package_dir: Path) -> Optional[Path]:
    """The ``backends/`` folder of the source checkout that ``package_dir`` (the
    ``acme/`` folder) is in, or None for an installed package (its backends are the
    ``backends/`` inside it)."""
    if (package_dir / "backends").is_dir():
        return None
    root = package_dir.parent
    is_checkout = any((root / name).is_file() for name in ("setup.cfg", "pyproject.toml"))
    if is_checkout and (root / "backends" / "__init__.py").is_file():
        return root / "backends"
    return None


class _CheckoutBackendsFinder:
    """Answers only ``import acme.backends``, and only while the imported ``acme`` is
    the checkout it was made for. It sits first on ``sys.meta_path``, so an editable
    install of another checkout cannot hand out that checkout's backends."""

    def __init__(self, package_dir: Path, backends_dir: Path) -> None:
        self.package_dir = package_dir
        self.backends_dir = backends_dir

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != "acme.backends":
            return None
        acme_file = getattr(sys.modules.get("acme"), "__file__", None)
        if not acme_file or Path(acme_file).resolve().parent != self.package_dir:
            return None
        return importlib.util.spec_from_file_location(
            fullname, self.backends_dir / "__init__.py",
            submodule_search_locations=[str(self.backends_dir)])


def map_checkout_backends(package_dir: Path) -> None:
    """In a source checkout, make ``acme.backends`` the checkout's own ``backends/``.

    Parameters
    ----------
    package_dir : Path
        The resolved folder of the ``acme`` package being imported.
    """
    backends_dir = checkout_backends_dir(package_dir)
    if backends_dir is None:
        return
    # A reload of acme, or another checkout imported after the first was dropped from
    # sys.modules, replaces the finder instead of stacking a second one.
    sys.meta_path[:] = [f for f in sys.meta_path
                        if type(f).__name__ != _CheckoutBackendsFinder.__name__]
    sys.meta_path.insert(0, _CheckoutBackendsFinder(package_dir, backends_dir))
    log.debug("source checkout: acme.backends is %s", backends_dir)
