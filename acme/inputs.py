"""Turn ``func, *args, **kwargs`` into ``n`` call specifications.

The rules are esi-acme's (scripts rely on them), minus its known defects:

* a list or tuple of length ``n`` is split element-wise; so is a numpy array that is
  1-D after squeezing (a ``(1, n)`` or ``(n, 1)`` array gives call ``i`` element ``i``);
  an array of one element (``np.array([5])``) is one call, like ``[5]``, when no
  other argument says how many calls to make;
* everything else (scalars, strings, dicts, sets, 2-D arrays, None, ...) is the same
  for every call;
* a keyword whose value is a list/tuple counts as "one value per call" only where the
  function's default for it is not already a list/tuple of that length; an ndarray
  keyword counts only where its default is not an ndarray.
"""
from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np

__all__ = ["ArgumentMismatchError", "CallPlan", "Argument", "prepare_input"]

#: Name of the keyword parameter through which a function receives its call index.
TASK_ID = "taskID"


class ArgumentMismatchError(ValueError, TypeError):
    """The arguments given to ParallelMap do not fit the function's signature.

    It is both a ValueError (what esi-acme raised) and a TypeError (what Python raises
    for a call with the wrong arguments), so either ``except`` clause catches it.
    """


@dataclass
class Argument:
    """One argument of ``func``: the same for every call, or one value per call."""

    value: Any
    varying: bool

    def for_call(self, index: int) -> Any:
        return self.value[index] if self.varying else self.value

    def as_list(self) -> list:
        """esi-acme's ``argv``/``kwargv`` format: per-call values, or ``[value]``."""
        return list(self.value) if self.varying else [self.value]


@dataclass
class CallPlan:
    """Everything needed to make call ``i`` of ``func``."""

    func: Callable
    n_inputs: int
    positional: list = field(default_factory=list)  # list[Argument]
    keywords: dict = field(default_factory=dict)  # dict[str, Argument]
    inject_task_id: bool = False

    def call_arguments(self, index: int) -> tuple[tuple, dict]:
        args = tuple(arg.for_call(index) for arg in self.positional)
        kwargs = {name: arg.for_call(index) for name, arg in self.keywords.items()}
        if self.inject_task_id:
            kwargs[TASK_ID] = index
        return args, kwargs

    @property
    def varying_positions(self) -> list[int]:
        return [k for k, arg in enumerate(self.positional) if arg.varying]

    @property
    def varying_keywords(self) -> list[str]:
        return [name for name, arg in self.keywords.items() if arg.varying]

    def tasks(self, skip: Optional[set] = None) -> list[tuple]:
        """``(index, varying positional values, varying keyword values)`` per call,
        in order, leaving out the indices in ``skip``."""
        pos_columns = [self.positional[k].value for k in self.varying_positions]
        kw_columns = [self.keywords[n].value for n in self.varying_keywords]
        pos_rows = zip(*pos_columns) if pos_columns else iter(lambda: (), None)
        kw_rows = zip(*kw_columns) if kw_columns else iter(lambda: (), None)
        rows = zip(range(self.n_inputs), pos_rows, kw_rows)
        if not skip:
            return list(rows)
        return [row for row in rows if row[0] not in skip]

    @property
    def argv(self) -> list[list]:
        return [arg.as_list() for arg in self.positional]

    @property
    def kwargv(self) -> dict[str, list]:
        return {name: arg.as_list() for name, arg in self.keywords.items()}


def _split_length(value: Any, default: Any = inspect.Parameter.empty) -> Optional[int]:
    """Length of ``value`` if it can be split into one element per call, else None."""
    if isinstance(value, (list, tuple)):
        if isinstance(default, (list, tuple)) and len(default) == len(value):
            return None
        return len(value)
    if isinstance(value, np.ndarray) and not isinstance(default, np.ndarray):
        squeezed = value.squeeze()
        if squeezed.ndim == 1:
            return int(squeezed.size)
    return None


def _single_element_array(value: Any, default: Any = inspect.Parameter.empty) -> bool:
    """An array of one element (shape ``(1,)``, ``(1, 1)``, ...): split into one call
    when nothing else says how many calls to make, as ``[5]`` is."""
    return (isinstance(value, np.ndarray) and not isinstance(default, np.ndarray)
            and value.ndim >= 1 and value.size == 1)


def _as_sequence(value: Any) -> Any:
    """The per-call view of a splittable value (arrays squeezed to 1-D)."""
    if isinstance(value, np.ndarray):
        return value.reshape(1) if value.size == 1 else value.squeeze()
    return value


