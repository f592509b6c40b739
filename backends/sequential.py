"""Every call in this process, one after another: for debugging.

Exceptions keep their real traceback (with live frames a debugger can walk), and
``breakpoint()`` inside the function works. With the option ``debug=True`` (what
``ParallelMap.compute(debug=True)`` uses) the first call that raises stops the run
and its exception propagates unchanged, so ``pdb.pm()`` and ``%debug`` land in the
user's function.
"""
from __future__ import annotations

import logging
import time
from typing import Iterator, Optional

from acme.errors import safe_str
from acme.tasks import CallOutcome, CallTask, WorkerContext

from .base import Backend

log = logging.getLogger(__name__)


class SequentialBackend(Backend):
    name = "sequential"

    def run(self, context: WorkerContext, tasks: list[CallTask],
            timeout: Optional[float] = None) -> Iterator[CallOutcome]:
        if timeout is not None:
            log.warning("the sequential backend runs calls in this process and cannot "
                        "stop one after `timeout`=%s s; use backend='local' for that",
                        timeout)
        self.stats = {"bytes_to_workers": 0, "messages_to_workers": 0}
        debug = self.options.get("debug", False)
        for task in tasks:
            yield _run_raising(context, task) if debug else context.run(task)

    def describe(self) -> str:
        if self.options.get("debug", False):
            return "sequential backend (in this process, debug=True)"
        return "sequential backend (in this process)"


def _run_raising(context: WorkerContext, task: CallTask) -> CallOutcome:
    """One call whose exception is not caught: the traceback ends in the user's
    function (or, for a result acme refuses, in acme's check of it)."""
    index = task[0]
    start = time.perf_counter()
    args, kwargs = context.arguments(*task)
    try:
        value = context.func(*args, **kwargs)
        stored = context.sink.store(index, value)
    except Exception as exc:
        name = getattr(context.func, "__name__", "func")
        log.error("call %d of %s raised %s: %s; debug=True stops the run at the first "
                  "failure", index, name, type(exc).__name__, safe_str(exc))
        if hasattr(exc, "add_note"):  # Python >= 3.11
            exc.add_note(f"(raised in call {index} of {name}, run by ParallelMap with "
                         "debug=True)")
        raise
    return CallOutcome(index, stored, None, time.perf_counter() - start)
