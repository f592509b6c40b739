"""Where a call's return values go. A sink runs inside the worker that made the call,
so results are written where they were computed and only a small note (the file
name) travels back to the scheduler.

Every file appears complete or not at all: it is built in memory (HDF5 files as an
in-memory image, so that HDF5 itself never meets a full disk), written with checked
counts into a new temporary file (``O_EXCL|O_NOFOLLOW``, an unpredictable name, in
a folder opened without following links), closed, and only then renamed into
place. A failed write is an OSError that names the file, and leaves nothing behind.
"""
from __future__ import annotations

import errno
import numbers
import os
import pickle
import secrets
from typing import Any, Optional

import numpy as np

from .layout import OutputLayout
from .result_spec import ResultSpec, split_values

__all__ = ["InMemorySink", "PayloadSink", "PickleSink", "SingleFileSink", "Stored",
           "stack_in_memory", "hdf5_values", "split_values", "write_h5_atomic"]


class Stored:
    """What a disk sink reports back for one call: where the values went.

    ``pickled`` is True when the values could not be stored in HDF5 and were pickled
    instead; ``shape`` is the shape of the first value (needed for ``np.inf`` axes);
    ``n_values`` the number of datasets ``result_k`` written (None: not known, e.g.
    for a call done by an earlier run).
    """

    __slots__ = ("path", "pickled", "shape", "n_values")

    def __init__(self, path: str, pickled: bool = False, shape: Optional[tuple] = None,
                 n_values: Optional[int] = None):
        self.path = path
        self.pickled = pickled
        self.shape = shape
        self.n_values = n_values

    def __reduce__(self):
        return (Stored, (self.path, self.pickled, self.shape, self.n_values))

    def __repr__(self) -> str:
        return (f"Stored({self.path!r}, pickled={self.pickled}, shape={self.shape}, "
                f"n_values={self.n_values})")


def _plain(value: Any) -> bool:
    """esi-acme stores a call's values together in one dataset when every one is a
    number (``numbers.Number``: Python and numpy numbers, bool, not ``np.bool_``) or
    a string."""
    return isinstance(value, (numbers.Number, str))


#: numpy dtype kinds, grouped as leaves that np.asarray may mix without changing them:
#: bool, integer, floating (and complex), str, bytes
_KIND_GROUPS = {"b": "b", "i": "i", "u": "i", "f": "f", "c": "f", "U": "U", "S": "S"}


def _leaf_kind(value: Any) -> Optional[str]:
    """What a leaf of a returned value is (see ``_KIND_GROUPS``), or None when
    np.asarray would change it silently (a masked array loses its mask, a pandas
    object its labels, an ndarray subclass its attributes, fixed-size bytes their
    trailing NULs) or cannot hold it."""
    if type(value) in (np.ndarray, np.memmap):
        return _KIND_GROUPS.get(value.dtype.kind, "O" if value.dtype.kind == "O" else None)
    if isinstance(value, (bool, np.bool_)):
        return "b"
    if isinstance(value, (int, np.integer)):
        return "i"
    if isinstance(value, (float, complex, np.inexact)):
        return "f"
    if isinstance(value, (str, np.str_)):
        return "U"
    if isinstance(value, (bytes, np.bytes_)):
        return None if value.endswith(b"\0") else "S"
    return None


def _leaf_kinds(value: Any, found: set) -> bool:
    """Collect the leaf kinds of nested lists/tuples in ``found``; False when one
    leaf would not survive np.asarray unchanged."""
    if type(value) in (list, tuple):
        if all(type(v) is float for v in value):
            found.add("f")  # the common cases, fast
            return True
        if all(type(v) is int for v in value):
            found.add("i")
            return True
        return all(_leaf_kinds(v, found) for v in value)
    kind = _leaf_kind(value)
    if kind is None:
        return False
    found.add(kind)
    return True