#: What acme keeps per call while a map runs (task, result slot, note), at least;
#: measured ≈ 110–200 bytes, rounded up for the backends' own copies.
_BYTES_PER_CALL = 300


def _available_memory() -> Optional[int]:
    """Bytes of memory available to new allocations, or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_affordable(n_calls: int, name: str) -> None:
    """Refuse a number of calls whose bookkeeping alone cannot fit in memory, before
    a bare MemoryError (or the OOM killer) ends the run."""
    available = _available_memory()
    need = n_calls * _BYTES_PER_CALL
    if available is not None and need > available:
        raise ValueError(
            f"`n_inputs` is {n_calls}: that many calls of {name} need about "
            f"{need / 2 ** 30:.3g} GiB of memory for acme's bookkeeping alone "
            f"(≈ {_BYTES_PER_CALL} bytes per call), but {available / 2 ** 30:.3g} GiB are "
            "available. Make fewer calls that each do more work.")


def _describe_signature(func: Callable, sig: Optional[inspect.Signature]) -> str:
    name = getattr(func, "__name__", repr(func))
    return f"{name}{sig}" if sig is not None else f"{name}(...)"


def _signature(func: Callable) -> Optional[inspect.Signature]:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):  # some builtins and C extensions have none
        return None


def _check_arguments(func: Callable, sig: Optional[inspect.Signature],
                     args: tuple, kwargs: dict, inject_task_id: bool) -> None:
    """Fail before anything starts when ``func`` could not be called with these."""
    if sig is None:
        return
    probe_kwargs = dict(kwargs)
    if inject_task_id:
        probe_kwargs[TASK_ID] = 0
    try:
        sig.bind(*args, **probe_kwargs)
    except TypeError as exc:
        required = [p.name for p in sig.parameters.values()
                    if p.default is p.empty
                    and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                    and p.name != TASK_ID]
        given = f"{len(args)} positional argument(s)"
        if kwargs:
            given += f" and keyword(s) {sorted(kwargs)}"
        raise ArgumentMismatchError(
            f"{_describe_signature(func, sig)} expects {len(required)} positional "
            f"argument(s) ({', '.join(repr(r) for r in required) or 'none'}), but "
            f"ParallelMap was given {given}: {exc}") from None


def _number_of_calls(n_inputs: Union[int, str], candidates: list, name: str) -> int:
    """``n_inputs``, checked against the lengths of the splittable arguments, or
    inferred from them ("auto")."""
    if n_inputs != "auto":
        n_calls = int(n_inputs)
        if candidates and n_calls not in candidates and set(candidates) != {1}:
            raise ValueError(
                f"`n_inputs` is {n_calls}, but no argument of {name} has {n_calls} "
                f"elements (list/tuple/array lengths found: {sorted(set(candidates))}). "
                "Set `n_inputs` to one of these lengths, or leave it 'auto'.")
        return n_calls
    found = sorted(set(candidates))
    if not found:
        raise ValueError(
            f"ParallelMap could not infer how often to call {name}: no argument is "
            "a list, tuple or 1-D array to split into one element per call. "
            "Pass the values as a list, or set `n_inputs` explicitly.")
    if len(found) > 1:
        raise ValueError(
            f"ParallelMap could not infer how often to call {name}: found "
            f"{len(candidates)} list/tuple/array arguments with different lengths "
            f"{found}. Set `n_inputs` to the number of calls you want.")
    return found[0]


def hdf5_object(value: Any) -> bool:
    """Whether ``value`` is an h5py object (dataset, group or file)."""
    h5py = sys.modules.get("h5py")  # a script that passes one has imported h5py
    return h5py is not None and isinstance(value, h5py.HLObject)


def _reopen_hdf5(filename: str, name: str, is_file: bool) -> Any:
    """In a worker: the h5py object sent by :func:`_send_hdf5_by_name`, opened
    read-only (it stays open as long as the object lives)."""
    import h5py
    opened = h5py.File(filename, "r")
    return opened if is_file else opened[name]


def _send_hdf5_by_name(obj: Any) -> tuple:
    """How an h5py object travels to a worker: by file name and path (as Dask
    sends it for esi-acme), to be opened read-only there."""
    import h5py
    return _reopen_hdf5, (os.path.abspath(obj.file.filename), obj.name,
                          isinstance(obj, h5py.File))


def _check_hdf5_argument(where: str, name: str, value: Any) -> None:
    """An h5py object is sent by name; refuse one a worker could not open the same
    way: closed, in memory only, or open for writing (its data may not be on disk
    yet, and HDF5's file lock keeps other processes out)."""
    import copyreg
    import h5py
    kind = type(value).__name__
    advice = ("Pass the file name and the dataset's path as strings (e.g. 'data.h5', "
              "'/trials') and open them in the function with h5py.File(file_name, 'r'), "
              "or pass the data itself (dataset[()])")
    if not value.id.valid:
        raise TypeError(f"The {where} of {name} is an h5py.{kind} of a closed file. {advice}.")
    filename = value.file.filename
    problem = None
    if value.file.driver not in ("sec2", "stdio", "direct", "mpio") \
            or not os.path.isfile(filename):
        problem = "is not a file on disk that worker processes can open"
    elif value.file.mode != "r":
        problem = "is open for writing; open it with h5py.File(name, 'r') to pass it"
    if problem is not None:
        raise TypeError(f"The {where} of {name} is the h5py.{kind} {value.name!r} of "
                        f"the file {filename!r}, which {problem}. {advice}.")
    for cls in (h5py.Dataset, h5py.Group, h5py.File):
        copyreg.pickle(cls, _send_hdf5_by_name)


def _check_hdf5_arguments(name: str, args: tuple, kwargs: dict) -> None:
    """Every h5py object among the arguments (or one level inside a list/tuple of
    them) can be sent by name; see :func:`_check_hdf5_argument`."""
    if sys.modules.get("h5py") is None:
        return
    labelled = [(f"positional argument {k}", a) for k, a in enumerate(args)]
    labelled += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in labelled:
        inner = list(enumerate(value)) if isinstance(value, (list, tuple)) else []
        for where, item in [(label, value)] + [(f"element {i} of {label}", v)
                                               for i, v in inner]:
            if hdf5_object(item):
                _check_hdf5_argument(where, name, item)


def prepare_input(func: Callable, n_inputs: Union[int, str], *args: Any,
                  **kwargs: Any) -> CallPlan:
    """Work out how many calls to make and what each call receives.

    Parameters
    ----------
    func : callable
        The user function.
    n_inputs : int or "auto"
        Number of calls, or "auto" to infer it from ``args`` and ``kwargs``.
    *args, **kwargs
        The arguments as given to ``ParallelMap``.

    Returns
    -------
    CallPlan

    Raises
    ------
    ArgumentMismatchError
        ``func`` cannot be called with these arguments.
    TypeError
        An argument is an h5py object a worker cannot open by its name (closed,
        in memory only, or open for writing).
    ValueError
        The number of calls cannot be inferred, does not match the arguments, or is 0.
    """
    args = tuple(list(a) if isinstance(a, range) else a for a in args)
    kwargs = {k: list(v) if isinstance(v, range) else v for k, v in kwargs.items()}
    _check_hdf5_arguments(getattr(func, "__name__", repr(func)), args, kwargs)
    sig = _signature(func)
    params = sig.parameters if sig is not None else {}
    inject_task_id = TASK_ID in params and TASK_ID not in kwargs
    _check_arguments(func, sig, args, kwargs, inject_task_id)

    def default_of(name: str) -> Any:
        param = params.get(name)
        return param.default if param is not None else inspect.Parameter.empty

    pos_lengths = [_split_length(a) for a in args]
    kw_lengths = {k: _split_length(v, default_of(k)) for k, v in kwargs.items()}
    candidates = [n for n in pos_lengths if n is not None]
    candidates += [n for n in kw_lengths.values() if n is not None]
    name = getattr(func, "__name__", repr(func))

    if n_inputs == "auto" and not candidates:
        # only arrays of one element (np.array([5])): one call, like [5]
        pos_lengths = [1 if _single_element_array(a) else None for a in args]
        kw_lengths = {k: 1 if _single_element_array(v, default_of(k)) else None
                      for k, v in kwargs.items()}
        candidates = [n for n in pos_lengths if n is not None]
        candidates += [n for n in kw_lengths.values() if n is not None]

    n_calls = _number_of_calls(n_inputs, candidates, name)
    if n_calls == 0:
        raise ValueError(
            f"ParallelMap got empty inputs for {name}: there are 0 calls to make. "
            "Give at least one element in the list/array to distribute.")
    _check_affordable(n_calls, name)

    positional = [
        Argument(_as_sequence(a), True) if length == n_calls else Argument(a, False)
        for a, length in zip(args, pos_lengths)]
    keywords = {
        k: Argument(_as_sequence(v), True) if kw_lengths[k] == n_calls else Argument(v, False)
        for k, v in kwargs.items()}
    return CallPlan(func=func, n_inputs=n_calls, positional=positional,
                    keywords=keywords, inject_task_id=inject_task_id)
