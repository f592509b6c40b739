"""The scheduler's side of results on disk: the container file that ties the per-call
files together, and the single result file of ``single_file=True``.

The container is rebuilt from what is on disk, written under a temporary name and
renamed, so it is valid after any run that wrote anything.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
from typing import Optional

import numpy as np

from .layout import OutputLayout
from .result_spec import ResultSpec
from .sinks import Stored, _TempWriter, _remove_quietly

log = logging.getLogger("acme")

__all__ = ["build_container", "create_single_file", "finish_single_file",
           "remove_stale_temporaries"]

#: Attributes acme adds to container files (esi-acme readers ignore them).
ATTR_CALLS = "acme_n_calls"
ATTR_MISSING = "acme_missing_calls"
ATTR_AXIS = "acme_stack_axis"
#: where the link of a call without a result points when a file of its name exists
NOT_A_RESULT = "/acme_not_a_result"


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


#: ``.<name>.<pid>.<random>.tmp``: a file being written by process ``pid``
#: (sinks._temporary_name); ``.<name>.<pid>.tmp`` was the name of earlier versions
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{16}\.tmp$")
_OLD_TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp$")


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
    crashed) leaves its half-written ``.<name>.<pid>.<random>.tmp`` behind. Returns
    their paths."""
    removed = []
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            match = _TEMPORARY.match(name) or _OLD_TEMPORARY.match(name)
            if match and _writer_gone(int(match.group(1))):
                path = os.path.join(folder, name)
                _remove_quietly(path)
                removed.append(path)
    if removed:
        log.warning("removed %d half-written temporary file(s) of stopped workers, "
                    "e.g. %s", len(removed), removed[0])
    return removed


def _maxshape(spec: ResultSpec, full: tuple) -> tuple:
    """``full`` with an ``np.inf`` axis unlimited (None), as esi-acme makes it."""
    return tuple(None if want == np.inf else n for want, n in zip(spec.shape, full))


def _n_values(layout: OutputLayout, stored: dict[int, Stored], h5_calls: list) -> int:
    """How many datasets ``result_k`` the calls wrote (the most any call wrote); for
    calls done by an earlier run (not known) one of their files is read."""
    known = [stored[i].n_values for i in h5_calls if stored[i].n_values is not None]
    unknown = [i for i in h5_calls if stored[i].n_values is None]
    if unknown:
        import h5py
        try:
            with h5py.File(stored[unknown[0]].path, "r") as h5f:
                known.append(sum(1 for k in h5f if re.fullmatch(r"result_\d+", k)))
        except OSError as exc:
            raise OSError(f"cannot read the result file {stored[unknown[0]].path}: "
                          f"{exc}") from exc
    return max(known, default=1)


