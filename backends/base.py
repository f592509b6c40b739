"""The one small interface every backend implements."""
from __future__ import annotations

import logging
from typing import Iterator, Optional

from acme.tasks import CallOutcome, CallTask, WorkerContext

log = logging.getLogger("acme")

__all__ = ["Backend", "BatchSizer"]

#: Aim for batches that keep a worker busy about this long (seconds) ...
BATCH_SECONDS = 0.05
#: ... and never shorter than this, so the last few batches of very short calls
#: do not each cost a round trip that is longer than the work they carry.
MIN_BATCH_SECONDS = 0.002


class BatchSizer:
    """How many calls to send in one message, from the measured call durations.

    Short calls travel many per message (so messaging does not dominate), long ones
    one by one; no batch is larger than a fair share of what remains, so batches
    shrink towards the end and the workers finish together. The first batches hold
    one call each, to measure.
    """

    def __init__(self, n_workers: int, one_at_a_time: bool = False,
                 target_seconds: float = BATCH_SECONDS):
        self.n_workers = max(1, n_workers)
        self.one_at_a_time = one_at_a_time
        self.target_seconds = target_seconds
        self.total = 0.0
        self.count = 0

    def record_batch(self, batch: tuple) -> None:
        """Record every call of a packed batch (see acme.tasks.pack_outcomes)."""
        durations, failed = batch[2], batch[3]
        self.total += sum(durations) + sum(o.duration for o in failed)
        self.count += len(durations) + len(failed)

    def next_size(self, remaining: int) -> int:
        if self.one_at_a_time or self.count == 0:
            return 1
        fair_share = max(1, remaining // (2 * self.n_workers))
        per_call = max(self.total / self.count, 1e-7)
        most = max(1, int(self.target_seconds / per_call))
        least = max(1, int(MIN_BATCH_SECONDS / per_call))
        even_split = -(-remaining // self.n_workers)  # never more than a worker's share
        return max(1, min(max(fair_share, least), most, even_split))


class Backend:
    """Decides *where* calls run; the core decides what a call is and where its
    result goes.

    A backend gets a :class:`~acme.tasks.WorkerContext` (everything that is the
    same for every call, to be sent to each worker once) and the list of calls, and
    yields, in any order as they finish, one :class:`~acme.tasks.CallOutcome` per
    call or packed batches of them (``(indices, values, durations, failed
    outcomes)``, see :func:`acme.tasks.pack_outcomes`; much cheaper for many short
    calls). A call's own exception never escapes ``run``: it is part of the outcome.

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

    def single_file_sink(self, layout, spec, n_calls: int, resume: bool = False):
        """The sink for ``single_file=True``; returns ``(sink, result_0_in_file)``.

        The default creates the file here (or, with ``resume``, reopens it) and lets
        workers on this machine (or a shared file system) write result_0 rows at
        their byte offsets.
        """
        from acme.container import create_single_file
        from acme.sinks import SingleFileSink
        offset = create_single_file(layout, n_calls, spec, resume=resume)
        return SingleFileSink(layout, spec, offset, n_calls), offset is not None

    def close(self) -> None:
        """Release workers; called when the ParallelMap context ends."""

    def describe(self) -> str:
        return f"{self.name} backend with {self.n_workers} worker(s)"
