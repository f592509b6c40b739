"""Run the corpus under whichever ``acme`` this interpreter imports; dump what came out.

    python run_corpus.py OUT.jsonl WORKDIR [CASE ...]

The same file runs under our acme and under esi-acme (its own venv, the failing SLURM
stubs first on PATH): the script text of every map is the same, as a user's would be.
Each case runs in its own empty folder ``WORKDIR/<case>`` (also the current directory,
so a stray ``ACME_*`` folder is seen too). One line of JSON per case is appended to
OUT.jsonl as soon as the case is done, so a hang later loses nothing already recorded:

``{"case", "returned", "raised", "container", "files"}`` where ``files`` maps each path
below the case folder to what it holds (see :func:`describe_file`, :func:`walk_hdf5`).

Run it from a folder outside our checkout with this folder on PYTHONPATH (the workers
import the corpus functions by name), never with our tree on sys.path for esi-acme.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import pickle
import re
import shutil
import sys
import traceback
import warnings
from typing import Any

import h5py
import numpy as np

import corpus

# Names that differ run to run: the time stamps in auto-generated folders and logs.
STAMP = re.compile(r"\d{8}-\d{6}(-\d{6})?")
IGNORED_DIRS = {".acme"}  # our run records: not part of esi-acme's layout


# ------------------------------------------------------------------ values as JSON
def encode(value: Any) -> Any:
    """A JSON form of ``value`` that keeps type, dtype and shape (NaN/inf as strings)."""
    if isinstance(value, np.ndarray):
        return {"ndarray": value.dtype.str, "shape": list(value.shape),
                "values": _plain(value.tolist())}
    if isinstance(value, np.generic):
        return {"npscalar": value.dtype.str, "value": _plain(value.item())}
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return _plain(value)
    if isinstance(value, bytes):
        return {"bytes": value.decode("utf-8", "replace")}
    if isinstance(value, (list, tuple)):
        return {type(value).__name__: [encode(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
    return {"object": f"{type(value).__module__}.{type(value).__qualname__}",
            "state": encode(getattr(value, "__dict__", repr(value)))}


def _plain(value: Any) -> Any:
    """Nested lists of numbers with NaN/inf/complex spelled out for JSON."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, complex):
        return {"complex": [_plain(value.real), _plain(value.imag)]}
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def relative(value: Any, root: str) -> Any:
    """``value`` with every string path below ``root`` written as ``<case>/...``."""
    if isinstance(value, str) and os.path.isabs(value):
        real = os.path.realpath(value)
        if real == root or real.startswith(root + os.sep):
            return "<case>/" + normalise(os.path.relpath(real, root))
    if isinstance(value, list):
        return [relative(v, root) for v in value]
    if isinstance(value, dict):
        return {k: relative(v, root) for k, v in value.items()}
    return value


def normalise(name: str) -> str:
    return STAMP.sub("<stamp>", name)


# ------------------------------------------------------------------ HDF5 files
def walk_hdf5(path: str, root: str) -> dict:
    """Every object of one HDF5 file: ``{h5path: fields}`` (links are not followed)."""
    objects: dict = {}
    with h5py.File(path, "r") as h5f:
        objects["/"] = {"kind": "group", "attrs": _attrs(h5f)}
        _walk_group(h5f, "", objects, os.path.dirname(path), root)
    return objects


def _walk_group(group: h5py.Group, prefix: str, objects: dict, folder: str,
                root: str) -> None:
    for key in group.keys():
        name = f"{prefix}/{key}"
        link = group.get(key, getlink=True)
        if isinstance(link, h5py.SoftLink):
            objects[name] = {"kind": "soft", "target": link.path,
                             "dangling": _dangling(group, key)}
        elif isinstance(link, h5py.ExternalLink):
            objects[name] = {"kind": "external", "file": link.filename,
                             "target": link.path, "dangling": _dangling(group, key)}
        else:
            obj = group[key]
            if isinstance(obj, h5py.Group):
                objects[name] = {"kind": "group", "attrs": _attrs(obj)}
                _walk_group(obj, name, objects, folder, root)
            else:
                objects[name] = describe_dataset(obj, folder, root)


def _dangling(group: h5py.Group, key: str) -> bool:
    try:
        group[key]
    except (KeyError, OSError):
        return True
    return False


def describe_dataset(ds: h5py.Dataset, folder: str, root: str) -> dict:
    """Shape, dtype, maxshape, fill value, values and, if virtual, its sources."""
    fields: dict = {"kind": "dataset", "shape": list(ds.shape), "dtype": ds.dtype.str,
                    "maxshape": None if ds.maxshape is None else list(ds.maxshape),
                    "fillvalue": encode(ds.fillvalue), "virtual": ds.is_virtual,
                    "attrs": _attrs(ds)}
    if ds.is_virtual:
        fields["sources"] = [
            [_source_file(src.file_name, folder, root), src.dset_name]
            for src in ds.virtual_sources()]
    try:
        fields["values"] = encode(ds[()])
    except Exception as exc:  # an unreadable dataset is a finding, not a crash
        fields["values"] = {"unreadable": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    return fields


def _source_file(name: str, folder: str, root: str) -> str:
    """A VDS source file as stored: relative names kept, absolute ones made ``<case>/``."""
    if name == ".":
        return "."
    return relative(name, root) if os.path.isabs(name) else name


def _attrs(obj: Any) -> dict:
    return {key: encode(obj.attrs[key]) for key in sorted(obj.attrs.keys())}


# ------------------------------------------------------------------ the folder walk
def describe_file(path: str, root: str) -> dict:
    """What one file holds: HDF5 objects, a pickle's value, or just that it exists."""
    name = os.path.basename(path)
    if name.endswith(".log"):
        return {"kind": "log"}
    if h5py.is_hdf5(path):
        try:
            return {"kind": "hdf5", "objects": walk_hdf5(path, root)}
        except Exception as exc:
            return {"kind": "hdf5", "unreadable": f"{type(exc).__name__}: {exc}"}
    if name.endswith(".pickle"):
        try:
            with open(path, "rb") as handle:
                return {"kind": "pickle", "value": encode(pickle.load(handle))}
        except Exception as exc:
            return {"kind": "pickle", "unreadable": f"{type(exc).__name__}: {exc}"}
    return {"kind": "file", "size": os.path.getsize(path)}


def walk_folder(root: str) -> dict:
    """``{relative path: fields}`` for every folder and file below ``root``."""
    found: dict = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_DIRS)
        rel = os.path.relpath(folder, root)
        if rel != ".":
            found[normalise(rel)] = {"kind": "dir"}
        for name in sorted(files):
            path = os.path.join(folder, name)
            key = normalise(os.path.normpath(os.path.join(rel, name)))
            found[key] = describe_file(path, root)
    return found


