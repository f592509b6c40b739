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

import ctypes  # loaded here once, so forked workers do not each import it
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import time
import traceback
from collections import deque
from multiprocessing.connection import wait
from typing import Iterator, Optional

from acme.errors import CallFailure, CallTimeout, WorkerDied
from acme.tasks import (HOST, CallOutcome, CallTask, WorkerContext, defined_interactively,
                        dumps, loads, sendable)

from .base import Backend, BatchSizer

log = logging.getLogger("acme")

__all__ = ["LocalBackend", "LocalPool", "usable_cores"]


def usable_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup CPU affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _start_method() -> str:
    method = os.environ.get("ACME_START_METHOD", "")
    if method:
        return method
    # fork starts a worker in milliseconds and lets functions typed at a prompt run;
    # elsewhere only spawn is safe.
    return "fork" if sys.platform.startswith("linux") else "spawn"


def _die_with_parent() -> None:
    """Ask Linux to kill this worker if the scheduler process dies (even by SIGKILL)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:  # not Linux: workers still stop when their pipe closes
        pass


def _worker_main(conn) -> None:
    """Body of a worker process: for each map, load its context, then serve batches.

    Messages in: ``("context", payload)``, ``("tasks", pickled batch)``, ``None``
    (stop). Out: ``("ready", pid)`` once, ``("outcomes", packed batch)`` per batch,
    ``("init-error", text)`` when a context cannot be loaded.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the scheduler handles Ctrl-C
    _die_with_parent()
    conn.send(("ready", os.getpid()))
    context = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # scheduler gone: stop quietly
            return
        if message is None:
            return
        kind, data = message
        if kind == "context":
            try:
                context = loads(data)
            except BaseException as exc:  # noqa: BLE001 - report anything
                text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                conn.send(("init-error", text))
                context = None
            continue
        batch = context.run_batch(pickle.loads(data))
        try:
            conn.send(("outcomes", batch))
        except Exception:  # a value that does not pickle fails its own call only
            conn.send(("outcomes", sendable(batch)))


