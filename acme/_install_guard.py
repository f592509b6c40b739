"""acme and esi-acme in one environment: find a mixed or foreign ``acme``, say what to run.

Both distributions install the import package ``acme``. Installed into one folder they
mix their files silently, and uninstalling one deletes files of the other: uninstalling
esi-acme after acme deletes acme's ``__init__.py``, so no code of acme's package runs any
more to say what happened. Hence two checks:

* :func:`refuse_mixed_tree`, called by ``acme/__init__.py`` before anything else: our
  ``__init__`` runs, but esi-acme's files are in our folder.
* :func:`install_guard`: an install (not a source checkout) also gets this module as
  the top-level ``_acme_install_guard`` and an ``acme-install-guard.pth`` that runs it
  at interpreter start (see setup.py). The guard looks at ``import acme`` only, and
  stops it when our ``__init__.py`` is gone, when esi-acme's ``__init__.py`` replaced
  ours, or when the ``acme`` found belongs to an esi-acme installed next to ours.

Every interpreter of the environment imports this module at start: it needs nothing
but ``os`` and ``sys`` until ``import acme`` is looked up.
"""
from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # names for the annotations only; not imported at interpreter start
    from typing import Optional

__all__ = ["MixedInstallError", "refuse_mixed_tree", "install_guard", "mixed_message"]

#: Modules only esi-acme's ``acme`` has (ours has neither): either in our package
#: folder means esi-acme's files are mixed into it.
ESI_ACME_MARKERS = ("frontend.py", "dask_helpers.py")
#: A module only our ``acme`` has.
OUR_MARKER = "_install_guard.py"
#: The line of our ``__init__.py`` that shows the ``__init__.py`` in a folder is ours.
OUR_INIT_MARKER = "refuse_mixed_tree"


class MixedInstallError(ImportError):
    """The ``acme`` package folder holds files of another distribution, or lost ours."""


def _dist_version(site_dir: str, prefix: str) -> Optional[str]:
    """The version of the distribution whose ``.dist-info`` in ``site_dir`` starts with
    ``prefix`` (e.g. ``esi_acme-``), or None when there is none."""
    try:
        names = sorted(os.listdir(site_dir))
    except OSError:
        return None
    for name in names:
        if name.startswith(prefix) and name.endswith(".dist-info"):
            return name[len(prefix):-len(".dist-info")]
    return None


def _our_source(site_dir: str) -> str:
    """What to give ``pip install`` to reinstall our acme: the folder or wheel it was
    installed from (pip records it in ``direct_url.json``), else a placeholder."""
    import json
    version = _dist_version(site_dir, "acme-")
    try:
        with open(os.path.join(site_dir, f"acme-{version}.dist-info",
                               "direct_url.json")) as f:
            url = json.load(f).get("url", "")
    except (OSError, ValueError, TypeError):
        url = ""
    if url.startswith("file://"):
        return url[len("file://"):]
    return "<the acme source folder or wheel>"


def _on_pythonpath(folder: str) -> bool:
    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    return os.path.realpath(folder) in {os.path.realpath(e) for e in entries if e}


def mixed_message(package_dir: str, problem: str, foreign: bool = False) -> str:
    """The message for the ``acme`` folder ``package_dir`` in trouble: ``problem``, then
    the pip commands that leave one acme in this environment. ``foreign``: the folder
    is only esi-acme's (ours, elsewhere, is intact), so removing esi-acme is enough."""
    site_dir = os.path.dirname(package_dir)
    pip = f"{sys.executable} -m pip"
    ours = _dist_version(site_dir, "acme-")
    esi = _dist_version(site_dir, "esi_acme-")
    found = [f"acme {ours}"] * bool(ours) + [f"esi-acme {esi}"] * bool(esi)
    if not foreign:
        commands = [f"{pip} uninstall -y esi-acme acme",
                    f"{pip} install {_our_source(site_dir)}"]
    elif _on_pythonpath(site_dir):  # pip uninstalls nothing outside the environment
        commands = [f"remove {site_dir} from PYTHONPATH"]
    else:
        commands = [f"{pip} uninstall -y esi-acme"]
    return (
        f"{problem}\n"
        f"Folder: {package_dir}\nInstalled there: {', '.join(found) or 'no acme'}\n"
        "acme and esi-acme both install the import package `acme`, so one environment "
        "can hold only one of them: installing one over the other mixes their files, "
        "and uninstalling either deletes files of the other. To use this acme:\n"
        + "".join(f"    {command}\n" for command in commands) +
        "To keep esi-acme too, give it a virtual environment of its own "
        "(python3 -m venv DIR). Result files written by either package stay readable.")


def refuse_mixed_tree(package_dir: str) -> None:
    """Raise :class:`MixedInstallError` when esi-acme's files are in our package folder
    ``package_dir`` (ours was installed over esi-acme, or the other way round).

    Parameters
    ----------
    package_dir : str
        The folder of the ``acme`` package being imported.
    """
    found = [name for name in ESI_ACME_MARKERS
             if os.path.exists(os.path.join(package_dir, name))]
    if found:
        raise MixedInstallError(mixed_message(
            package_dir, f"This `acme` is a mix of two packages: esi-acme's files "
                         f"({', '.join(found)}, ...) are in acme's folder."))


def _guard_problem(spec: object) -> Optional[tuple]:
    """The :func:`mixed_message` arguments for an ``acme`` module spec the guard must
    stop, or None to let the import go on."""
    origin = getattr(spec, "origin", None)
    if origin in (None, "namespace"):  # a folder without __init__.py
        for folder in getattr(spec, "submodule_search_locations", None) or []:
            if os.path.isfile(os.path.join(folder, OUR_MARKER)):
                return folder, ("acme's __init__.py is missing: uninstalling esi-acme "
                                "deletes it (esi-acme installs the same file), so "
                                "`from acme import ParallelMap` cannot work.")
        return None
    folder = os.path.dirname(origin)
    if os.path.isfile(os.path.join(folder, OUR_MARKER)):
        with open(origin, errors="replace") as f:
            if OUR_INIT_MARKER in f.read():
                return None  # our __init__ runs refuse_mixed_tree itself
        if any(os.path.exists(os.path.join(folder, m)) for m in ESI_ACME_MARKERS):
            return folder, ("This `acme` is esi-acme's __init__.py over acme's files: "
                            "esi-acme was installed over acme.")
        return None
    if _dist_version(os.path.dirname(folder), "esi_acme-"):
        return (folder, "`import acme` finds esi-acme's package, which comes before "
                        "acme's on sys.path.", True)
    return None


class _InstallGuard:
    """First on ``sys.meta_path``: looks at ``import acme`` only and lets it go on
    (returns None) unless :func:`_guard_problem` finds it broken or foreign."""

    @staticmethod
    def find_spec(fullname: str, path: object = None, target: object = None) -> None:
        if fullname != "acme":
            return None
        from importlib.machinery import PathFinder
        spec = PathFinder.find_spec(fullname, path)
        problem = _guard_problem(spec) if spec is not None else None
        if problem:
            raise MixedInstallError(mixed_message(*problem))
        return None


def install_guard() -> None:
    """Put the guard first on ``sys.meta_path`` (once per interpreter)."""
    if not any(type(f).__name__ == _InstallGuard.__name__ for f in sys.meta_path):
        sys.meta_path.insert(0, _InstallGuard())