def _integers_exact(value: Any, dtype: np.dtype) -> bool:
    """Whether every integer in ``value`` (nested lists of numbers and arrays) keeps
    its exact value as ``dtype`` (a list mixing ints and floats becomes floats)."""
    if type(value) in (list, tuple):
        return all(_integers_exact(v, dtype) for v in value)
    if isinstance(value, (bool, np.bool_)) or _leaf_kind(value) != "i":
        return True
    ints = np.asarray(value).astype(object)  # Python ints: compared exactly below
    with np.errstate(all="ignore"):
        cast = np.asarray(value).astype(dtype).astype(object)
    return bool(np.all(ints == cast))


def _hdf5_array(value: Any) -> Optional[np.ndarray]:
    """``value`` as an array HDF5 can hold unchanged (a scalar as a 0-d array), or
    None: dicts, None, objects, ragged lists, and values that an array would change
    (masked arrays, pandas objects, lists mixing bools or strings with numbers)."""
    if value is None or isinstance(value, (dict, set, frozenset)):
        return None
    if isinstance(value, bytes) and b"\0" in value:
        return None  # HDF5 variable-length strings end at a NUL byte: pickle instead
    if isinstance(value, (str, bytes)):
        import h5py
        kind = h5py.string_dtype("utf-8") if isinstance(value, str) else h5py.string_dtype("ascii")
        return np.array(value, dtype=kind)
    kinds: set = set()
    if not _leaf_kinds(value, kinds) or (len(kinds) > 1 and kinds != {"i", "f"}):
        return None  # e.g. [True, 2] would become [1, 2], [1, "a"] become strings
    try:
        arr = np.asarray(value)
    except Exception:
        return None
    if len(kinds) > 1 and not _integers_exact(value, arr.dtype):
        return None  # e.g. [2**60 + 1, 0.5]: the integer would not survive as a float
    if arr.dtype.kind == "U":  # numpy unicode has no HDF5 type: variable-length UTF-8
        import h5py
        arr = arr.astype(h5py.string_dtype("utf-8"))
    elif arr.dtype.kind in "OVMm":
        if arr.dtype.kind == "O" and arr.size and all(isinstance(v, str) for v in arr.flat):
            import h5py
            arr = arr.astype(h5py.string_dtype("utf-8"))
        else:
            return None
    return arr


def hdf5_values(values: list, shaped: bool = False) -> Optional[list]:
    """The datasets ``result_0``, ``result_1``, ... of a call's ``values`` (see
    :func:`split_values`), laid out as esi-acme lays them out, or None where HDF5
    cannot hold them (also for no value at all: ``()`` is kept as a pickle).

    Without ``result_shape`` (``shaped`` False), values that are all numbers or
    strings go together into one dataset ``result_0`` (a function returning ``18``
    gives ``[18]``, one returning ``(18, 0.5)`` gives ``[18., 0.5]``), unless that
    would change one of them (bools or strings among numbers, an integer a float
    cannot hold exactly): then, as for any other values, each value is a dataset of
    its own, a scalar a 0-d dataset of its own dtype. With ``result_shape`` each value
    is always a dataset of its own."""
    if not values:
        return None
    if not shaped and all(_plain(v) for v in values):
        together = _hdf5_array(values)
        if together is not None:
            return [together]
    arrays = []
    for value in values:
        arr = _hdf5_array(value)
        if arr is None:
            return None
        arrays.append(arr)
    return arrays


_NEW_FILE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _temporary_name(path: str) -> str:
    """``.<name>.<pid>.<random>.tmp`` next to ``path``: the pid tells
    ``container.remove_stale_temporaries`` whether its writer is gone; the random part
    makes the name unpredictable (and it is only ever created with O_EXCL)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")


def open_folder(folder: str, base: Optional[str] = None) -> int:
    """A descriptor of ``folder`` reached without following a symbolic link: below
    ``base`` (trusted, e.g. the output folder) when given, else its last component.
    So a link planted in the output folder can never send a write elsewhere."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    if base is None:
        base, rel = os.path.split(os.path.normpath(folder))
        parts = [rel]
    else:
        rel = os.path.relpath(folder, base)
        parts = [] if rel == "." else rel.split(os.sep)
        if ".." in parts:
            raise ValueError(f"{folder} is not inside {base}")
    fd = os.open(base or ".", flags)
    try:
        for part in parts:
            try:
                sub = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise OSError(exc.errno, "refusing to write through a symbolic link "
                                  "or non-folder", os.path.join(base, *parts)) from None
                raise OSError(exc.errno, exc.strerror, folder) from None
            os.close(fd)
            fd = sub
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_all(fd: int, data, path: str) -> int:
    """Write every byte of ``data`` (a short write is retried; no progress is ENOSPC)."""
    view = memoryview(data).cast("B")
    total = len(view)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        view = view[written:]
    return total


