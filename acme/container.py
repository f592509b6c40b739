"""The scheduler's side of results on disk: the container file that ties the per-call
files together, and the single result file of ``single_file=True``.

The container is rebuilt from what is on disk, written under a temporary name and
renamed, so it is valid after any run that wrote anything.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from typing import Optional

import numpy as np

from .layout import OutputLayout
from .result_spec import ResultSpec
from .sinks import Stored, _temporary_name, _remove_quietly

log = logging.getLogger("acme")

__all__ = ["build_container", "create_single_file", "finish_single_file",
           "remove_stale_temporaries"]

#: Attributes acme adds to container files (esi-acme readers ignore them).
ATTR_CALLS = "acme_n_calls"
ATTR_MISSING = "acme_missing_calls"
ATTR_AXIS = "acme_stack_axis"


def _fill_value(dtype: np.dtype):
    """What rows without a result read as: NaN for floating point, 0 for other numbers,
    HDF5's default (all bytes zero, e.g. b"") for anything else (None).

    Returned as a numpy scalar of ``dtype``: HDF5 cannot convert a plain Python float
    or int to every type (complex numbers, fixed-length strings), and creating a
    dataset with such a fill value fails."""
    if dtype.kind in "fc":
        return np.array(np.nan, dtype=dtype)[()]
    if dtype.kind in "iub":
        return np.array(0, dtype=dtype)[()]
    return None


def _stacked_shape(spec: ResultSpec, n_calls: int, shapes: dict) -> tuple:
    """Full shape of result_0; an ``np.inf`` axis takes the longest call's length."""
    inf_length = None
    if spec.has_inf:
        inf_axis = [k for k, e in enumerate(spec.call_shape) if e == np.inf][0]
        inf_length = max((s[inf_axis] for s in shapes.values()), default=0)
    return spec.full_shape(n_calls, inf_length)


def _index(spec: ResultSpec, call: int, shape: tuple) -> tuple:
    """Selection in the stacked dataset for ``call`` whose value has ``shape``."""
    sel = [slice(0, n) for n in shape]
    sel.insert(spec.stack_axis, call)
    return tuple(sel)


#: ``.<name>.<pid>.tmp``: a file being written by process ``pid`` (sinks._temporary_name)
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp$")


