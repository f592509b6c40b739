"""Worker processes on this machine (stdlib ``multiprocessing``), scheduled by us.

Why not ``ProcessPoolExecutor``: one crashing call breaks its whole pool, it cannot
stop a single call that runs too long, and it re-sends constant arguments with every
task. Here each worker is a process with its own pipe:

* per map, the worker context (function + constant arguments) goes down each pipe
  once; a :class:`LocalPool` keeps its workers between maps, so ten maps in a
  notebook start processes once;
* calls go out in batches sized from measured call durations (short calls travel
  many per message, long ones one by one, batches shrink towards the end so the
  workers finish together);
* the scheduler sleeps in ``multiprocessing.connection.wait`` on the pipes and the
  process sentinels: no polling loop;
* a worker that dies takes only its call with it; its batch is re-run one call at
  a time to find the culprit, and a new worker takes its place;
* with ``timeout``, calls go one by one and a call past its deadline is killed
  together with its worker.
"""
from __future__ import annotations

import atexit
import itertools
import logging
import multiprocessing
import os
import pickle
import time
import weakref
from collections import deque
from multiprocessing.connection import wait
from typing import Iterator, Optional

from acme.errors import CallFailure, CallTimeout, WorkerDied
from acme.plot import Timeline
from acme.tasks import (HOST, CallOutcome, CallTask, WorkerContext, decode_items,
                        defined_interactively, dumps, not_received)

from .base import Backend, BatchSizer
from .local_worker import (UnguardedMainError, _refuse_in_starting_worker, _start_method,
                           _Worker, refuse_unguarded_script)

log = logging.getLogger("acme")

__all__ = ["LocalBackend", "LocalPool", "UnguardedMainError", "usable_cores"]

#: Identifies each map's worker context for the life of this process (never
#: ``id()`` of anything: CPython reuses the id of a freed object).
_context_ids = itertools.count(1)

#: Times a replacement for a dead worker is started before the map goes on without it.
REPLACE_ATTEMPTS = 3


def usable_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup CPU affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_running_pools: "weakref.WeakSet[LocalPool]" = weakref.WeakSet()
_stop_registered = False


def _stop_at_exit(pool: "LocalPool") -> None:
    """Stop ``pool`` when Python exits, if the script left it running.

    Registered after multiprocessing's own exit handler (imported above), so it runs
    first: that handler waits for every worker process, which a running pool's
    workers never end by themselves (the script would hang at exit)."""
    global _stop_registered
    if not _stop_registered:
        atexit.register(_stop_running_pools)
        _stop_registered = True
    _running_pools.add(pool)


def _stop_running_pools() -> None:
    for pool in list(_running_pools):
        pool.close()
    _running_pools.clear()


