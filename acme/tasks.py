"""What a worker does with one call: build its arguments, run it, hand on the value.

The :class:`WorkerContext` holds everything that is the same for every call (the
function, the constant arguments, where results go). Backends send it to each worker
once; afterwards a call travels as its index plus the few values that differ.
"""
from __future__ import annotations

import os
import pickle
import socket
import sys
import time
import types
from typing import Any, Callable, Optional

import numpy as np

from .errors import CallFailure, ResultNotReceived, safe_str
from .inputs import CallPlan, TASK_ID

__all__ = ["CallOutcome", "CallTask", "WorkerContext", "dumps", "loads", "encode_batch",
           "encode_items", "decode_items"]

#: Forks of this process so far, counted in each child (``os.register_at_fork``): a
#: call that forks and whose child returns from the function is seen by the counter
#: changing during the call, and the child then leaves (see _leave_forked_child).
_FORKS = [0]


def _count_fork() -> None:
    _FORKS[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_count_fork)


#: The name under which MPI and SLURM workers load the user's script (acme.mpi_run).
WORKER_SCRIPT_MODULE = "__acme_worker__"


class _WorkerScriptAlias(types.ModuleType):
    """``__acme_worker__`` in the process that runs the user's script: a worker that
    loaded the script pickles its classes and functions (a returned dataclass, an
    exception class) under that name; here they are the script's, in ``__main__``.
    A worker replaces this alias with the module it loaded."""

    def __getattr__(self, name: str) -> Any:
        main = sys.modules.get("__main__")
        if main is None or main is self or name.startswith("__"):
            raise AttributeError(name)
        value = getattr(main, name)
        # only what the script defines (pickle.whichmodule must not find others here)
        if getattr(value, "__module__", None) != "__main__":
            raise AttributeError(name)
        return value


sys.modules.setdefault(WORKER_SCRIPT_MODULE, _WorkerScriptAlias(WORKER_SCRIPT_MODULE))


def _leave_forked_child() -> None:
    """End a process forked by a call that returned from the function (or raised)
    instead of exiting: it is a copy of the worker and must never report results,
    write result files or serve calls. ``os._exit`` skips atexit handlers and the
    flushing of inherited buffers, which belong to the worker."""
    os._exit(0)

#: One call as it travels to a worker: (index, varying positional values, varying keyword values)
CallTask = tuple


class CallOutcome:
    """The result of one call as it travels back to the scheduler.

    ``value`` is what the result sink returned: the return value itself for in-memory
    results, a file name for results on disk. ``failure`` is set instead when the call
    raised.
    """

    __slots__ = ("index", "value", "failure", "duration")

    def __init__(self, index: int, value: Any = None,
                 failure: Optional[CallFailure] = None, duration: float = 0.0):
        self.index = index
        self.value = value
        self.failure = failure
        self.duration = duration

    @property
    def ok(self) -> bool:
        return self.failure is None

    def __reduce__(self):
        return (CallOutcome, (self.index, self.value, self.failure, self.duration))

    def __repr__(self) -> str:
        state = "ok" if self.ok else f"failed: {self.failure.summary}"
        return f"CallOutcome(index={self.index}, {state}, {self.duration:.4f}s)"