def _writer_gone(pid: int) -> bool:
    """Whether process ``pid`` (on this machine) has ended, or is a zombie."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
        return stat[stat.rindex(")") + 2:].split()[0] in ("Z", "X")
    except (OSError, ValueError, IndexError):
        return False


def remove_stale_temporaries(*folders: str) -> list:
    """Remove the temporary files in ``folders`` whose writer has ended: a worker that
    was killed while writing (the run was stopped, the call timed out, the worker
    crashed) leaves its half-written ``.<name>.<pid>.tmp`` behind. Returns their paths."""
    removed = []
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            match = _TEMPORARY.match(name)
            if match and _writer_gone(int(match.group(1))):
                path = os.path.join(folder, name)
                _remove_quietly(path)
                removed.append(path)
    if removed:
        log.warning("removed %d half-written temporary file(s) of stopped workers, "
                    "e.g. %s", len(removed), removed[0])
    return removed


def _unreported_payloads(layout: OutputLayout, n_calls: int, spec: Optional[ResultSpec],
                         stored: dict[int, Stored]) -> dict[int, Stored]:
    """Payload files on disk that ``stored`` does not know about: a worker that wrote
    its file just before the run was stopped never got to report it. (Files appear
    complete or not at all, so every one found is a finished call.)"""
    import h5py
    pattern = re.compile(rf"^{re.escape(layout.stem)}_(\d+)\.h5$")
    found = {}
    try:
        names = os.listdir(layout.payload_dir)
    except OSError:
        return found
    for name in names:
        match = pattern.match(name)
        if not match or int(match.group(1)) >= n_calls or int(match.group(1)) in stored:
            continue
        path = os.path.join(layout.payload_dir, name)
        shape = None
        if spec is not None:
            try:
                with h5py.File(path, "r") as h5f:
                    shape = h5f["result_0"].shape
            except (OSError, KeyError):
                continue
            if not spec.matches(shape) and shape != (1,):
                continue
        found[int(match.group(1))] = Stored(path, shape=shape)
    return found


def build_container(layout: OutputLayout, n_calls: int, spec: Optional[ResultSpec],
                    stored: dict[int, Stored]) -> str:
    """Write ``f.h5``: ``comp_{i}`` external links to every HDF5 payload and, with
    ``result_shape``, a virtual dataset ``result_0`` stacking them.

    Source paths are relative to the container so the folder can be moved.
    Half-written files of workers that were stopped are removed first; payloads
    whose calls finished but were not reported (the run was stopped) are linked too.
    """
    import h5py
    remove_stale_temporaries(layout.payload_dir, layout.output_dir)
    extra = _unreported_payloads(layout, n_calls, spec, stored)
    if extra:
        log.info("linking %d result file(s) of calls that finished as the run was "
                 "stopped: %s", len(extra), sorted(extra))
        stored = {**stored, **extra}
    h5_calls = sorted(i for i, s in stored.items() if not s.pickled)
    tmp = _temporary_name(layout.container)
    try:
        with h5py.File(tmp, "w", libver="latest") as h5f:
            for i in h5_calls:
                h5f[f"comp_{i}"] = h5py.ExternalLink(layout.payload_link(i), "/")
            if spec is not None:
                shapes = {i: stored[i].shape for i in h5_calls}
                full = _stacked_shape(spec, n_calls, shapes)
                vds = h5py.VirtualLayout(shape=full, dtype=spec.dtype)
                for i in h5_calls:
                    source = h5py.VirtualSource(layout.payload_link(i), "result_0",
                                                shape=shapes[i], dtype=spec.dtype)
                    # a scalar call value is stored with shape (1,) (esi-acme's layout)
                    place = shapes[i] if len(shapes[i]) == len(spec.call_shape) \
                        else spec.call_shape
                    vds[_index(spec, i, place)] = source
                h5f.create_virtual_dataset("result_0", vds,
                                           fillvalue=_fill_value(spec.dtype))
            h5f.attrs[ATTR_CALLS] = n_calls
            h5f.attrs[ATTR_MISSING] = np.array(
                sorted(set(range(n_calls)) - set(h5_calls)), dtype=np.int64)
        os.replace(tmp, layout.container)
    except BaseException:
        _remove_quietly(tmp)
        raise
    return layout.container


def create_single_file(layout: OutputLayout, n_calls: int,
                       spec: Optional[ResultSpec], resume: bool = False) -> Optional[int]:
    """Create ``f.h5`` before the calls run; return the file offset of ``result_0``
    when workers can write its rows directly (fixed shape), else None. With
    ``resume`` an existing file is kept, with the rows written before."""
    import h5py
    os.makedirs(layout.parts_dir, exist_ok=True)
    if resume and os.path.exists(layout.container):
        with h5py.File(layout.container, "r") as h5f:
            if spec is None or spec.has_inf or "result_0" not in h5f:
                return None
            offset = h5f["result_0"].id.get_offset()
            return None if offset is None else int(offset)
    with h5py.File(layout.container, "w") as h5f:
        h5f.attrs[ATTR_CALLS] = n_calls
        if spec is None or spec.has_inf:
            return None
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.CONTIGUOUS)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_ALLOC)
        fill = _fill_value(spec.dtype)
        if fill is not None:
            dcpl.set_fill_value(np.array(fill, dtype=spec.dtype))
        full = spec.full_shape(n_calls)
        space = h5py.h5s.create_simple(full)
        dsid = h5py.h5d.create(h5f.id, b"result_0", h5py.h5t.py_create(spec.dtype),
                               space, dcpl=dcpl)
        offset = dsid.get_offset()
        dsid.close()
        h5f["result_0"].attrs[ATTR_AXIS] = spec.stack_axis
        if offset is None:  # an empty dataset has no storage
            return None
        return int(offset)


def finish_single_file(layout: OutputLayout, n_calls: int, spec: Optional[ResultSpec],
                       stored: dict[int, Stored], raw_rows: bool) -> str:
    """Merge the per-call part files into ``f.h5`` (``comp_{i}/result_k``, and
    ``result_0`` when its shape was only known at the end), then remove them."""
    import h5py
    remove_stale_temporaries(layout.payload_dir, layout.output_dir)
    with h5py.File(layout.container, "a") as h5f:
        h5_calls = sorted(i for i, s in stored.items() if not s.pickled)
        if spec is not None and not raw_rows:
            shapes = {i: stored[i].shape for i in h5_calls}
            full = _stacked_shape(spec, n_calls, shapes)
            if "result_0" in h5f and h5f["result_0"].size == 0:
                del h5f["result_0"]  # made up front, but of size 0 (no storage)
            dset = h5f.create_dataset("result_0", shape=full, dtype=spec.dtype,
                                      fillvalue=_fill_value(spec.dtype))
            dset.attrs[ATTR_AXIS] = spec.stack_axis
            for i in h5_calls:
                with h5py.File(layout.part(i), "r") as part:
                    dset[_index(spec, i, shapes[i])] = part["result_0"][()]
        for i in h5_calls:
            part_path = layout.part(i)
            if not os.path.exists(part_path):
                continue
            with h5py.File(part_path, "r") as part:
                names = [n for n in part if not (spec is not None and n == "result_0")]
                if names:
                    group = h5f.require_group(f"comp_{i}")
                    for name in names:
                        if name in group:  # rerun of a call (resume)
                            del group[name]
                        part.copy(part[name], group, name=name)
        h5f.attrs[ATTR_MISSING] = np.array(
            sorted(set(range(n_calls)) - set(h5_calls)), dtype=np.int64)
    shutil.rmtree(layout.parts_dir, ignore_errors=True)
    return layout.container