class _Worker:
    def __init__(self, ctx, number: int):
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child_conn,),
                                   name=f"acme-worker-{number}")
        self.process.start()
        child_conn.close()
        self.conn = parent_conn
        self.ready = False
        self.context_id: Optional[int] = None
        self.batch: Optional[list] = None
        self.sent_at = 0.0

    @property
    def busy(self) -> bool:
        return self.batch is not None

    def load(self, payload: bytes, context_id: int) -> int:
        data = pickle.dumps(("context", payload), protocol=pickle.HIGHEST_PROTOCOL)
        self.conn.send_bytes(data)
        self.context_id = context_id
        return len(payload)

    def send(self, batch: list) -> int:
        data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
        self.conn.send(("tasks", data))
        self.batch = batch
        self.sent_at = time.monotonic()
        return len(data)

    def death_reason(self) -> str:
        self.process.join(timeout=1.0)
        code = self.process.exitcode
        if code is None:
            return "worker stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = "unknown"
            return f"worker died (signal {-code}, {name})"
        return f"worker died (exit code {code})"

    def stop(self) -> None:
        """Ask an idle worker to exit."""
        if self.process.is_alive():
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                pass

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5.0)
        try:
            self.conn.close()
        except OSError:
            pass


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
        self.mp = multiprocessing.get_context(_start_method())
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

    def wait_ready(self, timeout: float) -> None:
        """Wait until the workers said they are up; drop those that did not."""
        deadline = time.monotonic() + timeout
        waiting = [w for w in self.workers if not w.ready]
        while waiting and time.monotonic() < deadline:
            ready = wait([w.conn for w in waiting] + [w.process.sentinel for w in waiting],
                         timeout=max(0.0, deadline - time.monotonic()))
            for worker in waiting:
                if worker.conn in ready:
                    try:
                        kind, _ = worker.conn.recv()
                        worker.ready = kind == "ready"
                    except (EOFError, OSError):
                        pass
            waiting = [w for w in waiting if not w.ready and w.process.is_alive()]
        for worker in [w for w in self.workers if not w.ready]:
            log.warning("worker process %s did not come up within %.0f s",
                        worker.process.pid, timeout)
            self.remove(worker)

    def remove(self, worker: _Worker) -> None:
        worker.kill()
        if worker in self.workers:
            self.workers.remove(worker)

    def alive(self) -> list:
        return [w for w in self.workers if w.process.is_alive()]

    def check(self) -> None:
        """Raise a clear error when the pool cannot take work."""
        if self.closed:
            raise RuntimeError("this worker pool was stopped (cluster_cleanup); start a "
                               "new one with acme.local_cluster_setup()")
        dead = [w for w in self.workers if not w.process.is_alive()]
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
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
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
            yield from self._run_on(pool, context, tasks, timeout)
        finally:
            if own_pool:
                pool.close()

    def _run_on(self, pool: LocalPool, context: WorkerContext, tasks: list[CallTask],
                timeout: Optional[float]) -> Iterator[tuple]:
        # Forked workers inherit the function; others must get it by value if it
        # lives in a __main__ they cannot import (python -c, stdin, notebooks).
        by_value = (pool.start_method != "fork" and defined_interactively(context.func))
        payload = dumps(context, "The function or one of its constant arguments",
                        by_value=by_value)
        context_id = id(payload)
        workers = pool.workers[:max(1, min(self.n_workers, len(tasks)))]
        self.stats = {"bytes_to_workers": 0, "messages_to_workers": 0,
                      "workers_started": pool.started, "start_method": pool.start_method}
        pending = deque(tasks)
        singles: deque = deque()  # calls of a batch whose worker died: rerun alone
        sizer = BatchSizer(len(workers), one_at_a_time=timeout is not None)

        def dispatch(worker: _Worker) -> None:
            if worker.context_id != context_id:
                self.stats["bytes_to_workers"] += worker.load(payload, context_id)
                self.stats["messages_to_workers"] += 1
            if singles:
                batch = [singles.popleft()]
            else:
                size = sizer.next_size(len(pending))
                batch = [pending.popleft() for _ in range(min(size, len(pending)))]
            self.stats["bytes_to_workers"] += worker.send(batch)
            self.stats["messages_to_workers"] += 1

        def replace(worker: _Worker) -> None:
            index = workers.index(worker)
            pool.remove(worker)
            fresh = pool.add_worker()
            pool.wait_ready(10.0)
            if fresh in pool.workers:
                workers[index] = fresh
            else:
                workers.remove(worker)
            self.stats["workers_started"] = pool.started

        def lost(worker: _Worker, reason: str, error_type: type) -> Iterator[CallOutcome]:
            batch = worker.batch or []
            worker.batch = None
            if len(batch) == 1:
                index = batch[0][0]
                duration = time.monotonic() - worker.sent_at
                failure = CallFailure(index, error_type(f"call {index}: {reason}"), "",
                                      HOST, worker.process.pid or -1, None, duration)
                yield CallOutcome(index, None, failure, duration)
            else:  # we do not know which call killed it: run each one alone
                log.warning("%s while running calls %s; running them again one by one",
                            reason, [t[0] for t in batch])
                singles.extend(batch)
            replace(worker)

        try:
            while True:
                for worker in list(workers):
                    if not worker.busy and (pending or singles):
                        dispatch(worker)
                busy = [w for w in workers if w.busy]
                if not busy:
                    if (pending or singles) and not workers:
                        raise RuntimeError("every worker process died and none could "
                                           "be started again")
                    break
                wait_for = None
                if timeout is not None:
                    now = time.monotonic()
                    wait_for = max(0.0, min(w.sent_at + timeout for w in busy) - now)
                ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy],
                             timeout=wait_for)
                for worker in busy:
                    if worker.conn in ready:
                        try:
                            kind, data = worker.conn.recv()
                            if kind == "ready":  # a worker started without waiting
                                worker.ready = True
                                continue
                        except (EOFError, OSError):
                            yield from lost(worker, worker.death_reason(), WorkerDied)
                            continue
                        if kind == "init-error":
                            worker.batch = None
                            raise RuntimeError(
                                "a worker process could not load the function and its "
                                "arguments:\n" + data)
                        worker.batch = None
                        sizer.record_batch(data)
                        yield data
                    elif worker.process.sentinel in ready:
                        yield from lost(worker, worker.death_reason(), WorkerDied)
                    elif timeout is not None and time.monotonic() - worker.sent_at >= timeout:
                        yield from lost(worker, f"timed out after {timeout:g} s "
                                        "(the call was stopped and its worker replaced)",
                                        CallTimeout)
        finally:
            # Workers still holding calls (interrupted run) cannot be trusted with the
            # next map: stop them; the pool starts fresh ones when it is used again.
            for worker in [w for w in workers if w.busy]:
                pool.remove(worker)

    def describe(self) -> str:
        if self.pool is not None:
            return f"local backend with {self.n_workers} worker process(es) of a running pool"
        return f"local backend with {self.n_workers} worker process(es)"
