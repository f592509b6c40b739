"""Read folders written by esi-acme itself (they have no ``.acme`` record).

Such a folder has no journal, so what counts as a result is what the folder's own
files name: the container ``<func>.h5`` (its ``comp_{i}`` external links, its virtual
dataset's sources, each opened directly so that a missing source is an error and not
fill values), or, for ``write_pickle`` folders (no container), the files
``<func>_<i>.pickle`` found by their exact names.

Used by :mod:`acme.readers` (:func:`~acme.readers.load_call`,
:func:`~acme.readers.load_stacked`, :func:`~acme.readers.find_container`), which
decides whether a folder is an acme run or an esi-acme folder and imports this module
only for the latter (so this module may import from it without a circle at import).
"""
from __future__ import annotations

import os
import re
from typing import Any, Optional

import numpy as np

from .readers import (MissingResultError, _check_index, _ranges, _read_pickle,
                      _read_values, _result_keys, find_container, pickled_values)


def _payload_values(path: str, index: int) -> list:
    return _read_values(path, index)


def _listdir(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []



def container_in(folder: str) -> str:
    """The one ``*.h5`` file at the top of an esi-acme folder (its container).

    Raises FileNotFoundError unless there is exactly one (e.g. a ``write_pickle``
    folder has none)."""
    found = sorted(n for n in _listdir(folder) if n.endswith(".h5")
                   and not n.startswith(".") and os.path.isfile(os.path.join(folder, n)))
    names = set(_listdir(folder))
    match = re.match(r"^(.+)_\d+\.h5$", found[0]) if len(found) == 1 else None
    if match and any(re.fullmatch(re.escape(match.group(1)) + r"_\d+\.pickle", n)
                     for n in names):
        found = []  # one call's file beside pickles: esi-acme removed the container
    if len(found) != 1:
        raise FileNotFoundError(f"expected one container file (<func>.h5) in {folder!r}, "
                                f"found {found or 'none'}")
    return os.path.join(folder, found[0])


def _esi_call_file(folder: str, index: int) -> Optional[str]:
    """``<func>_<index>.pickle`` (or ``.h5``) at the top of an esi-acme folder without
    a container, by exact name: a ``write_pickle`` folder, or one whose container
    esi-acme removed because some values had to be pickled (it then moves every
    call's file to the top); None if the folder holds no such files at all."""
    pattern = re.compile(r"^(.+)_(\d+)\.(pickle|h5)$")
    stems: dict = {}
    for name in _listdir(folder):
        match = pattern.match(name)
        if match:
            stems.setdefault(match.group(1), {})[int(match.group(2))] = name
    if not stems:
        return None
    if len(stems) > 1:
        raise MissingResultError(f"{folder} holds result files of several functions "
                                 f"({sorted(stems)}): cannot tell which are results",
                                 [index])
    stem, files = stems.popitem()
    if index not in files:
        raise MissingResultError(f"call {index} has no result in {folder} (no "
                                 f"{stem}_{index}.pickle or .h5)", [index])
    return os.path.join(folder, files[index])


def load_call(path: str, folder: str, index: int) -> Any:
    """:func:`acme.readers.load_call` for an esi-acme folder (``path`` is the folder
    ``folder`` or a file in it)."""
    import h5py
    index = _check_index(index, None)
    try:
        container = find_container(path)
    except FileNotFoundError:
        found = _esi_call_file(folder, index)
        if found is None:
            raise
        if found.endswith(".pickle"):
            return pickled_values(_read_pickle(found, index))
        return _payload_values(found, index)
    try:
        h5f = h5py.File(container, "r")
    except OSError as exc:
        raise MissingResultError(f"the container {container} cannot be read: {exc}",
                                 [index]) from None
    with h5f:
        if index in {int(i) for i in h5f.attrs.get("acme_missing_calls", [])}:
            raise MissingResultError(f"call {index} has no result in {container}",
                                     [index])
        stacked = h5f.get("result_0")
        values = []
        if isinstance(stacked, h5py.Dataset):
            values.append(_esi_row(container, h5f, index))
        name = f"comp_{index}"
        if name in h5f or h5f.get(name, getlink=True) is not None:
            try:
                group = h5f[name]
                values.extend(group[k][()] for k in _result_keys(group))
            except (OSError, KeyError, ValueError, RuntimeError) as exc:
                link = h5f.get(name, getlink=True)
                raise MissingResultError(
                    f"the result file of call {index} ("
                    f"{getattr(link, 'filename', container)}) is missing or "
                    f"unreadable: {exc}", [index]) from None
        if not values:
            raise MissingResultError(f"call {index} has no result in {container}",
                                     [index])
        return values


def _esi_row(container: str, h5f, index: int) -> np.ndarray:
    """Call ``index``'s part of an esi-acme container's ``result_0``: a real row, or
    read from the virtual dataset's source ``index`` (esi-acme adds one per call,
    in call order) directly, so that a missing source is an error."""
    dset = h5f["result_0"]
    if not dset.is_virtual:
        sel = [slice(None)] * dset.ndim
        sel[int(dset.attrs.get("acme_stack_axis", 0))] = index
        return dset[tuple(sel)]
    sources = _VirtualSources(dset)
    if index >= len(sources):
        raise MissingResultError(f"call {index} has no result in {container}", [index])
    _, data = sources.read(index, os.path.dirname(container))
    return data


class _VirtualSources:
    """A virtual dataset's sources, one at a time, from its creation property list.

    Not ``Dataset.virtual_sources()``: the list of every source's selection it
    returns, while alive, makes every later ``h5py.File`` open and close cost time
    proportional to the number of sources (DESIGN.md, section 7)."""

    def __init__(self, dset):
        self.dset = dset
        self.plist = dset.id.get_create_plist()

    def __len__(self) -> int:
        return self.plist.get_virtual_count()

    def region(self, k: int) -> tuple:
        """Where source ``k`` lands in the virtual dataset (a tuple of slices)."""
        import h5py
        space = self.plist.get_virtual_vspace(k)
        try:
            start, stride, count, block = space.get_regular_hyperslab()
        except (ValueError, RuntimeError):  # an empty selection: nothing to place
            return ()
        finally:
            space.close()
        region = []
        for axis, (s, st, c, b) in enumerate(zip(start, stride, count, block)):
            if c == h5py.h5s.UNLIMITED or b == h5py.h5s.UNLIMITED:
                region.append(slice(s, self.dset.shape[axis]))
            else:
                region.append(slice(s, s + (c - 1) * st + b))
        return tuple(region)

    def read(self, k: int, folder: str) -> tuple[str, np.ndarray]:
        """Source ``k``'s file and its data; MissingResultError if unreadable."""
        import h5py
        source = os.path.join(folder, self.plist.get_virtual_filename(k))
        name = self.plist.get_virtual_dsetname(k)
        try:
            with h5py.File(source, "r") as src:
                return source, src[name][()]
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise MissingResultError(f"the result file of call {k} ({source}) is missing "
                                     f"or unreadable: {exc}", [k]) from None


def load_stacked(path: str) -> np.ndarray:
    """:func:`acme.readers.load_stacked` for an esi-acme folder: the container's result_0, a virtual
    dataset read source by source (each source opened directly)."""
    import h5py
    container = find_container(path)
    with h5py.File(container, "r") as h5f:
        if "result_0" not in h5f:
            raise KeyError(f"{container} has no stacked dataset 'result_0'; it was "
                           "written without result_shape (use load_call for each call)")
        dset = h5f["result_0"]
        missing = sorted(int(i) for i in h5f.attrs.get("acme_missing_calls", []))
        if missing:
            raise MissingResultError(f"calls {_ranges(missing)} have no result in "
                                     f"{container}", missing)
        if not dset.is_virtual:
            return dset[()]
        out = np.full(dset.shape, dset.fillvalue, dtype=dset.dtype)
        sources, problems = _VirtualSources(dset), {}
        for k in range(len(sources)):
            try:
                _, data = sources.read(k, os.path.dirname(container))
            except MissingResultError as exc:
                problems[k] = str(exc)
                continue
            region = sources.region(k)
            try:
                if region and data.size:
                    out[region] = data.reshape(out[region].shape)
            except ValueError:  # a layout this reader does not know: refuse it
                problems[k] = (f"the data of source {k} ({data.shape}) does not fit its "
                               f"place {region} in {container}")
    if problems:
        calls = sorted(problems)
        raise MissingResultError(f"the results of calls {_ranges(calls)} are missing "
                                 f"(e.g. {problems[calls[0]]})", calls)
    return out

