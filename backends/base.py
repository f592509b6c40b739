"""The one small interface every backend implements."""
from __future__ import annotations

import logging
from typing import Iterator, Optional

from acme.tasks import CallOutcome, CallTask, WorkerContext

log = logging.getLogger("acme")

__all__ = ["Backend"]


class Backend:
    """Decides *where* calls run; the core decides what a call is and where its
    result goes.

    A backend gets a :class:`~acme.tasks.WorkerContext` (everything that is the
    same for every call, to be sent to each worker once) and the list of calls, and
    yields one :class:`~acme.tasks.CallOutcome` per call, in any order, as they
    finish. A call's own exception never escapes ``run``: it is part of the outcome.

    Subclasses implement :meth:`run`; every other hook has a safe default.

    Parameters
    ----------
    n_workers : int or None
        Worker count asked for; None lets the backend choose (:meth:`default_workers`).
    options :
        Backend-specific settings (e.g. ``partition`` for SLURM); unknown ones are
        ignored so the front can hand every backend the same dictionary.
    """

    #: Registry name; set by each subclass.
    name = "base"

    def __init__(self, n_workers: Optional[int] = None, **options):
        self.n_workers = n_workers if n_workers is not None else self.default_workers()
        self.options = options
        #: Transfer counters filled by ``run`` (bytes sent to workers, messages).
        self.stats: dict = {}

    @classmethod
    def is_available(cls) -> bool:
        """Whether the backend can run here (e.g. MPI present); "auto" asks this."""
        return True

    @classmethod
    def default_workers(cls) -> int:
        return 1

    def run(self, context: WorkerContext, tasks: list[CallTask],
            timeout: Optional[float] = None) -> Iterator[CallOutcome]:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers; called when the ParallelMap context ends."""

    def describe(self) -> str:
        return f"{self.name} backend with {self.n_workers} worker(s)"
