"""Where a call's return values go. A sink runs inside the worker that made the call,
so results are written where they were computed and only a small note (the file
name) travels back to the scheduler.

Every file appears complete or not at all: it is written under a temporary name in
the same folder and renamed into place.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Optional

import numpy as np

from .layout import OutputLayout
from .result_spec import ResultSpec

__all__ = ["InMemorySink", "PayloadSink", "PickleSink", "SingleFileSink", "Stored",
           "stack_in_memory", "hdf5_values", "write_h5_atomic"]


class Stored:
    """What a disk sink reports back for one call: where the values went.

    ``pickled`` is True when the values could not be stored in HDF5 and were pickled
    instead; ``shape`` is the shape of the first value (needed for ``np.inf`` axes).
    """

    __slots__ = ("path", "pickled", "shape")

    def __init__(self, path: str, pickled: bool = False, shape: Optional[tuple] = None):
        self.path = path
        self.pickled = pickled
        self.shape = shape

    def __reduce__(self):
        return (Stored, (self.path, self.pickled, self.shape))

    def __repr__(self) -> str:
        return f"Stored({self.path!r}, pickled={self.pickled}, shape={self.shape})"


def _as_values(value: Any) -> list:
    """A tuple return is several values (result_0, result_1, ...); anything else one."""
    return list(value) if isinstance(value, tuple) else [value]


#: numpy dtype kinds, grouped as values that np.asarray may mix without changing them
_KIND_GROUPS = {"b": "b", "i": "n", "u": "n", "f": "n", "c": "n", "U": "U", "S": "S"}


def _leaf_kind(value: Any) -> Optional[str]:
    """What a leaf of a returned value is ("b" bool, "n" number, "U" str, "S" bytes),
    or None when np.asarray would change it silently (a masked array loses its mask,
    a pandas object its labels, an ndarray subclass its attributes) or cannot hold it."""
    if type(value) in (np.ndarray, np.memmap):
        return _KIND_GROUPS.get(value.dtype.kind, "O" if value.dtype.kind == "O" else None)
    if isinstance(value, (bool, np.bool_)):
        return "b"
    if isinstance(value, (int, float, complex, np.number)):
        return "n"
    if isinstance(value, (str, np.str_)):
        return "U"
    if isinstance(value, (bytes, np.bytes_)):
        return "S"
    return None


def _leaf_kinds(value: Any, found: set) -> bool:
    """Collect the leaf kinds of nested lists/tuples in ``found``; False when one
    leaf would not survive np.asarray unchanged."""
    if type(value) in (list, tuple):
        if all(type(v) is float for v in value) or all(type(v) is int for v in value):
            found.add("n")  # the common case, fast
            return True
        return all(_leaf_kinds(v, found) for v in value)
    kind = _leaf_kind(value)
    if kind is None:
        return False
    found.add(kind)
    return True


def _hdf5_array(value: Any) -> Optional[np.ndarray]:
    """``value`` as an array HDF5 can hold unchanged, or None: dicts, None, objects,
    ragged lists, and values that an array would change (masked arrays, pandas
    objects, lists mixing bools or strings with numbers) are pickled instead."""
    if value is None or isinstance(value, (dict, set, frozenset)):
        return None
    if isinstance(value, bytes) and b"\0" in value:
        return None  # HDF5 variable-length strings end at a NUL byte: pickle instead
    if isinstance(value, (str, bytes)):
        import h5py
        kind = h5py.string_dtype("utf-8") if isinstance(value, str) else h5py.string_dtype("ascii")
        return np.array([value], dtype=kind)
    kinds: set = set()
    if not _leaf_kinds(value, kinds) or len(kinds) > 1:
        return None  # e.g. [True, 2] would become [1, 2], [1, "a"] become strings
    try:
        arr = np.asarray(value)
    except Exception:
        return None
    if arr.dtype.kind == "U":  # numpy unicode has no HDF5 type: variable-length UTF-8
        import h5py
        arr = arr.astype(h5py.string_dtype("utf-8"))
    elif arr.dtype.kind in "OVMm":
        if arr.dtype.kind == "O" and arr.size and all(isinstance(v, str) for v in arr.flat):
            import h5py
            arr = arr.astype(h5py.string_dtype("utf-8"))
        else:
            return None
    if arr.ndim == 0:
        arr = arr.reshape(1)  # esi-acme stores scalars with shape (1,)
    return arr


def hdf5_values(values: list) -> Optional[list]:
    """Every value as an HDF5-storable array, or None if any one cannot be stored
    (also for no value at all: a call that returned ``()`` is kept as a pickle)."""
    if not values:
        return None
    arrays = []
    for value in values:
        arr = _hdf5_array(value)
        if arr is None:
            return None
        arrays.append(arr)
    return arrays


def _temporary_name(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{os.getpid()}.tmp")


def write_h5_atomic(path: str, arrays: list, first_key: int = 0) -> None:
    """Write ``result_{first_key}``, ``result_{first_key+1}``, ... into a new file at ``path``."""
    import h5py
    tmp = _temporary_name(path)
    try:
        with h5py.File(tmp, "w") as h5f:
            for k, arr in enumerate(arrays, start=first_key):
                h5f.create_dataset(f"result_{k}", data=arr)
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def write_pickle_atomic(path: str, value: Any) -> None:
    tmp = _temporary_name(path)
    try:
        with open(tmp, "wb") as fh:
            pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def _pickle_result(path: str, value: Any, index: int, why: str) -> None:
    """``write_pickle_atomic`` for call ``index``'s return value; a value that cannot
    be pickled is a TypeError that names the call (disk errors stay OSErrors)."""
    try:
        write_pickle_atomic(path, value)
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
        if isinstance(value, tuple) and len(value) > 1:
            return (first,) + value[1:]
        return first


def _storable(layout: OutputLayout, spec: Optional[ResultSpec], index: int,
              value: Any) -> tuple[Optional[list], Optional[Stored]]:
    """The call's values as HDF5-storable arrays (first checked against
    ``result_shape``), or, where HDF5 cannot hold them, the note of the pickle that
    was written instead."""
    values = _as_values(value)
    if spec is not None:
        values[0] = spec.check(value, index)
    arrays = hdf5_values(values)
    if arrays is not None:
        return arrays, None
    path = layout.fallback_pickle(index)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _pickle_result(path, value, index, "can be stored neither in HDF5 nor as a pickle")
    return None, Stored(path, pickled=True)


class PayloadSink:
    """One HDF5 file per call (``f_payload/f_{i}.h5``); a pickle where HDF5 cannot."""

    def __init__(self, layout: OutputLayout, spec: Optional[ResultSpec] = None):
        self.layout = layout
        self.spec = spec

    def store(self, index: int, value: Any) -> Stored:
        arrays, pickled = _storable(self.layout, self.spec, index, value)
        if pickled is not None:
            return pickled
        path = self.layout.payload(index)
        write_h5_atomic(path, arrays)
        return Stored(path, shape=arrays[0].shape)


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

    def store(self, index: int, value: Any) -> Stored:
        arrays, pickled = _storable(self.layout, self.spec, index, value)
        if pickled is not None:
            return pickled
        shape = arrays[0].shape
        first_key = 0
        if self.writes_result_0:
            self._write_result_0(index, arrays[0])
            arrays, first_key = arrays[1:], 1
        if arrays:
            write_h5_atomic(self.layout.part(index), arrays, first_key=first_key)
        return Stored(self.layout.container, shape=shape)

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
        fd = os.open(self.layout.container, os.O_WRONLY)
        try:
            for row in range(outer):
                # element (row, index, 0) of the dataset viewed as (outer, n, inner)
                offset = self.raw_offset + ((row * self.n_calls + index) * inner) * itemsize
                os.pwrite(fd, data[row].tobytes(), offset)
        finally:
            os.close(fd)


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
