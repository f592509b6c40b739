"""Read a run's results back without knowing the file layout::

    from acme import load_call, load_stacked
    values = load_call("ACME_20260101-120000-000000", 3)    # call 3's return values
    array = load_stacked("ACME_20260101-120000-000000")     # result_0 of every call

Unlike reading the container's virtual dataset, :func:`load_stacked` reads each
call's file directly: a missing or unreadable file is an error that names the call
(h5py silently returns fill values for a missing virtual-dataset source), memory
stays at the size of the result, and no file handle stays open per call.
"""
from __future__ import annotations

import glob
import os
import pickle
from typing import Any

import numpy as np

__all__ = ["find_container", "load_call", "load_stacked", "MissingResultError"]


class MissingResultError(FileNotFoundError):
    """One or more calls have no readable result.

    Raised by :func:`load_call` and :func:`load_stacked` when a call failed (so it
    never had a result) or when its result file is missing or unreadable. It is a
    ``FileNotFoundError``, so ``except OSError`` catches it too.

    Parameters
    ----------
    message : str
        What is missing and where it was expected.
    calls : list of int
        Indices of the calls without a result.

    Attributes
    ----------
    calls : list of int
        Indices of the calls without a result, in ascending order.
    """

    def __init__(self, message: str, calls: list[int]):
        super().__init__(message)
        self.calls = calls


def find_container(path: str) -> str:
    """The container file ``<func>.h5`` of a run's output folder.

    Parameters
    ----------
    path : str
        An output folder, or a file (returned as it is, made absolute).

    Returns
    -------
    str
        The absolute path of the container.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist, or the folder does not hold exactly one ``*.h5``
        file at its top level (e.g. a ``write_pickle=True`` run, which has none).
    """
    if os.path.isfile(path):
        return os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such result folder or file: {path!r}")
    found = [p for p in glob.glob(os.path.join(path, "*.h5"))
             if not os.path.basename(p).startswith(".")]
    if len(found) != 1:
        raise FileNotFoundError(
            f"expected one container file (<func>.h5) in {path!r}, found "
            f"{[os.path.basename(p) for p in found] or 'none'}")
    return os.path.abspath(found[0])


def _stem(container: str) -> str:
    return os.path.splitext(os.path.basename(container))[0]


def _read_group(group) -> list:
    keys = sorted((k for k in group if k.startswith("result_")),
                  key=lambda k: int(k.split("_")[1]))
    return [group[k][()] for k in keys]


def load_call(path: str, index: int) -> Any:
    """The return values of one call.

    Parameters
    ----------
    path : str
        A run's output folder, or its container file.
    index : int
        The call's index, ``0 .. n-1``.

    Returns
    -------
    list of numpy.ndarray, or object
        ``[result_0, result_1, ...]`` as stored in HDF5 (a scalar return value is
        an array of shape ``(1,)``; with ``single_file`` and ``result_shape``,
        ``result_0`` is the call's row of the stacked dataset). Where the call's
        result was pickled (``write_pickle=True``, or a value HDF5 cannot hold),
        the unpickled return value itself.

    Raises
    ------
    MissingResultError
        The call failed, or its result file is missing or unreadable.
    FileNotFoundError
        ``path`` is not a run's output folder or container.
    """
    import h5py
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    pickles = glob.glob(os.path.join(folder, f"*_{index}.pickle")) + \
        glob.glob(os.path.join(folder, "*_payload", f"*_{index}.pickle"))
    if pickles:
        with open(pickles[0], "rb") as fh:
            return pickle.load(fh)
    try:
        container = find_container(path)
    except FileNotFoundError:
        if glob.glob(os.path.join(folder, "*.pickle")):  # write_pickle=True: no container
            raise MissingResultError(f"call {index} has no result in {folder} (no "
                                     f"*_{index}.pickle)", [index]) from None
        raise
    with h5py.File(container, "r") as h5f:
        name = f"comp_{index}"
        if index in {int(i) for i in h5f.attrs.get("acme_missing_calls", [])}:
            # a single file keeps fill values (NaN) for a failed call: not a result
            raise MissingResultError(f"call {index} has no result in {container}",
                                     [index])
        link = h5f.get(name, getlink=True)
        if link is None:
            if "result_0" in h5f and not h5f["result_0"].is_virtual:  # single file
                return _single_file_row(h5f, index)
            raise MissingResultError(f"call {index} has no result in {container}", [index])
        try:
            values = _read_group(h5f[name])
        except KeyError as exc:
            raise MissingResultError(f"the result file of call {index} "
                                     f"({h5f.get(name, getlink=True).filename}) is "
                                     f"missing or unreadable: {exc}", [index]) from None
        if "result_0" in h5f and not h5f["result_0"].is_virtual:
            values = [_single_file_row(h5f, index)[0]] + values
        return values


