"""Read a run's results back without knowing the file layout::

    from acme import load_call, load_stacked
    values = load_call("ACME_20260101-120000-000000", 3)    # call 3's return values
    array = load_stacked("ACME_20260101-120000-000000")     # result_0 of every call

What counts as a result:

- A folder written by acme (it has ``.acme/run.json``): only the calls that the run's
  journal ``.acme/done`` records as finished, each read from the file the journal
  names, after checking that it is where this run writes that call and still has
  the size it had when it was written. Everything else (a call that failed, that
  never ran because the run was killed, a file nobody recorded, a planted file)
  is not a result: :class:`MissingResultError`.
- A folder written by esi-acme (no ``.acme``): what the container ``<func>.h5``
  itself names (its ``comp_{i}`` external links, its virtual dataset's sources),
  or, for ``write_pickle`` folders (no container), the files ``<func>_<i>.pickle``
  found by their exact names. Those readers are in :mod:`acme.esi_folders`; this
  module reads acme runs, holds the public functions and decides which applies.

:func:`load_stacked` reads each call's file directly rather than through the
container's virtual dataset: h5py silently returns fill values for a missing source,
while here a missing or unreadable file is an error that names the call; memory
stays at the size of the result, and no file handle stays open per call.
"""
from __future__ import annotations

import os
import pickle
import re
import stat
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .layout import OutputLayout
from .result_spec import ResultSpec
from .state import RunState, StateError, check_single_file

__all__ = ["find_container", "load_call", "load_stacked", "MissingResultError",
           "pickled_values"]


class MissingResultError(FileNotFoundError):
    """One or more calls have no readable result.

    Raised by :func:`load_call` and :func:`load_stacked` when a call failed (so it
    never had a result), never finished (the run was stopped), or when its result
    file is missing, damaged or not one the run recorded. It is a
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


def _ranges(indices) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"`` (messages stay short for many calls)."""
    parts: list[str] = []
    for i in sorted(indices):
        if parts and parts[-1][1] == i - 1:
            parts[-1][1] = i
        else:
            parts.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


# ------------------------------------------------------------------ an acme run
@dataclass
class _Run:
    """What an acme run's own records say (``.acme/run.json`` and the journal)."""

    state: RunState
    layout: OutputLayout
    mode: str
    n_calls: int
    spec: Optional[ResultSpec]
    journal: dict          # index -> (path relative to the folder, size or None)
    _single_problem: Any = False  # not checked yet
    _real_dirs: Any = None        # folders checked to lie inside the output folder

    def path(self, index: int) -> str:
        """The journaled file of call ``index`` (the journal must hold it)."""
        return os.path.join(self.layout.output_dir, self.journal[index][0])

    def inside(self, path: str) -> bool:
        """Whether ``path``'s folder is inside the output folder, also after
        symbolic links are followed (checked once per folder)."""
        if self._real_dirs is None:
            self._real_dirs = {}
        folder = os.path.dirname(path)
        if folder not in self._real_dirs:
            base = os.path.realpath(self.layout.output_dir)
            real = os.path.realpath(folder)
            self._real_dirs[folder] = real == base or real.startswith(base + os.sep)
        return self._real_dirs[folder]

    def single_file_problem(self) -> Optional[str]:
        """Why ``f.h5`` of a single-file run cannot be read (checked once)."""
        if self._single_problem is False:
            self._single_problem = check_single_file(self.layout, self.n_calls, self.spec)
        return self._single_problem

    def failed(self) -> set[int]:
        """Calls with a failure record (names only: a damaged record is still one)."""
        try:
            names = os.listdir(self.state.failures_dir)
        except OSError:
            return set()
        return {int(m.group(1)) for m in map(re.compile(r"^call_(\d+)\.json$").match,
                                              names) if m}

    def why_missing(self, indices) -> str:
        """Which of ``indices`` failed and which never finished, in words."""
        failed = self.failed() & set(indices)
        rest = set(indices) - failed
        parts = []
        if failed:
            parts.append(f"failed: {_ranges(failed)} (see `python -m acme errors "
                         f"{self.layout.output_dir}`)")
        if rest:
            parts.append(f"not finished: {_ranges(rest)} (never ran or the run was "
                         "stopped; resume=True runs them)")
        return "; ".join(parts)


def _parse_shape(text: str) -> tuple:
    """``"(None, 3)"`` / ``"(np.inf, None)"`` (ResultSpec.describe) -> a tuple."""
    inner = text.strip()
    if not (inner.startswith("(") and inner.endswith(")")):
        raise ValueError(text)
    entries = [e.strip() for e in inner[1:-1].split(",") if e.strip()]
    return tuple(None if e == "None" else np.inf if e == "np.inf" else int(e)
                 for e in entries)