def _container_image(layout: OutputLayout, n_calls: int, spec: Optional[ResultSpec],
                     stored: dict[int, Stored], h5_calls: list, name: str) -> bytes:
    """The container built in memory (HDF5 never writes to the disk itself).

    esi-acme's layout: without ``result_shape``, ``comp_{i}`` links to the whole
    payload of every call; with it, the virtual dataset ``result_0`` and, when calls
    returned more values, groups ``comp_{i}`` linking each other value
    (``comp_{i}/result_1`` -> ``result_1`` of the payload). Links are made for every
    call, so that a call without a result (failed, never ran, pickled) has a
    dangling link: reading it fails loudly rather than shifting later calls into
    its place. The virtual dataset maps only the calls that have a payload."""
    import h5py
    results = set(h5_calls)

    def link(i: int, target: str):
        # A payload file that is there but is no result of this run (nobody reported
        # it) is never linked: the link names an object it does not hold instead.
        if i not in results and os.path.lexists(layout.payload(i)):
            target = NOT_A_RESULT
        return h5py.ExternalLink(layout.payload_link(i), target)

    # (libver="latest" is not used: HDF5 1.10.8 gives a file image of such a file
    # with a wrong superblock checksum)
    with h5py.File(name, "w", driver="core", backing_store=False) as h5f:
        if spec is None:
            for i in range(n_calls):
                h5f[f"comp_{i}"] = link(i, "/")
        else:
            shapes = {i: stored[i].shape for i in h5_calls}
            full = _stacked_shape(spec, n_calls, shapes)
            vds = h5py.VirtualLayout(shape=full, dtype=spec.dtype,
                                     maxshape=_maxshape(spec, full))
            for i in h5_calls:
                source = h5py.VirtualSource(layout.payload_link(i), "result_0",
                                            shape=shapes[i])
                # a scalar is 0-d; acme before 2026-12 stored it with shape (1,)
                place = shapes[i] if len(shapes[i]) == len(spec.call_shape) \
                    else spec.call_shape
                vds[_index(spec, i, place)] = source
            h5f.create_virtual_dataset("result_0", vds,
                                       fillvalue=_fill_value(spec.dtype))
            for k in range(1, _n_values(layout, stored, h5_calls) if h5_calls else 1):
                for i in range(n_calls):
                    h5f[f"comp_{i}/result_{k}"] = link(i, f"result_{k}")
        h5f.attrs[ATTR_CALLS] = n_calls
        h5f.attrs[ATTR_MISSING] = np.array(
            sorted(set(range(n_calls)) - set(h5_calls)), dtype=np.int64)
        h5f.flush()
        return h5f.id.get_file_image()


def build_container(layout: OutputLayout, n_calls: int, spec: Optional[ResultSpec],
                    stored: dict[int, Stored]) -> str:
    """Write ``f.h5`` (see :func:`_container_image`): ``comp_{i}`` external links to
    the payloads or, with ``result_shape``, a virtual dataset ``result_0`` stacking
    them (and ``comp_{i}/result_k`` links to their other values).

    Only the calls in ``stored`` (reported by a worker in this run, or journaled
    and verified by an earlier one) are mapped into ``result_0``: a file nobody
    reported is not a result (its ``comp_{i}`` link is there, as for every call, but
    readers of acme runs go by the journal, never by links). Source paths are relative to the container so the folder can be moved.
    The container is built in memory, written under a new temporary name, flushed
    to the disk and renamed, so a kill or a full disk leaves the earlier one.
    """
    remove_stale_temporaries(layout.payload_dir, layout.output_dir)
    h5_calls = sorted(i for i, s in stored.items() if not s.pickled)
    with _TempWriter(layout.container, sync=True) as out:
        out.write(_container_image(layout, n_calls, spec, stored, h5_calls, out.name))
    return layout.container


def _make_result_0(h5f, n_calls: int, spec: ResultSpec) -> tuple[Optional[int], int]:
    """Create result_0 in the new single file with its space allocated (HDF5 writes
    only metadata here); returns its file offset (None: no storage) and size."""
    import h5py
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.CONTIGUOUS)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # filled by _fill below
    fill = _fill_value(spec.dtype)
    if fill is not None:
        dcpl.set_fill_value(np.array(fill, dtype=spec.dtype))
    space = h5py.h5s.create_simple(spec.full_shape(n_calls))
    dsid = h5py.h5d.create(h5f.id, b"result_0", h5py.h5t.py_create(spec.dtype),
                           space, dcpl=dcpl)
    offset, size = dsid.get_offset(), dsid.get_storage_size()
    dsid.close()
    h5f["result_0"].attrs[ATTR_AXIS] = spec.stack_axis
    return (None if offset is None or not size else int(offset)), int(size)