class _TempWriter:
    """A new temporary file next to ``path``: created with O_EXCL|O_NOFOLLOW under
    an unpredictable name in a folder opened without following links, written with
    checked counts, closed (close errors count: NFS reports them there), then renamed
    onto ``path``. Any failure removes the temporary file and is an OSError naming
    ``path``."""

    def __init__(self, path: str, base: Optional[str] = None, sync: bool = False):
        self.path = path
        self.name = _temporary_name(path)  # also what h5py/pickle see as the file name
        self.sync = sync
        self._dfd = open_folder(os.path.dirname(path), base)
        self._tmp = os.path.basename(self.name)
        self._fd: Optional[int] = None
        self._created = False  # only a file this writer made is ever removed
        self.size = 0

    def create(self) -> None:
        self._fd = os.open(self._tmp, _NEW_FILE, 0o666, dir_fd=self._dfd)
        self._created = True

    @property
    def fd(self) -> int:
        """The open temporary file (for writers that need a descriptor)."""
        if self._fd is None:
            self.create()
        return self._fd

    def write(self, data) -> int:
        if self._fd is None:
            self.create()
        written = _write_all(self._fd, data, self.path)
        self.size += written
        return written

    def commit(self) -> int:
        if self._fd is None:
            self.create()
        fd, self._fd = self._fd, None
        try:
            if self.sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(self._tmp, os.path.basename(self.path),
                  src_dir_fd=self._dfd, dst_dir_fd=self._dfd)
        if self.sync:
            os.fsync(self._dfd)
        return self.size

    def abort(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        if self._created:
            try:
                os.unlink(self._tmp, dir_fd=self._dfd)
            except OSError:
                pass

    def __enter__(self) -> "_TempWriter":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        try:
            if kind is None:
                try:
                    self.commit()
                except BaseException:
                    self.abort()
                    raise
            else:
                self.abort()
        except OSError as err:
            named = _naming(err, self.path)
            if named is err:
                raise
            raise named from err
        finally:
            os.close(self._dfd)
        if isinstance(exc, OSError) and exc.filename is None:
            raise _naming(exc, self.path) from exc
        return False


def _naming(exc: OSError, path: str) -> OSError:
    """``exc`` as an OSError that names ``path`` (os.write's errors name no file)."""
    if exc.filename is not None:
        return exc
    if exc.errno is None:
        return OSError(f"cannot write {path}: {exc}")
    return OSError(exc.errno, f"{exc.strerror} (writing {path})", path)


def write_bytes_atomic(path: str, data, base: Optional[str] = None,
                       sync: bool = False) -> int:
    """Write ``data`` into a new file at ``path`` (see :class:`_TempWriter`); returns
    its size. ``sync``: fsync the file and its folder before/after the rename."""
    with _TempWriter(path, base, sync) as out:
        out.write(data)
    return out.size


def h5_image(arrays: list, first_key: int = 0, name: str = "result.h5") -> bytes:
    """The bytes of an HDF5 file holding ``result_{first_key}``, ... built in memory,
    so that HDF5 itself never meets a full disk (on which it can crash the process)."""
    import h5py
    with h5py.File(name, "w", driver="core", backing_store=False) as h5f:
        for k, arr in enumerate(arrays, start=first_key):
            h5f.create_dataset(f"result_{k}", data=arr)
        h5f.flush()
        return h5f.id.get_file_image()


def write_h5_atomic(path: str, arrays: list, first_key: int = 0) -> int:
    """Write ``result_{first_key}``, ``result_{first_key+1}``, ... into a new file at
    ``path``; returns its size. The file is complete and closed before it gets its
    name; a failed write (e.g. ENOSPC) is an OSError naming ``path``."""
    with _TempWriter(path) as out:
        out.write(h5_image(arrays, first_key, name=out.name))
    return out.size


def write_pickle_atomic(path: str, value: Any) -> int:
    """``value`` pickled into a new file at ``path`` (like :func:`write_h5_atomic`)."""
    with _TempWriter(path) as out:
        out.create()
        pickle.dump(value, out, protocol=pickle.HIGHEST_PROTOCOL)
    return out.size


def _pickle_result(path: str, value: Any, index: int, why: str) -> int:
    """``write_pickle_atomic`` for call ``index``'s return value; a value that cannot
    be pickled is a TypeError that names the call (disk errors stay OSErrors)."""
    try:
        return write_pickle_atomic(path, value)
    except OSError:
        raise
    except Exception as exc:
        raise TypeError(f"the return value of call {index} ({type(value).__name__}) "
                        f"{why}: {exc}") from exc


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


class InMemorySink:
    """Results in memory: hand the value back, checked against ``result_shape`` first
    (so a wrong shape fails that call, in the worker, with both shapes named)."""

    def __init__(self, spec: Optional[ResultSpec] = None):
        self.spec = spec
        #: nothing to do per value: workers may skip calling ``store``
        self.passthrough = spec is None

    def store(self, index: int, value: Any) -> Any:
        """The value to send back: with ``result_shape`` the first value checked and
        cast, followed by the other return values (a tuple) when there are any."""
        if self.spec is None:
            return value
        first = self.spec.check(value, index)
        values = split_values(value, self.spec)
        if len(values) > 1:
            return (first,) + tuple(values[1:])
        return first


def _storable(layout: OutputLayout, spec: Optional[ResultSpec], index: int,
              value: Any) -> tuple[Optional[list], Optional[np.ndarray], Optional[Stored]]:
    """The call's datasets (:func:`hdf5_values`; the first checked against
    ``result_shape``, but stored with its own dtype, as esi-acme stores it) and the
    first value cast to ``result_dtype``; or, where HDF5 cannot hold them, the note
    of the pickle written instead: ``f_{i}.pickle`` next to the container, holding
    the list of values (esi-acme's file; unlike esi-acme, the container stays)."""
    values = split_values(value, spec)
    checked = spec.check(value, index) if spec is not None else None
    arrays = hdf5_values(values, shaped=spec is not None)
    if arrays is not None:
        return arrays, checked, None
    path = layout.pickle(index)
    held = value if isinstance(value, (list, tuple)) else [value]
    _pickle_result(path, held, index, "can be stored neither in HDF5 nor as a pickle")
    return None, None, Stored(path, pickled=True)


class PayloadSink:
    """One HDF5 file per call (``f_payload/f_{i}.h5``); a pickle where HDF5 cannot."""

    def __init__(self, layout: OutputLayout, spec: Optional[ResultSpec] = None):
        self.layout = layout
        self.spec = spec

    def store(self, index: int, value: Any) -> Stored:
        arrays, _, pickled = _storable(self.layout, self.spec, index, value)
        if pickled is not None:
            return pickled
        path = self.layout.payload(index)
        write_h5_atomic(path, arrays)
        return Stored(path, shape=arrays[0].shape, n_values=len(arrays))


class PickleSink:
    """``write_pickle=True``: the return value pickled to ``f_{i}.pickle``."""

    def __init__(self, layout: OutputLayout):
        self.layout = layout

    def store(self, index: int, value: Any) -> Stored:
        path = self.layout.pickle(index)
        _pickle_result(path, value, index, "cannot be pickled (write_pickle=True)")
        return Stored(path, pickled=True)


class SingleFileSink:
    """``single_file=True``: everything ends up in one real ``f.h5``.

    With a fixed ``result_shape`` the scheduler creates ``result_0`` with its space
    allocated up front; each worker then writes its call's rows as raw bytes at the
    dataset's file offset (no HDF5 metadata changes, so concurrent writers are safe
    and fast). Values that need new HDF5 objects (``comp_{i}/result_k``) go to a
    small per-call part file that the scheduler merges once every call is done.
    """

    def __init__(self, layout: OutputLayout, spec: Optional[ResultSpec],
                 raw_offset: Optional[int], n_calls: int):
        self.layout = layout
        self.spec = spec
        self.raw_offset = raw_offset
        self.n_calls = n_calls
        #: (device, inode) of the file the rows go into: a worker writes only there
        self.file_id = _identity(layout.container) if raw_offset is not None else None

    def store(self, index: int, value: Any) -> Stored:
        arrays, checked, pickled = _storable(self.layout, self.spec, index, value)
        if pickled is not None:
            return pickled
        shape, n_values = arrays[0].shape, len(arrays)
        first_key = 0
        if self.writes_result_0:
            self._write_result_0(index, checked)
            arrays, first_key = arrays[1:], 1
        if arrays:
            write_h5_atomic(self.layout.part(index), arrays, first_key=first_key)
        return Stored(self.layout.container, shape=shape, n_values=n_values)

    @property
    def writes_result_0(self) -> bool:
        """Whether result_0 goes straight into the file (else via part files)."""
        return self.raw_offset is not None

    def _write_result_0(self, index: int, arr: np.ndarray) -> None:
        self._write_rows(index, arr)

    def _write_rows(self, index: int, arr: np.ndarray) -> None:
        spec = self.spec
        full = spec.full_shape(self.n_calls)
        axis = spec.stack_axis
        outer = int(np.prod(full[:axis], dtype=np.int64))
        inner = int(np.prod(full[axis + 1:], dtype=np.int64))
        itemsize = spec.dtype.itemsize
        data = np.ascontiguousarray(arr, dtype=spec.dtype).reshape(outer, inner)
        path = self.layout.container
        try:  # never through a link, never into a file put in its place
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise OSError(exc.errno, f"{exc.strerror} (opening {path})", path) from None
        try:
            st = os.fstat(fd)
            if self.file_id is not None and (st.st_dev, st.st_ino) != self.file_id:
                raise OSError(f"{path} was replaced by another file during the run: "
                              f"not writing call {index}'s row into it")
            for row in range(outer):
                # element (row, index, 0) of the dataset viewed as (outer, n, inner)
                offset = self.raw_offset + ((row * self.n_calls + index) * inner) * itemsize
                view = memoryview(data[row].tobytes())
                while view:  # a short write is not a written row
                    written = os.pwrite(fd, view, offset)
                    if written <= 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
                    view, offset = view[written:], offset + written
        except OSError as exc:
            raise _naming(exc, path) from None
        finally:
            os.close(fd)


def _identity(path: str) -> Optional[tuple]:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def stack_in_memory(spec: ResultSpec, values: list, n_calls: int) -> Any:
    """In-memory results with ``result_shape``, as esi-acme returns them: one array
    of ``result_shape`` (call ``i``'s first value at position ``i`` of the stacking
    axis; calls without a value stay NaN, or 0 for integers), or, when calls
    returned several values, the list ``[array, <other values of call 0>, <other
    values of call 1>, ...]`` (one flat list, in call order)."""
    fill = np.nan if spec.dtype.kind in "fc" else 0
    out = np.full(spec.full_shape(n_calls), fill, dtype=spec.dtype)
    moved = np.moveaxis(out, spec.stack_axis, 0)
    others: list = []
    for index, value in enumerate(values):
        if isinstance(value, tuple):  # (checked first value, other values...)
            value, rest = value[0], value[1:]
            others.extend(rest)
        if value is not None:
            moved[index] = value
    return [out] + others if others else out