def _open_run(folder: str) -> Optional[_Run]:
    """The records of the acme run in ``folder``, or None if it has none (esi-acme).

    Raises StateError when the records are damaged."""
    state = RunState(folder)
    if not state.exists():
        return None
    record = state.read()
    settings = record.get("settings") or {}
    try:
        n_calls = int(record["n_calls"])
        stem = str(record.get("stem") or str(record["function"]).rsplit(".", 1)[-1])
        shape = settings.get("result_shape")
        spec = None if shape is None else ResultSpec(
            _parse_shape(shape), settings.get("result_dtype") or "float")
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"the run record {state.run_file} is damaged ({exc!r})") from None
    state = RunState(folder, stem)
    return _Run(state, OutputLayout(folder, stem), str(settings.get("mode", "files")),
                n_calls, spec, state.journal())


def _expected(run: _Run, index: int) -> set:
    """The files this run may write call ``index``'s values to."""
    layout = run.layout
    if run.mode == "pickle":
        return {layout.pickle(index)}
    if run.mode == "single_file":
        return {layout.container, layout.part(index), layout.pickle(index),
                layout.fallback_pickle(index)}
    # a value HDF5 cannot hold: f_{i}.pickle (f_payload/f_{i}.pickle before 2026-12)
    return {layout.payload(index), layout.pickle(index), layout.fallback_pickle(index)}


def _recorded_file(run: _Run, index: int) -> str:
    """The journaled file of call ``index``, checked; else MissingResultError."""
    if index not in run.journal:
        raise MissingResultError(f"call {index} has no result in "
                                 f"{run.layout.output_dir}: {run.why_missing([index])}",
                                 [index])
    path, size = run.path(index), run.journal[index][1]
    problem = None
    if path not in _expected(run, index):  # (so no "..", no absolute path)
        problem = f"the journal names {path}, which is not where this run writes it"
    elif not run.inside(path):
        problem = f"{path} leads out of the output folder (a symbolic link)"
    elif path == run.layout.container:
        problem = run.single_file_problem()
    else:
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                problem = f"{path} is not a regular file"
            elif size is not None and st.st_size != size:
                problem = f"{path} has {st.st_size} bytes, {size} when it was written"
        except OSError as exc:
            problem = f"{path} cannot be read ({exc.strerror or exc})"
    if problem:
        raise MissingResultError(f"call {index} has no usable result: {problem}", [index])
    return path


def _read_pickle(path: str, index: int) -> Any:
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)
    except Exception as exc:  # noqa: BLE001 - a damaged pickle raises many kinds
        raise MissingResultError(f"the result file of call {index} ({path}) is damaged: "
                                 f"{type(exc).__name__}: {exc}", [index]) from None


def pickled_values(held: Any) -> list:
    """The list of return values a result pickle holds: the elements of a tuple or
    list (esi-acme's fallback pickles hold ``[value]``, or the tuple or list the
    call returned), else ``[held]`` (``write_pickle`` files hold the bare value)."""
    return list(held) if isinstance(held, (list, tuple)) else [held]


def _result_keys(group) -> list[str]:
    keys = [k for k in group if re.fullmatch(r"result_\d+", k)]
    return sorted(keys, key=lambda k: int(k.split("_")[1]))


def _read_named(path: str, index: int) -> dict:
    """``{"result_k": value}`` of a call's part file."""
    import h5py
    try:
        with h5py.File(path, "r") as h5f:
            return {k: h5f[k][()] for k in _result_keys(h5f)}
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise MissingResultError(f"the result file of call {index} ({path}) is missing "
                                 f"or damaged: {exc}", [index]) from None


def _read_values(path: str, index: int) -> list:
    """``[result_0, result_1, ...]`` of a payload file."""
    named = _read_named(path, index)
    if "result_0" not in named:
        raise MissingResultError(f"the result file of call {index} ({path}) holds no "
                                 "result", [index])
    return [named[k] for k in _result_keys(named)]


def _single_file_values(run: _Run, index: int, part: Optional[str]) -> list:
    """Call ``index``'s values in a single-file run: its row of ``result_0`` (with
    result_shape), then ``comp_{index}/result_k``; or, for a call whose values were
    not merged yet (the run was stopped), what its part file holds (result_0 is
    then the row in ``f.h5`` when the worker wrote it there)."""
    import h5py
    named = _read_named(part, index) if part else {}
    path = run.layout.container
    values = []
    try:
        if run.spec is not None and "result_0" not in named or not part:
            problem = run.single_file_problem()
            if problem:
                raise MissingResultError(f"call {index} has no usable result: {problem}",
                                         [index])
            with h5py.File(path, "r") as h5f:
                if run.spec is not None and "result_0" not in named:
                    values.append(_row(h5f["result_0"], run.spec.stack_axis, index))
                group = h5f.get(f"comp_{index}") if not part else None
                if group is not None:
                    values.extend(group[k][()] for k in _result_keys(group))
    except MissingResultError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise MissingResultError(f"the result of call {index} cannot be read from "
                                 f"{path}: {exc}", [index]) from None
    return values + [named[k] for k in _result_keys(named)]


