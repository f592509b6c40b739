"""Every call in this process, one after another: for debugging.

Exceptions keep their real traceback (with live frames a debugger can walk), and
``breakpoint()`` inside the function works.
"""
from __future__ import annotations

import logging
from typing import Iterator, Optional

from acme.tasks import CallOutcome, CallTask, WorkerContext

from .base import Backend

log = logging.getLogger("acme")


class SequentialBackend(Backend):
    name = "sequential"

    def run(self, context: WorkerContext, tasks: list[CallTask],
            timeout: Optional[float] = None) -> Iterator[CallOutcome]:
        if timeout is not None:
            log.warning("the sequential backend runs calls in this process and cannot "
                        "stop one after `timeout`=%s s; use backend='local' for that",
                        timeout)
        self.stats = {"bytes_to_workers": 0, "messages_to_workers": 0}
        for task in tasks:
            yield context.run(task)

    def describe(self) -> str:
        return "sequential backend (in this process)"
