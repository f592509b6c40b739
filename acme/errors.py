"""Errors that cross process boundaries, and the one error a failed run raises."""
from __future__ import annotations

import pickle
import traceback
from typing import Any, Optional

__all__ = ["ParallelMapError", "RemoteTraceback", "CallFailure", "WorkerDied",
           "CallTimeout", "ResultNotReceived", "safe_str"]


def safe_str(obj: Any) -> str:
    """``str(obj)``, or a description of why it failed: never raises."""
    try:
        return str(obj)
    except Exception as exc:  # noqa: BLE001 - a user's __str__ can raise anything
        try:
            reason = f"{type(exc).__name__}: {exc}"
        except Exception:  # noqa: BLE001
            reason = type(exc).__name__
        return f"<str() failed: {reason}>"


def _type_name(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


class RemoteTraceback(Exception):
    """The traceback of an exception raised in another process, as text.

    Attached as ``__cause__`` of the rebuilt exception, so Python prints it above
    the local traceback ("The above exception was the direct cause of ...").

    Parameters
    ----------
    text : str
        The formatted traceback, headed by the call index and where it ran (host,
        process id, MPI rank).

    Attributes
    ----------
    text : str
        The same text; ``str()`` of the exception returns it.
    """

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class WorkerDied(RuntimeError):
    """The process running a call ended without returning.

    The cause of a call's failure when its worker crashed (segfault), was killed
    (e.g. by the out-of-memory killer) or called ``os._exit``; the message gives
    the exit code or signal. On the local backend only that call fails and a new
    worker takes the dead one's place.
    """


class ResultNotReceived(RuntimeError):
    """A call returned, but the main process could not receive its result.

    The cause of that call's failure when its return value (or its exception)
    pickled in the worker but could not be unpickled by the scheduling process (a
    class that is not importable there, a ``__reduce__`` that fails on load, no
    memory left for it); the message says why. The other calls are not affected.
    """


class CallTimeout(TimeoutError):
    """A call ran longer than the ``timeout`` given to ParallelMap.

    The cause of that call's failure; the call was stopped and the other calls
    went on.
    """


class CallFailure:
    """What is known about one failed call, in a form that pickles everywhere.

    Parameters
    ----------
    index : int
        The call's index (0..n-1).
    exception : BaseException
        The original exception (its type kept when it pickles).
    traceback_text : str
        The formatted traceback from where the call ran (empty when the worker
        died or the call was stopped).
    host : str
        Name of the machine the call ran on.
    pid : int
        Process id of the worker.
    rank : int or None
        MPI rank of the worker; None outside MPI.
    duration : float
        Seconds the call ran before it failed.

    Attributes
    ----------
    index, exception, traceback_text, host, pid, rank, duration
        As given.
    where : str
        ``"host H, pid P"``, with ``"MPI rank R, "`` in front under MPI.
    summary : str
        One line: exception type and message.
    """

    def __init__(self, index: int, exception: BaseException, traceback_text: str,
                 host: str, pid: int, rank: Optional[int] = None,
                 duration: float = 0.0):
        self.index = index
        self.exception = _printable(exception)
        self.traceback_text = traceback_text
        self.host = host
        self.pid = pid
        self.rank = rank
        self.duration = duration

    @classmethod
    def from_exception(cls, index: int, exc: BaseException, host: str, pid: int,
                       rank: Optional[int] = None, duration: float = 0.0) -> "CallFailure":
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(index, exc, text, host, pid, rank, duration)

    @property
    def where(self) -> str:
        place = f"host {self.host}, pid {self.pid}"
        if self.rank is not None:
            place = f"MPI rank {self.rank}, " + place
        return place

    @property
    def summary(self) -> str:
        """One line: ``ZeroDivisionError: division by zero``."""
        return f"{type(self.exception).__name__}: {self.exception}"

    def as_exception(self) -> BaseException:
        """The original exception with the remote traceback chained as its cause."""
        exc = self.exception
        if exc.__traceback__ is None and not isinstance(exc.__cause__, RemoteTraceback):
            header = f"Call {self.index} failed on {self.where}"
            if self.traceback_text.strip():
                text = f"\n{header}:\n" + '"""\n' + self.traceback_text + '"""'
            else:  # the worker died or was stopped: there is no Python traceback
                text = f"\n{header} (no traceback: {self.summary})"
            exc.__cause__ = RemoteTraceback(text)
        return exc

    def __reduce__(self):
        # Send the exception itself only if it survives pickling; otherwise keep its
        # type name and message so the parent still learns what happened.
        exc = self.exception
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception as problem:  # noqa: BLE001 - e.g. a constructor that needs args
            exc = RuntimeError(f"{_type_name(exc)}: {safe_str(exc)} (the original "
                               "exception could not be sent back: pickling it and "
                               f"loading it again failed with {_type_name(problem)}: "
                               f"{safe_str(problem)})")
        else:
            exc = _strip_traceback(exc)
        return (CallFailure, (self.index, exc, self.traceback_text, self.host,
                              self.pid, self.rank, self.duration))


def _printable(exc: BaseException) -> BaseException:
    """``exc``, or a RuntimeError that describes it when ``str(exc)`` raises (every
    report, log line and state record needs the message)."""
    try:
        str(exc)
        return exc
    except Exception as problem:  # noqa: BLE001 - a user's __str__ can raise anything
        replacement = RuntimeError(f"{_type_name(exc)} (its message could not be made: "
                                   f"str() failed with {_type_name(problem)}: "
                                   f"{safe_str(problem)})")
        replacement.__traceback__ = exc.__traceback__
        return replacement


def _strip_traceback(exc: BaseException) -> BaseException:
    """Frames do not pickle; the text of the traceback travels separately."""
    exc.__traceback__ = None
    exc.__context__ = None
    exc.__cause__ = None
    return exc


class ParallelMapError(RuntimeError):
    """One or more calls of a ParallelMap failed; all other calls completed.

    Raised by :meth:`ParallelMap.compute` after every call has run. Its
    ``__cause__`` is the first failed call's original exception (same type), whose
    own ``__cause__`` is a :class:`RemoteTraceback` with the traceback from the
    worker.

    Parameters
    ----------
    message : str
        Which calls failed, and the first failure.
    failed : list of int
        Indices of the failed calls.
    results : list
        One entry per call, None where it failed.
    errors : dict of int to CallFailure
        The failure of each failed call.

    Attributes
    ----------
    failed : list of int
        Indices of the calls that failed, in ascending order.
    results : list
        One entry per call: its return value (or result file), None where it failed.
    errors : dict of int to CallFailure
        What went wrong in each failed call (exception, traceback text, host, pid).
    """

    def __init__(self, message: str, failed: list[int], results: list[Any],
                 errors: dict[int, CallFailure]):
        super().__init__(message)
        self.failed = failed
        self.results = results
        self.errors = errors

    def __reduce__(self):
        return (ParallelMapError, (self.args[0], self.failed, self.results, self.errors))


def failure_report(func_name: str, n_calls: int,
                   errors: dict[int, CallFailure]) -> str:
    """The message of a ParallelMapError: which calls failed and the first error."""
    failed = sorted(errors)
    shown = ", ".join(str(i) for i in failed[:20]) + (", ..." if len(failed) > 20 else "")
    first = errors[failed[0]]
    return (f"{len(failed)} of {n_calls} calls of {func_name} failed (calls {shown}). "
            f"First failure, call {first.index} on {first.where}: {first.summary}. "
            "All other calls completed; see `.failed`, `.results` and `.errors`.")
