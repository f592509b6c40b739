"""Read a run's results back without knowing the file layout.

>>> from acme import load_call, load_stacked
>>> values = load_call("ACME_20260101-120000-000000", 3)    # call 3's return values
>>> array = load_stacked("ACME_20260101-120000-000000")     # result_0 of every call

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
    """A call's result file is missing or unreadable; ``.calls`` lists which."""

    def __init__(self, message: str, calls: list[int]):
        super().__init__(message)
        self.calls = calls


def find_container(path: str) -> str:
    """The container ``<func>.h5`` of an output folder (or ``path`` itself if a file)."""
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
    """The return values of call ``index`` (a list: result_0, result_1, ...; or the
    unpickled return value where the call's result was pickled).

    ``path`` is an output folder or its container file.
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
    """``result_0`` of every call as one numpy array (as laid out by ``result_shape``).

    Raises :class:`MissingResultError` naming the calls whose files are missing.
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