class WorkerContext:
    """Everything a worker needs once to run any call of one ParallelMap."""

    def __init__(self, plan: CallPlan, sink: Any, rank: Optional[int] = None):
        self.func = plan.func
        self.n_inputs = plan.n_inputs
        # None marks a slot filled per call; constants are stored once here.
        self.positional = [None if a.varying else a.value for a in plan.positional]
        self.varying_positions = plan.varying_positions
        self.keywords = {k: a.value for k, a in plan.keywords.items() if not a.varying}
        self.varying_keywords = plan.varying_keywords
        self.inject_task_id = plan.inject_task_id
        self.sink = sink
        self.rank = rank

    def arguments(self, index: int, pos_values: tuple, kw_values: tuple) -> tuple[list, dict]:
        args = list(self.positional)
        for slot, value in zip(self.varying_positions, pos_values):
            args[slot] = value
        kwargs = dict(self.keywords)
        kwargs.update(zip(self.varying_keywords, kw_values))
        if self.inject_task_id:
            kwargs[TASK_ID] = index
        return args, kwargs

    def run(self, task: CallTask) -> CallOutcome:
        """Run one call; never raises for the call's own errors."""
        index, pos_values, kw_values = task
        forks = _FORKS[0]
        start = time.perf_counter()
        try:
            args, kwargs = self.arguments(index, pos_values, kw_values)
            value = self.func(*args, **kwargs)
            if _FORKS[0] != forks:
                _leave_forked_child()
            stored = self.sink.store(index, value)
        except (Exception, SystemExit) as exc:  # sys.exit() in a call fails that call
            if _FORKS[0] != forks:
                _leave_forked_child()
            duration = time.perf_counter() - start
            failure = CallFailure.from_exception(index, exc, HOST, os.getpid(),
                                                 self.rank, duration)
            return CallOutcome(index, None, failure, duration)
        return CallOutcome(index, stored, None, time.perf_counter() - start)

    def run_batch(self, tasks: list) -> tuple:
        """Run several calls; return them packed (see :func:`pack_outcomes`).

        The loop is the hot path for short calls, so the common case (every
        positional argument varies, no keywords) calls the function directly.
        """
        func = self.func
        store = None if getattr(self.sink, "passthrough", False) else self.sink.store
        direct = (not self.keywords and not self.varying_keywords and not self.inject_task_id
                  and self.varying_positions == list(range(len(self.positional))))
        clock = time.perf_counter
        forks = _FORKS  # a fork during a call changes forks[0] in the child only
        seen = forks[0]
        indices, values, durations, failed = [], [], [], []
        for task in tasks:
            index = task[0]
            start = clock()
            try:
                if direct:
                    value = func(*task[1])
                else:
                    args, kwargs = self.arguments(index, task[1], task[2])
                    value = func(*args, **kwargs)
                if forks[0] != seen:
                    _leave_forked_child()
                if store is not None:
                    value = store(index, value)
            except (Exception, SystemExit) as exc:
                if forks[0] != seen:
                    _leave_forked_child()
                duration = clock() - start
                failure = CallFailure.from_exception(index, exc, HOST, os.getpid(),
                                                     self.rank, duration)
                failed.append(CallOutcome(index, None, failure, duration))
                continue
            durations.append(clock() - start)
            indices.append(index)
            values.append(value)
        return indices, values, durations, failed


def pack_outcomes(outcomes: list) -> tuple:
    """Outcomes as ``(indices, values, durations, failed outcomes)``: plain lists
    pickle several times faster than one object per call."""
    ok = [o for o in outcomes if o.ok]
    return ([o.index for o in ok], [o.value for o in ok], [o.duration for o in ok],
            [o for o in outcomes if not o.ok])


def sendable(batch: tuple) -> tuple:
    """The batch, with every value (or failure) that cannot be pickled replaced by
    a failure of its call saying so."""
    indices, values, durations, failed = batch
    keep = ([], [], [])
    sent_failures = []
    for index, value, duration in zip(indices, values, durations):
        try:
            pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - any pickling error fails this call
            error = TypeError(
                f"the return value of call {index} cannot be sent back to the main "
                f"process (pickling failed: {safe_str(exc)}); return numpy arrays or "
                "plain Python objects, or write results to disk")
            failure = CallFailure(index, error, "", HOST, os.getpid(), None, duration)
            sent_failures.append(CallOutcome(index, None, failure, duration))
            continue
        keep[0].append(index)
        keep[1].append(value)
        keep[2].append(duration)
    for outcome in failed:
        try:
            pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - keep what can be told
            failure = outcome.failure
            error = RuntimeError(f"call {outcome.index} failed, but its error cannot be "
                                 f"sent back to the main process ({safe_str(exc)})")
            outcome = CallOutcome(outcome.index, None, CallFailure(
                outcome.index, error, safe_str(failure.traceback_text), HOST,
                os.getpid(), failure.rank, outcome.duration), outcome.duration)
        sent_failures.append(outcome)
    return keep[0], keep[1], keep[2], sent_failures