# ------------------------------------------------------------------ one case
def run_case(ParallelMap: Any, case: corpus.Case, workdir: str) -> dict:
    """Run one map in its own folder and describe its return value and files."""
    case_root = root = os.path.realpath(os.path.join(workdir, case.name))
    os.makedirs(root)
    os.chdir(root)
    options = corpus.options_of(case)
    if case.output_dir:
        options["output_dir"] = os.path.join(root, "out")
    record: dict = {"case": case.name, "returned": None, "raised": None,
                    "container": None}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with ParallelMap(case.func, *case.args, n_workers=2, setup_interactive=False,
                             verbose=False, **case.kwargs, **options) as pmap:
                result = pmap.compute()
        container = getattr(pmap, "results_container", None)
        paths_root = root  # returned paths are written relative to this folder
        if not case.output_dir and container:
            paths_root = os.path.dirname(os.path.dirname(os.path.realpath(container)))
            root, record["auto_folder_in"] = auto_folder(paths_root, root, case)
        record["returned"] = relative(encode(result), paths_root)
        record["container"] = relative(container, paths_root)
    except Exception as exc:  # what raised is a result of the case, recorded
        record["raised"] = describe_exception(exc, root)
    finally:
        os.chdir(workdir)
    record["files"] = walk_folder(root)
    if root != case_root:
        shutil.rmtree(root)  # an auto-named folder outside the case folder: walked, gone
    return record


def describe_exception(exc: BaseException, root: str) -> dict:
    """Type (with its bases: a subclass is caught the same) and first line of ``exc``."""
    text = str(exc).strip().splitlines()
    first = STAMP.sub("<stamp>", text[0] if text else "")
    return {"type": type(exc).__name__,
            "mro": [cls.__name__ for cls in type(exc).__mro__],
            "message": first.replace(root + os.sep, "<case>/")[:300],
            "traceback": traceback.format_exc()[-3000:]}


def auto_folder(parent: str, case_root: str, case: corpus.Case) -> tuple[str, str]:
    """Where an auto-named output folder was made (in ``parent``), and the root to walk.

    Returns (root, where): the case folder when ``parent`` is it (the current
    directory), else a folder next to it that the output folder is moved into (esi-acme
    uses the folder of the function's source file), walked and then removed."""
    if parent == case_root:
        return case_root, "cwd"
    source = os.path.dirname(os.path.realpath(inspect.getfile(case.func)))
    where = "func_dir" if parent == source else "elsewhere"
    parking = os.path.realpath(os.path.join(os.path.dirname(case_root), f"{case.name}.auto"))
    os.makedirs(parking)
    for name in os.listdir(parent):
        if name.startswith("ACME_") and os.path.isdir(os.path.join(parent, name)):
            os.rename(os.path.join(parent, name), os.path.join(parking, name))
    return parking, where


def _is_esi_acme() -> bool:
    from importlib import metadata
    try:
        metadata.version("esi-acme")
    except metadata.PackageNotFoundError:
        return False
    return True


def _lost_by_dask(record: dict) -> bool:
    """esi-acme's Dask client now and then loses a map's function or data ("computation
    on lost data", "unique data could not be moved to any other worker"; 2 cases of 66
    in one CI run): under esi-acme a case that raised is run again, at most twice, and
    the last run is its result (a case that really raises raises every time). acme's
    runs are never repeated: a flaky acme must show."""
    return bool(record["raised"]) and _is_esi_acme()


def main(argv: list[str]) -> int:
    out_path, workdir = os.path.abspath(argv[0]), os.path.realpath(argv[1])
    names = argv[2:] or [case.name for case in corpus.CASES]
    os.makedirs(workdir, exist_ok=True)
    import acme
    from acme import ParallelMap, cluster_cleanup, local_cluster_setup
    print(f"run_corpus: acme from {os.path.dirname(acme.__file__)}", flush=True)
    # One set of workers for all cases (esi-acme's Dask start costs seconds).
    local_cluster_setup(n_workers=2, interactive=False)
    try:
        with open(out_path, "w") as out:
            for name in names:
                record = run_case(ParallelMap, corpus.CASES_BY_NAME[name], workdir)
                for attempt in range(2):
                    if not _lost_by_dask(record):
                        break
                    retry_dir = os.path.join(workdir, f"retry{attempt}")
                    os.makedirs(retry_dir, exist_ok=True)
                    record = run_case(ParallelMap, corpus.CASES_BY_NAME[name], retry_dir)
                out.write(json.dumps(record) + "\n")
                out.flush()
                print(f"run_corpus: {name}: {'raised' if record['raised'] else 'ok'}",
                      flush=True)
    finally:
        cluster_cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