class LocalPool:
    """Worker processes on this machine that outlive one map.

    Made by :func:`acme.local_cluster_setup`; stopped by :func:`acme.cluster_cleanup`.

    Parameters
    ----------
    n_workers : int
        Number of worker processes.
    setup_timeout : float
        Seconds to wait for every worker to report that it is up.
    """

    #: the registry name of the backend that runs maps on this pool
    backend_name = "local"

    def __init__(self, n_workers: int, setup_timeout: float = 60.0, wait: bool = True):
        _refuse_in_starting_worker()
        self.mp = multiprocessing.get_context(_start_method())
        refuse_unguarded_script(self.start_method)
        _stop_at_exit(self)
        self.n_workers = n_workers
        self.workers: list[_Worker] = []
        self.started = 0
        self.closed = False
        for _ in range(n_workers):
            self.add_worker()
        if wait:  # a pool for one map skips this: work queues up while workers start
            self.wait_ready(setup_timeout)

    @property
    def start_method(self) -> str:
        return self.mp.get_start_method()

    def add_worker(self) -> _Worker:
        worker = _Worker(self.mp, self.started)
        self.started += 1
        self.workers.append(worker)
        return worker

    def wait_ready(self, timeout: float, only: Optional[list] = None) -> None:
        """Wait until the workers (or those in ``only``) said they are up; drop
        those that did not."""
        deadline = time.monotonic() + timeout
        waiting = [w for w in (only or self.workers) if not w.ready]
        late = list(waiting)
        while waiting and time.monotonic() < deadline:
            ready = wait([w.conn for w in waiting] + [w.death_fd for w in waiting],
                         timeout=max(0.0, deadline - time.monotonic()))
            for worker in waiting:
                if worker.conn in ready:
                    try:
                        kind, _ = worker.conn.recv()
                        worker.ready = kind == "ready"
                    except (EOFError, OSError):
                        pass
            waiting = [w for w in waiting if not w.ready and w.alive()]
        for worker in [w for w in late if not w.ready]:
            log.warning("worker process %s did not come up within %.0f s (%s)",
                        worker.process.pid, timeout, worker.death_reason())
            self.remove(worker)

    def remove(self, worker: _Worker) -> None:
        worker.kill()
        if worker in self.workers:
            self.workers.remove(worker)

    def alive(self) -> list:
        return [w for w in self.workers if w.alive()]

    def check(self) -> None:
        """Raise a clear error when the pool cannot take work."""
        if self.closed:
            raise RuntimeError("this worker pool was stopped (cluster_cleanup); start a "
                               "new one with acme.local_cluster_setup()")
        dead = [w for w in self.workers if not w.alive()]
        for worker in dead:
            log.warning("a worker of the pool has died (%s); it is replaced",
                        worker.death_reason())
            self.remove(worker)
        if not self.workers:
            raise RuntimeError("the worker pool has no live workers (they died or never "
                               "came up); stop it with acme.cluster_cleanup() and start "
                               "a new one")
        while len(self.workers) < self.n_workers:
            self.add_worker()
        self.wait_ready(10.0)

    def close(self) -> None:
        """Stop every worker: politely when idle, by force after two seconds."""
        if self.closed:
            return
        self.closed = True
        for worker in self.workers:
            if worker.busy:
                worker.kill()
            else:
                worker.stop()
        deadline = time.monotonic() + 2.0
        for worker in self.workers:
            worker.wait_dead(max(0.0, deadline - time.monotonic()))
            worker.kill()
        self.workers = []

    def __repr__(self) -> str:
        state = "stopped" if self.closed else f"{len(self.alive())} live workers"
        return f"<acme LocalPool: {state}, start method {self.start_method}>"


class LocalBackend(Backend):
    """Calls run in worker processes on this machine.

    ``n_workers="auto"`` means the number of cores this process may use. With a
    ``pool`` (a :class:`LocalPool`) the map runs on its workers and leaves them
    running; otherwise the backend starts workers for the map and stops them after.
    Set ``ACME_START_METHOD`` (fork/spawn/forkserver) to choose how workers start.
    """

    name = "local"

    def __init__(self, n_workers: Optional[int] = None, pool: Optional[LocalPool] = None,
                 **options):
        _refuse_in_starting_worker()
        refuse_unguarded_script(pool.start_method if pool is not None else _start_method())
        if pool is not None and n_workers is None:
            n_workers = pool.n_workers
        super().__init__(n_workers, **options)
        self.pool = pool

    @classmethod
    def default_workers(cls) -> int:
        return usable_cores()

    def run(self, context: WorkerContext, tasks: list[CallTask],
            timeout: Optional[float] = None) -> Iterator[CallOutcome]:
        own_pool = self.pool is None
        if own_pool:
            pool = LocalPool(max(1, min(self.n_workers, len(tasks))),
                             self.options.get("setup_timeout") or 60.0, wait=False)
        else:
            pool = self.pool
            pool.check()
        try:
            # Forked workers inherit the function; others must get it by value if it
            # lives in a __main__ they cannot import (python -c, stdin, notebooks).
            by_value = (pool.start_method != "fork" and defined_interactively(context.func))
            payload = dumps(context, "The function or one of its constant arguments",
                            by_value=by_value)
            run = _MapRun(pool, payload, tasks, max(1, min(self.n_workers, len(tasks))),
                          timeout, Timeline.for_sink(context.sink))
            self.stats = run.stats
            yield from run.loop()
        finally:
            if own_pool:
                pool.close()

    def describe(self) -> str:
        if self.pool is not None:
            return f"local backend with {self.n_workers} worker process(es) of a running pool"
        return f"local backend with {self.n_workers} worker process(es)"