def encode_batch(batch: tuple, kind: Optional[str] = "outcomes") -> bytes:
    """A packed batch pickled for the scheduler, as ``(kind, batch)`` (just the
    batch when ``kind`` is None); values that do not pickle fail their own call."""
    try:
        return pickle.dumps(batch if kind is None else (kind, batch),
                            protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - a value that does not pickle fails its own call
        batch = sendable(batch)
        return pickle.dumps(batch if kind is None else (kind, batch),
                            protocol=pickle.HIGHEST_PROTOCOL)


def _dumps_or_none(obj: Any) -> Optional[bytes]:
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - the scheduler reports the call as not received
        return None


def encode_items(batch: Optional[tuple]) -> Optional[list]:
    """A packed batch as ``(index, duration, ok, pickled value or failure)`` per call:
    what a worker sends again when the scheduler could not unpickle the batch as a
    whole, so that one result it cannot load fails only its own call."""
    if batch is None:
        return None
    indices, values, durations, failed = batch
    items = [(i, d, True, _dumps_or_none(v)) for i, v, d in zip(indices, values, durations)]
    items += [(o.index, o.duration, False, _dumps_or_none(o)) for o in failed]
    return items


def not_received(index: int, problem: BaseException, duration: float, where: tuple,
                 what: str = "its result") -> CallOutcome:
    """The failure of a call whose result the scheduler could not unpickle.
    ``where`` is ``(host, pid, rank)`` of the worker."""
    text = f"{type(problem).__name__}: {safe_str(problem)}"
    if isinstance(problem, MemoryError):
        text += " (this process ran out of memory while receiving it)"
    error = ResultNotReceived(f"call {index}: {what} was computed but could not be "
                              f"received by the main process: unpickling it raised {text}")
    host, pid, rank = where
    return CallOutcome(index, None, CallFailure(index, error, "", host, pid, rank,
                                                duration), duration)


def decode_items(items: Optional[list], indices: list, where: tuple) -> tuple:
    """Unpickle what :func:`encode_items` made, one call at a time; a call whose part
    cannot be loaded fails alone. ``items`` None (the worker no longer held them):
    every call of ``indices`` fails."""
    if items is None:
        gone = RuntimeError("the worker no longer held the results")
        return [], [], [], [not_received(i, gone, 0.0, where) for i in indices]
    ok, values, durations, failed = [], [], [], []
    for index, duration, is_value, data in items:
        try:
            if data is None:
                raise TypeError("it could not be pickled in the worker")
            obj = pickle.loads(data)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - this call only
            failed.append(not_received(index, exc, duration, where,
                                       "its result" if is_value else "its error"))
            continue
        if is_value:
            ok.append(index)
            values.append(obj)
            durations.append(duration)
        else:
            failed.append(obj)
    return ok, values, durations, failed


HOST = socket.gethostname()


def dumps(obj: Any, what: str, by_value: bool = False) -> bytes:
    """Pickle ``obj`` for another process; by value (cloudpickle) where pickle cannot.

    Functions from a script or module travel by reference (the worker imports them);
    lambdas, closures and functions typed at a prompt travel by value when cloudpickle
    is installed. ``by_value=True`` uses cloudpickle directly (needed when the workers
    cannot import the script that defines the function).
    """
    first_error: Exception = RuntimeError("the workers cannot import the function's script")
    if not by_value:
        try:
            return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            first_error = exc
    try:
        import cloudpickle
    except ImportError:
        raise TypeError(
            f"{what} cannot be sent to worker processes: {first_error}. Define it at "
            "the top level of a module or script, or install cloudpickle "
            "(pip install cloudpickle) to send it by value.") from first_error
    try:
        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(f"{what} cannot be sent to worker processes, neither with "
                        f"pickle ({first_error}) nor with cloudpickle ({exc}).") from exc


def loads(data: bytes) -> Any:
    return pickle.loads(data)


#: Types that always pickle: checking them element by element would only cost time.
_ALWAYS_PICKLES = (int, float, complex, bool, str, bytes, type(None), np.generic)


def _check_sendable(value: Any, what: str) -> None:
    if isinstance(value, _ALWAYS_PICKLES):
        return
    if isinstance(value, np.ndarray) and not value.dtype.hasobject:
        return
    if isinstance(value, (list, tuple)) and all(
            isinstance(v, _ALWAYS_PICKLES) for v in value):
        return
    dumps(value, what)


def _all_simple(values: Any) -> bool:
    if isinstance(values, np.ndarray):
        return not values.dtype.hasobject
    return all(isinstance(v, _ALWAYS_PICKLES) for v in values)


def check_sendable(plan: CallPlan) -> None:
    """Raise a TypeError naming the first argument (and element) of ``plan`` that
    cannot be sent to a worker process, before anything runs."""
    name = getattr(plan.func, "__name__", plan.func)
    dumps(plan.func, f"The function {name!r}")
    arguments = [(f"positional argument {k}", arg) for k, arg in enumerate(plan.positional)]
    arguments += [(f"keyword argument {key!r}", arg) for key, arg in plan.keywords.items()]
    for label, arg in arguments:
        if not arg.varying:
            _check_sendable(arg.value, f"{label[0].upper()}{label[1:]} of {name}")
        elif not _all_simple(arg.value):
            for i, value in enumerate(arg.value):
                _check_sendable(value, f"Element {i} of {label} of {name}")


def defined_interactively(func: Callable) -> bool:
    """A function from a ``__main__`` without a file (``python -c``, stdin, Jupyter):
    a worker that does not inherit this process's memory cannot import it."""
    import sys
    if getattr(func, "__module__", None) != "__main__":
        return False
    return not getattr(sys.modules.get("__main__"), "__file__", None)