def _row(dset, axis: int, index: int) -> np.ndarray:
    sel = [slice(None)] * dset.ndim
    sel[axis] = index
    return dset[tuple(sel)]


def _check_index(index: Any, n_calls: Optional[int]) -> int:
    if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"`index` has to be an integer (a call's index), not "
                        f"{type(index).__name__} {index!r}")
    index = int(index)
    if index < 0 or (n_calls is not None and index >= n_calls):
        raise IndexError(f"`index` {index} is not a call of this run (calls 0 .. "
                         f"{'n-1' if n_calls is None else n_calls - 1})")
    return index


def _folder_of(path: Any) -> str:
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.isdir(path):
        return path
    if os.path.isfile(path):
        return os.path.dirname(path)
    raise FileNotFoundError(f"no such result folder or file: {path!r}")


def _load_call_acme(run: _Run, index: int) -> Any:
    path = _recorded_file(run, _check_index(index, run.n_calls))
    if path.endswith(".pickle"):
        return pickled_values(_read_pickle(path, index))
    if run.mode == "single_file":
        return _single_file_values(run, index, None if path == run.layout.container
                                   else path)
    return _read_values(path, index)


# ------------------------------------------------------------------ the container
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
        ``path`` does not exist, or the folder has no container: an acme run's
        ``<func>.h5`` is missing, or an esi-acme folder does not hold exactly one
        ``*.h5`` file at its top level (e.g. a ``write_pickle=True`` run).
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such result folder or file: {path!r}")
    try:
        run = _open_run(path)
    except StateError:
        run = None
    if run is not None:
        if run.mode == "pickle" or not os.path.isfile(run.layout.container):
            raise FileNotFoundError(f"the run in {path!r} has no container "
                                    f"{run.layout.container}")
        return run.layout.container
    from . import esi_folders  # (it imports from this module)
    return esi_folders.container_in(path)