class _MapRun:
    """One map on a pool's workers: dispatch batches, collect outcomes, replace
    workers that die, and never let one worker's fate end the map."""

    def __init__(self, pool: LocalPool, payload: bytes, tasks: list, n_workers: int,
                 timeout: Optional[float], timeline: Optional[Timeline] = None):
        self.pool = pool
        self.timeline = timeline  # each call's end, duration and worker memory
        self.payload = payload
        self.context_id = next(_context_ids)
        self.timeout = timeout
        self.workers = pool.workers[:n_workers]
        self.pending = deque(tasks)
        self.singles: deque = deque()  # calls of a batch whose worker died: rerun alone
        self.sizer = BatchSizer(len(self.workers), one_at_a_time=timeout is not None)
        self.stats = {"bytes_to_workers": 0, "messages_to_workers": 0,
                      "workers_started": pool.started, "start_method": pool.start_method}

    def dispatch(self, worker: _Worker) -> None:
        from_singles = bool(self.singles)
        if from_singles:
            batch = [self.singles.popleft()]
        else:
            size = self.sizer.next_size(len(self.pending))
            batch = [self.pending.popleft() for _ in range(min(size, len(self.pending)))]
        try:
            if worker.context_id != self.context_id:
                self.stats["bytes_to_workers"] += worker.load(self.payload, self.context_id)
                self.stats["messages_to_workers"] += 1
            self.stats["bytes_to_workers"] += worker.send(batch)
            self.stats["messages_to_workers"] += 1
            worker.from_singles = from_singles
        except (OSError, ValueError):  # e.g. BrokenPipeError: it died between calls
            worker.batch, worker.from_singles = batch, from_singles
            self.never_started(worker)

    def never_started(self, worker: _Worker) -> None:
        """``worker`` died before it took its batch: give the calls to another."""
        batch = worker.batch
        worker.batch = None
        (self.singles if worker.from_singles else self.pending).extendleft(reversed(batch))
        log.warning("worker process %s is gone (%s) before it started calls %s; they go "
                    "to another worker", worker.process.pid, worker.death_reason(),
                    [t[0] for t in batch])
        self.replace(worker)

    def replace(self, worker: _Worker) -> None:
        """Put a new worker in the dead one's place (a few attempts)."""
        index = self.workers.index(worker)
        self.pool.remove(worker)
        for _ in range(REPLACE_ATTEMPTS):
            fresh = self.pool.add_worker()
            self.pool.wait_ready(10.0, only=[fresh])
            if fresh in self.pool.workers:
                self.workers[index] = fresh
                break
        else:
            del self.workers[index]
        self.stats["workers_started"] = self.pool.started

    def where(self, worker: _Worker) -> tuple:
        return HOST, worker.process.pid or -1, None

    def lost(self, worker: _Worker, reason: str, error_type: type) -> Iterator[CallOutcome]:
        if error_type is WorkerDied and worker.taken.value < worker.sent:
            self.never_started(worker)  # e.g. killed between two calls
            return
        batch = worker.batch or []
        worker.batch = None
        if len(batch) == 1:
            index = batch[0][0]
            duration = time.monotonic() - worker.sent_at
            failure = CallFailure(index, error_type(f"call {index}: {reason}"), "",
                                  *self.where(worker), duration)
            if self.timeline is not None:
                self.timeline.add(worker.process.pid, [(index, duration, False)])
            yield CallOutcome(index, None, failure, duration)
        else:  # we do not know which call killed it: run each one alone
            log.warning("%s while running calls %s; running them again one by one",
                        reason, [t[0] for t in batch])
            self.singles.extend(batch)
        self.replace(worker)

    def receive(self, worker: _Worker) -> Iterator[tuple]:
        """Read one message of ``worker``; yield the packed batch it completes."""
        try:
            data = worker.conn.recv_bytes()
        except (EOFError, OSError):
            yield from self.lost(worker, worker.death_reason(), WorkerDied)
            return
        try:
            kind, body = pickle.loads(data)
        except Exception as exc:  # noqa: BLE001 - one result this process cannot load
            del data
            yield from self.undecodable(worker, exc)
            return
        if kind == "ready":  # a worker started without waiting
            worker.ready = True
        elif kind == "init-error":
            worker.batch = None
            raise RuntimeError("a worker process could not load the function and its "
                               "arguments:\n" + body)
        elif kind == "items":
            indices = [t[0] for t in worker.batch]
            worker.batch, worker.resending = None, False
            yield self.recorded(worker, decode_items(body, indices, self.where(worker)))
        else:
            worker.batch = None
            self.sizer.record_batch(body)
            yield self.recorded(worker, body)

    def recorded(self, worker: _Worker, packed: tuple) -> tuple:
        """``packed`` (a batch's outcomes), after its calls went into the timeline."""
        if self.timeline is not None:
            indices, _, durations, failed = packed
            self.timeline.add(worker.process.pid,
                              [(i, d, True) for i, d in zip(indices, durations)]
                              + [(o.index, o.duration, False) for o in failed])
        return packed

    def undecodable(self, worker: _Worker, exc: Exception) -> Iterator[tuple]:
        """The batch (or, after a resend, its per-call parts) did not unpickle here:
        ask the worker for each call's result on its own, so only the call(s) whose
        result cannot be loaded fail."""
        if not worker.resending and worker.tell(("resend", None)):
            worker.resending = True
            worker.sent_at = time.monotonic()
            return
        failed = [not_received(t[0], exc, 0.0, self.where(worker)) for t in worker.batch]
        worker.batch, worker.resending = None, False
        yield [], [], [], failed

    def wait_time(self, busy: list) -> Optional[float]:
        wait_for = None
        if self.timeout is not None:
            now = time.monotonic()
            wait_for = max(0.0, min(w.sent_at + self.timeout for w in busy) - now)
        if any(w.pidfd is None for w in busy):  # no pidfd: look at the process now and then
            wait_for = 0.5 if wait_for is None else min(wait_for, 0.5)
        return wait_for

    def loop(self) -> Iterator[tuple]:
        try:
            while True:
                for worker in list(self.workers):
                    if not worker.busy and (self.pending or self.singles):
                        self.dispatch(worker)
                busy = [w for w in self.workers if w.busy]
                if not busy:
                    if not (self.pending or self.singles):
                        break
                    if not self.workers:
                        raise RuntimeError("every worker process died and none could "
                                           "be started again")
                    continue  # a worker was replaced before it got its calls
                ready = wait([w.conn for w in busy] + [w.death_fd for w in busy],
                             timeout=self.wait_time(busy))
                for worker in busy:
                    if worker.conn in ready:
                        yield from self.receive(worker)
                    elif worker.death_fd in ready or (worker.pidfd is None
                                                      and not worker.alive()):
                        yield from self.lost(worker, worker.death_reason(), WorkerDied)
                    elif (self.timeout is not None
                          and time.monotonic() - worker.sent_at >= self.timeout):
                        yield from self.lost(worker, f"timed out after {self.timeout:g} s "
                                             "(the call was stopped and its worker "
                                             "replaced)", CallTimeout)
        finally:
            for worker in self.workers:
                if worker.busy:
                    # Workers still holding calls (interrupted run) cannot be trusted
                    # with the next map: stop them; the pool starts fresh ones later.
                    self.pool.remove(worker)
                else:  # let it drop the last batch it keeps for a resend
                    worker.tell(("forget", None))