def _fill(fd: int, offset: int, size: int, spec: ResultSpec, path: str) -> None:
    """Reserve the rows' space (a full disk is a clean ENOSPC now, not a failed row
    write later) and write the fill value (NaN) into it with checked writes."""
    os.posix_fallocate(fd, offset, size)
    fill = _fill_value(spec.dtype)
    if fill is None or not np.array(fill, dtype=spec.dtype).tobytes().strip(b"\0"):
        return  # the reserved space reads as zeros, which is the fill value
    per = max(1, (4 << 20) // spec.dtype.itemsize)
    block = np.full(per, fill, dtype=spec.dtype).tobytes()
    end = offset + size
    while offset < end:
        view = memoryview(block)[:end - offset]
        while view:
            written = os.pwrite(fd, view, offset)
            if written <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            view, offset = view[written:], offset + written


def _h5_reserved(out: _TempWriter, reserve: int):
    """h5py on the temporary file's own descriptor (no path lookup that a link
    swapped in could redirect), with ``reserve`` bytes of disk space reserved past
    its end first: a full disk is then a clean ENOSPC here, before HDF5 writes
    anything. (HDF 1.10.8 meeting ENOSPC itself can crash the process later.) At
    close HDF5 cuts the file back to its data."""
    import h5py
    os.posix_fallocate(out.fd, os.fstat(out.fd).st_size, max(reserve, 1))
    return h5py.File(os.fdopen(os.dup(out.fd), "r+b"), "a")


def _attrs_image(n_calls: int, name: str) -> bytes:
    """A new single file holding only its attributes, built in memory."""
    import h5py
    with h5py.File(name, "w", driver="core", backing_store=False) as h5f:
        h5f.attrs[ATTR_CALLS] = n_calls
        h5f.flush()
        return h5f.id.get_file_image()


def _existing_offset(layout: OutputLayout, spec: Optional[ResultSpec]) -> Optional[int]:
    import h5py
    path = layout.container
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise OSError(f"{path} is not a regular file: refusing to write into it")
    with h5py.File(path, "r") as h5f:
        if spec is None or spec.has_inf or "result_0" not in h5f:
            return None
        offset = h5f["result_0"].id.get_offset()
        return None if offset is None else int(offset)


def create_single_file(layout: OutputLayout, n_calls: int,
                       spec: Optional[ResultSpec], resume: bool = False) -> Optional[int]:
    """Create ``f.h5`` before the calls run; return the file offset of ``result_0``
    when workers can write its rows directly (fixed shape), else None. With
    ``resume`` an existing file is kept, with the rows written before (the runner
    has checked it). The new file is complete before it gets its name; its space is
    reserved first, so a full disk is a clean OSError before HDF5 writes."""
    os.makedirs(layout.parts_dir, exist_ok=True)
    if not stat.S_ISDIR(os.lstat(layout.parts_dir).st_mode):
        raise OSError(f"{layout.parts_dir} is not a folder: refusing to write through it")
    if resume and os.path.lexists(layout.container):
        return _existing_offset(layout, spec)
    offset = None
    # (no fsync: it holds no result yet, and rows are not synced either)
    with _TempWriter(layout.container) as out:
        out.write(_attrs_image(n_calls, out.name))
        if spec is not None and not spec.has_inf:
            need = int(np.prod(spec.full_shape(n_calls), dtype=np.int64)) * \
                spec.dtype.itemsize
            with _h5_reserved(out, need + (1 << 20)) as h5f:
                offset, size = _make_result_0(h5f, n_calls, spec)
            if offset is not None:
                _fill(out.fd, offset, size, spec, layout.container)
    return offset


def _copy_file(src: str, out: _TempWriter) -> None:
    """Copy the file ``src`` (not through a link) into the temporary file ``out``."""
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        os.posix_fallocate(out.fd, 0, max(size, 1))
        done = 0
        while done < size:
            n = os.copy_file_range(fd, out.fd, size - done, done, done)
            if n <= 0:
                raise OSError(f"copying {src}: no progress at byte {done} of {size}")
            done += n
    finally:
        os.close(fd)


def _stacked_dataset(h5f, spec: ResultSpec, full: tuple):
    """``result_0`` of the single file with shape ``full``, keeping the rows of an
    earlier merge (a resumed run): grown in place where its maxshape allows (an
    ``np.inf`` axis is unlimited, as in esi-acme), else copied into a new one."""
    old = h5f.get("result_0")
    if old is not None and old.shape == full:
        return old
    if old is not None and old.chunks is not None and all(
            m is None or m >= n for m, n in zip(old.maxshape, full)) and all(
            o <= n for o, n in zip(old.shape, full)):
        old.resize(full)
        return old
    rows = None
    if old is not None:
        if old.size and len(old.shape) == len(full) and all(
                o <= n for o, n in zip(old.shape, full)):
            rows = old[()]  # e.g. a file of acme before 2026-12 (fixed maxshape)
        del h5f["result_0"]  # else made up front, but of size 0 (no storage)
    maxshape = _maxshape(spec, full)
    dset = h5f.create_dataset("result_0", shape=full, dtype=spec.dtype,
                              maxshape=maxshape, chunks=True if None in maxshape else None,
                              fillvalue=_fill_value(spec.dtype))
    dset.attrs[ATTR_AXIS] = spec.stack_axis
    if rows is not None:
        dset[tuple(slice(0, n) for n in rows.shape)] = rows
    return dset


def _merge_parts(h5f, layout: OutputLayout, n_calls: int, spec: Optional[ResultSpec],
                 stored: dict[int, Stored], raw_rows: bool, h5_calls: list,
                 parts: dict[int, str]) -> None:
    import h5py
    if spec is not None and not raw_rows:
        shapes = {i: stored[i].shape for i in h5_calls}
        full = _stacked_shape(spec, n_calls, shapes)
        dset = _stacked_dataset(h5f, spec, full)
        for i in h5_calls:
            if i in parts:
                with h5py.File(parts[i], "r") as part:
                    dset[_index(spec, i, shapes[i])] = part["result_0"][()]
    if spec is None:  # esi-acme makes a group for every call, empty for a failed one
        for i in range(n_calls):
            h5f.require_group(f"comp_{i}")
    for i, part_path in sorted(parts.items()):
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


def finish_single_file(layout: OutputLayout, n_calls: int, spec: Optional[ResultSpec],
                       stored: dict[int, Stored], raw_rows: bool,
                       record=None) -> str:
    """Merge the per-call part files into ``f.h5`` (``comp_{i}/result_k``, and
    ``result_0`` when its shape was only known at the end), then remove them.

    The merge goes into a copy of ``f.h5`` that is flushed and renamed onto it, so a
    kill at any moment leaves either the file before the merge (and every part
    file) or the merged one. ``record(indices)`` is then called with the calls whose
    part files were merged (to journal them as being in ``f.h5``) before the part
    files are removed."""
    import h5py
    remove_stale_temporaries(layout.parts_dir, layout.payload_dir, layout.output_dir)
    h5_calls = sorted(i for i, s in stored.items() if not s.pickled)
    parts = {i: layout.part(i) for i in h5_calls if os.path.isfile(layout.part(i))}
    missing = sorted(set(range(n_calls)) - set(h5_calls))
    if not parts and (raw_rows or spec is None):
        with h5py.File(layout.container, "r") as h5f:
            unchanged = list(h5f.attrs.get(ATTR_MISSING, [-1])) == missing
        if unchanged:  # nothing to merge, nothing new to say: keep the file as it is
            shutil.rmtree(layout.parts_dir, ignore_errors=True)
            return layout.container
    extra = sum(os.path.getsize(p) for p in parts.values())
    with _TempWriter(layout.container, sync=True) as out:
        out.create()
        _copy_file(layout.container, out)
        # room for the parts' data (twice, for a result_0 made here) and metadata
        reserve = 2 * extra + 8192 * (len(parts) + 1) + 16 * n_calls + (1 << 20)
        with _h5_reserved(out, reserve) as h5f:
            _merge_parts(h5f, layout, n_calls, spec, stored, raw_rows, h5_calls, parts)
    if record is not None and parts:
        record(sorted(parts))
    shutil.rmtree(layout.parts_dir, ignore_errors=True)
    return layout.container