def _single_file_row(h5f, index: int) -> list:
    axis = int(h5f["result_0"].attrs.get("acme_stack_axis", 0))
    sel = [slice(None)] * h5f["result_0"].ndim
    sel[axis] = index
    return [h5f["result_0"][tuple(sel)]]


def load_stacked(path: str, name: str = "result_0") -> np.ndarray:
    """The stacked result of every call as one numpy array.

    Reads each call's file directly rather than through the container's virtual
    dataset, so that a missing file is an error and not silent fill values, memory
    stays at the size of the result, and no file stays open per call.

    Parameters
    ----------
    path : str
        The output folder of a run made with ``result_shape``, or its container.
    name : str
        The stacked dataset to read (default ``"result_0"``).

    Returns
    -------
    numpy.ndarray
        Shape and dtype as given by ``result_shape`` and ``result_dtype``, with the
        number of calls on the stacking axis. An ``np.inf`` axis has the longest
        call's length; shorter calls are padded with the fill value (NaN for
        floats).

    Raises
    ------
    MissingResultError
        Some calls failed or their files are missing or unreadable; ``.calls``
        lists them.
    KeyError
        The container has no dataset ``name`` (the run had no ``result_shape``).
    FileNotFoundError
        ``path`` is not a run's output folder or container.
    """
    import h5py
    container = find_container(path)
    folder = os.path.dirname(container)
    with h5py.File(container, "r") as h5f:
        if name not in h5f:
            raise KeyError(f"{container} has no stacked dataset {name!r}; it was written "
                           "without result_shape (use load_call for each call)")
        dset = h5f[name]
        if not dset.is_virtual:
            missing = [int(i) for i in h5f.attrs.get("acme_missing_calls", [])]
            if missing:
                raise MissingResultError(f"calls {missing} have no result in {container}",
                                         missing)
            return dset[()]
        # np.inf axes: shorter calls leave padding that reads as the fill value (NaN)
        out = np.full(dset.shape, dset.fillvalue, dtype=dset.dtype)
        missing = []
        for vmap in dset.virtual_sources():
            source = os.path.join(folder, vmap.file_name)
            try:
                with h5py.File(source, "r") as src:
                    data = src[vmap.dset_name][()]
            except (OSError, KeyError):
                missing.append(source)
                continue
            if out.size == 0:  # zero-length results: nothing to place, only to check
                continue
            start, _, _, block = vmap.vspace.get_regular_hyperslab()
            index = tuple(slice(s, s + b) for s, b in zip(start, block))
            out[index] = data.reshape(out[index].shape)
        n_missing = list(h5f.attrs.get("acme_missing_calls", []))
    if missing or n_missing:
        calls = sorted({int(os.path.splitext(p)[0].rsplit("_", 1)[1]) for p in missing}
                       | {int(i) for i in n_missing})
        raise MissingResultError(f"the results of calls {calls} are missing "
                                 f"(expected in {folder})", calls)
    return out