# ------------------------------------------------------------------ public readers
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
    list
        Always a list. For a call stored in HDF5, its datasets
        ``[result_0, result_1, ...]`` as stored (esi-acme's layout: numbers and
        strings returned together, or one number alone, are one array
        ``result_0``, e.g. ``[array([18])]``; other values one dataset each, a
        scalar a 0-d array; with ``single_file`` and ``result_shape``,
        ``result_0`` is the call's row of the stacked dataset). For a pickled
        call (``write_pickle=True``, or a value HDF5 cannot hold), its return
        values: the elements of a returned tuple or list, else ``[value]``.

    Raises
    ------
    MissingResultError
        The call has no result: it failed, never finished, or its file is
        missing, damaged or not the one the run recorded.
    FileNotFoundError
        ``path`` is not a run's output folder or container.
    TypeError, IndexError
        ``index`` is not an integer, or not a call of the run.
    acme.state.StateError
        The run's records in ``.acme`` are damaged.
    """
    folder = _folder_of(path)
    run = _open_run(folder)
    if run is not None:
        return _load_call_acme(run, index)
    from . import esi_folders  # (it imports from this module)
    return esi_folders.load_call(path, folder, index)


def _result_0_of(run: _Run, index: int, path: str, data: bool):
    """Shape (``data=False``) or value of call ``index``'s result_0 in the file the
    journal names (a single-file row: in the container), checked against
    ``result_shape``/``result_dtype``."""
    import h5py
    spec = run.spec
    try:
        if run.mode == "single_file" and path != run.layout.container:
            with h5py.File(path, "r") as part:  # not merged yet: result_0 is here ...
                in_part = "result_0" in part
            path = path if in_part else run.layout.container  # ... or a row of f.h5
        if path == run.layout.container and run.single_file_problem():
            raise MissingResultError(f"call {index} has no usable result: "
                                     f"{run.single_file_problem()}", [index])
        with h5py.File(path, "r") as h5f:
            dset = h5f["result_0"]
            shape, dtype = dset.shape, dset.dtype
            if path == run.layout.container:
                shape = shape[:spec.stack_axis] + shape[spec.stack_axis + 1:]
                value = _row(dset, spec.stack_axis, index) if data else None
            else:
                value = dset[()] if data else None
    except MissingResultError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise MissingResultError(f"the result file of call {index} ({path}) is missing "
                                 f"or damaged: {exc}", [index]) from None
    scalar = spec.call_shape == () and shape == (1,)  # (acme before 2026-12)
    # the payload keeps the value's own dtype (esi-acme's layout); it is cast, with
    # a check that nothing changes, when stacked
    numeric = dtype.kind in "biufc" and spec.dtype.kind in "biufc"
    if not (spec.matches(shape) or scalar) or not (dtype == spec.dtype or numeric):
        raise MissingResultError(
            f"the result file of call {index} ({path}) holds result_0 of shape {shape} "
            f"and dtype {dtype}, not result_shape={spec.describe()} of {spec.dtype}",
            [index])
    return value if data else shape


def _stacked_acme(run: _Run) -> np.ndarray:
    """load_stacked for an acme run: the journaled calls only, each file read once
    (twice for an np.inf axis, whose length is the longest call's)."""
    spec, problems, paths = run.spec, {}, {}
    for i in range(run.n_calls):
        try:
            paths[i] = _recorded_file(run, i)
            if paths[i].endswith(".pickle"):
                problems[i] = f"call {i}'s values were pickled: read them with load_call"
        except MissingResultError as exc:
            problems[i] = str(exc)
    if not problems and paths and set(paths.values()) == {run.layout.container} \
            and not run.single_file_problem():
        import h5py
        with h5py.File(run.layout.container, "r") as h5f:  # every row merged: read all
            dset = h5f["result_0"]
            if dset.ndim == len(spec.shape) and dset.dtype == spec.dtype \
                    and dset.shape[spec.stack_axis] == run.n_calls:
                return dset[()]

    def each(data: bool) -> dict:
        found = {}
        for i, path in paths.items():
            if i in problems:
                continue
            try:
                found[i] = _result_0_of(run, i, path, data)
            except MissingResultError as exc:
                problems[i] = str(exc)
        _raise_missing(run, problems)
        return found

    if problems:  # check the other calls too, so that the error names every one
        each(False)
    inf_length = None
    if spec.has_inf:
        axis = [k for k, e in enumerate(spec.call_shape) if e == np.inf][0]
        inf_length = max((s[axis] if len(s) > axis else 1 for s in each(False).values()),
                         default=0)
    out = np.zeros(spec.full_shape(run.n_calls, inf_length), dtype=spec.dtype)
    if spec.dtype.kind in "fc":  # padding of an np.inf axis, as the container has it
        out[...] = np.nan
    found = each(True)
    for i, value in found.items():  # memory: the result and one call's value
        try:
            value = spec.cast(np.asarray(value), i)
        except ValueError as exc:  # a payload value result_dtype cannot hold
            problems[i] = f"the result of call {i} cannot be stacked: {exc}"
            continue
        shape = value.shape if value.ndim == len(spec.call_shape) else spec.call_shape
        sel = [slice(0, n) for n in shape]
        sel.insert(spec.stack_axis, i)
        out[tuple(sel)] = value.reshape(shape)
    _raise_missing(run, problems)
    return out


def _raise_missing(run: _Run, problems: dict) -> None:
    if not problems:
        return
    calls = sorted(problems)
    not_recorded = [i for i in calls if i not in run.journal]
    damaged = [i for i in calls if i in run.journal]
    parts = [run.why_missing(not_recorded)] if not_recorded else []
    if damaged:
        parts.append(f"unusable: {_ranges(damaged)} (e.g. {problems[damaged[0]]})")
    raise MissingResultError(f"the results of calls {_ranges(calls)} are missing in "
                             f"{run.layout.output_dir}: " + "; ".join(parts), calls)


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
        The stacked dataset to read: ``"result_0"`` (the only one).

    Returns
    -------
    numpy.ndarray
        Shape and dtype as given by ``result_shape`` and ``result_dtype``, with the
        number of calls on the stacking axis. An ``np.inf`` axis has the longest
        call's length; shorter calls are padded with the fill value (NaN for
        floats, 0 otherwise).

    Raises
    ------
    MissingResultError
        Some calls have no result (failed, never finished, files missing, damaged
        or not recorded by the run); ``.calls`` lists them.
    KeyError
        ``name`` is not a stacked dataset (the run had no ``result_shape``).
    FileNotFoundError
        ``path`` is not a run's output folder or container.
    acme.state.StateError
        The run's records in ``.acme`` are damaged.
    """
    folder = _folder_of(path)
    run = _open_run(folder)
    if name != "result_0" or (run is not None and run.spec is None):
        where = run.layout.output_dir if run is not None else path
        raise KeyError(f"{where} has no stacked dataset {name!r}; only result_0 of a "
                       "run made with result_shape is stacked (use load_call for each "
                       "call)")
    if run is not None:
        return _stacked_acme(run)
    from . import esi_folders
    return esi_folders.load_stacked(path)
