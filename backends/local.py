"""Worker processes on this machine (stdlib ``multiprocessing``), scheduled by us.

Why not ``ProcessPoolExecutor``: one crashing call breaks its whole pool, it cannot
stop a single call that runs too long, and it re-sends constant arguments with every
task. Here each worker is a process with its own pipe:

* the worker context (function + constant arguments) goes down each pipe once;
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

__all__ = ["LocalBackend"]

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
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:  # not Linux: workers still stop when their pipe closes
        pass


def _worker_main(conn, payload_size: int) -> None:
    """Body of a worker process: receive the context once, then serve batches."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the scheduler handles Ctrl-C
    _die_with_parent()
    try:
        context = loads(conn.recv_bytes())
    except BaseException as exc:  # noqa: BLE001 - report anything, then exit
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        conn.send(("init-error", text))
        return
    while True:
        try:
            tasks = conn.recv()
        except (EOFError, OSError):  # scheduler gone: stop quietly
            return
        if tasks is None:
            return
        batch = context.run_batch(tasks)
        try:
            conn.send(("outcomes", batch))
        except Exception:  # a value that does not pickle fails its own call only
            conn.send(("outcomes", sendable(batch)))


class _Worker:
    def __init__(self, ctx, payload: bytes, number: int):
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child_conn, len(payload)),
                                   name=f"acme-worker-{number}")
        self.process.start()
        child_conn.close()
        self.conn = parent_conn
        self.conn.send_bytes(payload)
        self.batch: Optional[list] = None
        self.sent_at = 0.0

    @property
    def busy(self) -> bool:
        return self.batch is not None

    def send(self, batch: list) -> int:
        data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
        self.conn.send_bytes(data)
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

    def stop(self, graceful: bool) -> None:
        if graceful and self.process.is_alive():
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                pass
        else:
            self.kill()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5.0)
        self.conn.close()


class LocalBackend(Backend):
    """Calls run in worker processes on this machine.

    ``n_workers="auto"`` means the number of cores this process may use.
    Set ``ACME_START_METHOD`` (fork/spawn/forkserver) to choose how workers start.
    """

    name = "local"

    @classmethod
    def default_workers(cls) -> int:
        return usable_cores()

    def run(self, context: WorkerContext, tasks: list[CallTask],
            timeout: Optional[float] = None) -> Iterator[CallOutcome]:
        mp = multiprocessing.get_context(_start_method())
        # Forked workers inherit the function; others must get it by value if it
        # lives in a __main__ they cannot import (python -c, stdin, notebooks).
        by_value = (mp.get_start_method() != "fork"
                    and defined_interactively(context.func))
        payload = dumps(context, "The function or one of its constant arguments",
                        by_value=by_value)
        n_workers = max(1, min(self.n_workers, len(tasks)))
        self.stats = {"bytes_to_workers": 0, "messages_to_workers": 0,
                      "workers_started": 0, "start_method": mp.get_start_method()}
        pending = deque(tasks)
        singles: deque = deque()  # calls of a batch whose worker died: rerun alone
        workers: list[_Worker] = []
        sizer = BatchSizer(n_workers, one_at_a_time=timeout is not None)

        def start_worker() -> _Worker:
            worker = _Worker(mp, payload, self.stats["workers_started"])
            self.stats["workers_started"] += 1
            self.stats["bytes_to_workers"] += len(payload)
            self.stats["messages_to_workers"] += 1
            workers.append(worker)
            return worker

        def dispatch(worker: _Worker) -> None:
            if singles:
                batch = [singles.popleft()]
            else:
                size = sizer.next_size(len(pending))
                batch = [pending.popleft() for _ in range(min(size, len(pending)))]
            self.stats["bytes_to_workers"] += worker.send(batch)
            self.stats["messages_to_workers"] += 1

        def replace(worker: _Worker) -> None:
            worker.kill()
            workers.remove(worker)
            if pending or singles:
                start_worker()

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
            for _ in range(n_workers):
                start_worker()
            while True:
                for worker in list(workers):
                    if not worker.busy and (pending or singles):
                        dispatch(worker)
                busy = [w for w in workers if w.busy]
                if not busy:
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
                        except (EOFError, OSError):
                            yield from lost(worker, worker.death_reason(), WorkerDied)
                            continue
                        if kind == "init-error":
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
            self._shutdown(workers)

    @staticmethod
    def _shutdown(workers: list) -> None:
        """Stop every worker we started: politely when idle, by force otherwise."""
        for worker in workers:
            worker.stop(graceful=not worker.busy)
        deadline = time.monotonic() + 2.0
        for worker in workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5.0)
            try:
                worker.conn.close()
            except OSError:
                pass

    def describe(self) -> str:
        return f"local backend with {self.n_workers} worker process(es)"
