"""MPI master/worker scheduler: rank 0 hands out calls, ranks 1..N-1 run them.

Used inside ``python -m acme.mpi_run script.py`` (see :mod:`acme.mpi_run`). Per
``compute()``:

1. rank 0 tells every worker a job starts and broadcasts the worker context (the
   function and the arguments that are the same for every call) once;
2. calls go out dynamically, a batch to whichever worker is free, batch sizes from
   measured call durations (like the local backend);
3. workers write result files themselves and send back only small notes;
4. rank 0 waits with ``Iprobe`` and a growing sleep instead of a spinning blocking
   receive, so it does not eat a core that a worker could use.

With ``single_file=True``, a fixed ``result_shape`` and h5py built against parallel
HDF5, every rank opens the result file collectively (driver ``mpio``), creates
``result_0`` collectively, and each worker writes its calls' rows independently.
"""
from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import time
import traceback
from collections import deque
from typing import Iterator, Optional

from acme.errors import CallTimeout
from acme.sinks import SingleFileSink
from acme.tasks import (CallOutcome, CallTask, WorkerContext, decode_items, dumps,
                        encode_batch, encode_items, loads, not_received, pack_outcomes)

from .base import Backend, BatchSizer

log = logging.getLogger("acme")

__all__ = ["MPIBackend", "MPIPool", "serve", "ParallelSingleFileSink", "WorkerLoadError"]

TAG_TO_WORKER = 11
TAG_TO_MASTER = 12
#: Batches a worker rank holds at once (one running, the rest queued).
PREFETCH = 2


class WorkerLoadError(RuntimeError):
    """A worker rank could not load a map's function and arguments. Raised before any
    call was sent: every rank is ready for the next map."""


def _receive(comm, source: int, tag: int, max_delay: float):
    """Receive the next message without spinning: probe, then sleep a little longer
    each time (10 µs up to ``max_delay``)."""
    from mpi4py import MPI
    status = MPI.Status()
    delay = 1e-5
    while not comm.Iprobe(source=source, tag=tag, status=status):
        time.sleep(delay)
        delay = min(delay * 2, max_delay)
    return comm.recv(source=status.Get_source(), tag=tag), status.Get_source()


def _run_with_alarm(context: WorkerContext, task: CallTask,
                    timeout: Optional[float]) -> CallOutcome:
    """Run one call; with ``timeout``, SIGALRM interrupts a call that runs too long
    (Python code only: a call stuck inside C code is stopped when it returns)."""
    if timeout is None:
        return context.run(task)

    def on_alarm(signum, frame):
        raise CallTimeout(f"call {task[0]} timed out after {timeout:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return context.run(task)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def serve(comm, script_loaded: bool = True) -> None:
    """Body of a worker rank: serve jobs until rank 0 says stop."""
    while True:
        message, _ = _receive(comm, 0, TAG_TO_WORKER, max_delay=0.005)
        if message[0] == "stop":
            return
        timeout = message[1]
        payload = comm.bcast(None, root=0)
        context, error = None, None
        try:
            context = loads(payload)
            context.rank = comm.rank
        except BaseException as exc:  # noqa: BLE001 - reported to rank 0
            error = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        # with this worker's host name, so rank 0 can say where calls were (multi-node)
        comm.gather((error, socket.gethostname(), os.getpid()), root=0)
        if not comm.bcast(None, root=0):
            continue
        sink = context.sink
        if hasattr(sink, "collective_open"):
            sink.collective_open(comm)
        _serve_map(comm, context, timeout)
        if hasattr(sink, "collective_close"):
            sink.collective_close()


def _serve_map(comm, context: WorkerContext, timeout: Optional[float]) -> None:
    """Run one map's batches until rank 0 says "end".

    Replies are ``(kind, number, pickled)``: ``"outcomes"`` for the batch numbered
    ``number`` (counted from 1 per map), ``"items"`` when rank 0 could not unpickle
    that batch and asked for it again call by call (``("resend", number)``); the
    last PREFETCH batches are kept for that.
    """
    pid = os.getpid()
    held: deque = deque(maxlen=PREFETCH)
    number = 0
    while True:
        message, _ = _receive(comm, 0, TAG_TO_WORKER, max_delay=0.001)
        if message[0] == "end":
            return
        if message[0] == "resend":
            batch = next((b for n, b in held if n == message[1]), None)
            comm.send(("items", message[1], pickle.dumps(
                encode_items(batch), protocol=pickle.HIGHEST_PROTOCOL)),
                dest=0, tag=TAG_TO_MASTER)
            continue
        number += 1
        tasks = pickle.loads(message[1])
        if timeout is None:
            batch = context.run_batch(tasks)
        else:
            batch = pack_outcomes([_run_with_alarm(context, t, timeout) for t in tasks])
        if os.getpid() != pid:  # a process forked by a call must never talk to rank 0
            os._exit(0)
        comm.send(("outcomes", number, encode_batch(batch, kind=None)), dest=0,
                  tag=TAG_TO_MASTER)
        held.append((number, batch))


class MPIPool:
    """Rank 0's handle on the worker ranks of an ``acme.mpi_run`` job."""

    def __init__(self, comm, script_loaded: bool = True):
        self.comm = comm
        self.script_loaded = script_loaded
        self.workers = list(range(1, comm.size))
        #: host name and process id of each worker rank (as each worker reports them
        #: at a map's start)
        self.hosts: dict = {}
        self.pids: dict = {}
        self.closed = False

    def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        for rank in self.workers:
            self.comm.send(("stop",), dest=rank, tag=TAG_TO_WORKER)


def _active_pool() -> Optional[MPIPool]:
    import sys
    runner = sys.modules.get("acme.mpi_run")
    return runner.active_pool() if runner is not None else None


class MPIBackend(Backend):
    """Calls run on the worker ranks of ``python -m acme.mpi_run`` (rank 0 schedules).

    ``n_workers="auto"`` uses every worker rank; a smaller number leaves the rest idle.
    """

    name = "mpi"

    @classmethod
    def is_available(cls) -> bool:
        return _active_pool() is not None

    @classmethod
    def default_workers(cls) -> int:
        pool = _active_pool()
        return max(1, len(pool.workers)) if pool is not None else 1

    def _pool(self) -> MPIPool:
        pool = _active_pool()
        if pool is None:
            raise RuntimeError(
                "backend='mpi' runs only inside an MPI job started with "
                "`mpiexec -n N python -m acme.mpi_run script.py` (or srun); this "
                "process is not rank 0 of such a job")
        return pool

    def describe(self) -> str:
        pool = _active_pool()
        ranks = len(pool.workers) if pool else 0
        return f"mpi backend with {min(self.n_workers, ranks) if ranks else 0} worker rank(s)"

    def single_file_sink(self, layout, spec, n_calls: int, resume: bool = False):
        import h5py
        pool = self._pool()
        if spec is None or spec.has_inf or not pool.workers:
            return super().single_file_sink(layout, spec, n_calls, resume)
        if not h5py.get_config().mpi:
            log.warning("h5py was built without MPI support: the single result file is "
                        "written through the serial path (workers write raw rows at "
                        "their offsets). Build h5py against parallel HDF5 for the "
                        "collective path.")
            return super().single_file_sink(layout, spec, n_calls, resume)
        os.makedirs(layout.parts_dir, exist_ok=True)
        append = resume and os.path.exists(layout.container)
        return ParallelSingleFileSink(layout, spec, n_calls, append), True

    def run(self, context: WorkerContext, tasks: list[CallTask],
            timeout: Optional[float] = None) -> Iterator[CallOutcome]:
        pool = self._pool()
        comm = pool.comm
        workers = pool.workers[:max(1, self.n_workers)]
        self.stats = {"bytes_to_workers": 0, "messages_to_workers": 0,
                      "worker_ranks": len(workers)}
        if not workers:
            log.warning("no worker ranks: running %d calls on rank 0", len(tasks))
            for task in tasks:
                yield _run_with_alarm(context, task, timeout)
            return
        payload = dumps(context, "The function or one of its constant arguments",
                        by_value=not pool.script_loaded)
        for rank in pool.workers:  # the broadcast below is collective: every rank joins
            comm.send(("job", timeout), dest=rank, tag=TAG_TO_WORKER)
        comm.bcast(payload, root=0)
        self.stats["bytes_to_workers"] += len(payload) * len(pool.workers)
        self.stats["messages_to_workers"] += len(pool.workers)
        replies = comm.gather(None, root=0)[1:]  # (error or None, host, pid) per worker
        pool.hosts = {rank: reply[1] for rank, reply in enumerate(replies, start=1)}
        pool.pids = {rank: reply[2] for rank, reply in enumerate(replies, start=1)}
        self.stats["worker_hosts"] = dict(pool.hosts)
        failed = [(rank, reply[0]) for rank, reply in enumerate(replies, start=1)
                  if reply[0]]
        comm.bcast(not failed, root=0)
        if failed:
            rank, text = failed[0]
            raise WorkerLoadError(f"worker rank {rank} (host {pool.hosts[rank]}) could not "
                                  f"load the function and its arguments:\n{text}")
        sink = context.sink
        if hasattr(sink, "collective_open"):
            sink.collective_open(comm)

        yield from _schedule(comm, pool, workers, tasks, timeout, self.stats)
        for rank in pool.workers:
            comm.send(("end",), dest=rank, tag=TAG_TO_WORKER)
        if hasattr(sink, "collective_close"):
            sink.collective_close()


def _schedule(comm, pool: MPIPool, workers: list, tasks: list, timeout: Optional[float],
              stats: dict) -> Iterator[tuple]:
    """Hand out the calls of one map and yield packed batches as they come back.

    Each worker holds up to PREFETCH batches, so the next one is already queued when
    it finishes a call and no round trip is spent waiting for work. Rank 0 sends
    without blocking (isend): a blocking send of a large batch while that worker
    blocks sending its large results would deadlock. A batch rank 0 cannot unpickle
    is asked for again call by call, so only the calls whose result cannot be loaded
    here fail.
    """
    pending = deque(tasks)
    in_flight: dict[int, deque] = {rank: deque() for rank in workers}
    resent: dict[int, deque] = {rank: deque() for rank in workers}  # asked again
    sends: list = []
    sizer = BatchSizer(len(workers) * PREFETCH, one_at_a_time=timeout is not None)
    try:
        while pending or any(in_flight.values()) or any(resent.values()):
            for _ in range(PREFETCH):
                for rank in workers:
                    if pending and len(in_flight[rank]) < PREFETCH:
                        size = sizer.next_size(len(pending))
                        batch = [pending.popleft() for _ in range(min(size, len(pending)))]
                        data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
                        sends.append(comm.isend(("tasks", data), dest=rank,
                                                tag=TAG_TO_WORKER))
                        stats["bytes_to_workers"] += len(data)
                        stats["messages_to_workers"] += 1
                        in_flight[rank].append(batch)
            sends = [request for request in sends if not request.Test()]
            (kind, number, data), rank = _receive(comm, -1, TAG_TO_MASTER, max_delay=0.001)
            where = (pool.hosts.get(rank, "?"), pool.pids.get(rank, -1), rank)
            if kind == "items":
                calls = [t[0] for t in resent[rank].popleft()]
                try:
                    yield decode_items(pickle.loads(data), calls, where)
                except Exception as exc:  # noqa: BLE001 - even the parts do not load
                    yield [], [], [], [not_received(i, exc, 0.0, where) for i in calls]
                continue
            sent = in_flight[rank].popleft()
            try:
                batch = pickle.loads(data)
            except Exception:  # noqa: BLE001 - one result rank 0 cannot load
                del data
                sends.append(comm.isend(("resend", number), dest=rank, tag=TAG_TO_WORKER))
                resent[rank].append(sent)
                continue
            sizer.record_batch(batch)
            yield batch
    except BaseException as exc:
        _note_interrupted(exc, pool, in_flight, resent, len(pending))
        raise
    for request in sends:
        request.wait()


def _note_interrupted(exc: BaseException, pool: MPIPool, in_flight: dict, resent: dict,
                      not_started: int) -> None:
    """Log (and add to ``exc``) which calls were running where when a map stopped."""
    held = {rank: [t[0] for batch in list(in_flight[rank]) + list(resent[rank])
                   for t in batch]
            for rank in in_flight if in_flight[rank] or resent[rank]}
    where = ", ".join(f"rank {rank} on {pool.hosts.get(rank, '?')}" for rank in sorted(held))
    why = ("was interrupted" if isinstance(exc, KeyboardInterrupt)
           else f"stopped because of {type(exc).__name__}")
    message = (f"the MPI run {why}: calls "
               f"{sorted(i for calls in held.values() for i in calls)} were running "
               f"on worker ranks {sorted(held)} and {not_started} calls had not "
               f"started; their results are missing" + (f" ({where})" if where else ""))
    log.error("%s", message)
    if hasattr(exc, "add_note"):  # Python 3.11+: shown with the traceback, e.g.
        exc.add_note(message)     # in the error a SLURM job reports home


class ParallelSingleFileSink(SingleFileSink):
    """``single_file=True`` on parallel HDF5: one file opened by every rank.

    Opening the file and creating ``result_0`` are collective (every rank, the same
    calls); each worker writes its calls' rows independently. Values beyond
    ``result_0`` go to per-call part files that rank 0 merges at the end.
    """

    def __init__(self, layout, spec, n_calls: int, append: bool = False):
        super().__init__(layout, spec, None, n_calls)
        self.append = append
        self._file = None
        self._dset = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = state["_dset"] = None
        return state

    @property
    def writes_result_0(self) -> bool:
        return True

    def collective_open(self, comm) -> None:
        import h5py
        from acme.container import ATTR_AXIS, ATTR_CALLS, _fill_value
        spec = self.spec
        mode = "a" if self.append else "w"
        self._file = h5py.File(self.layout.container, mode, driver="mpio", comm=comm)
        if self.append:  # resume: keep the rows written before
            self._dset = self._file["result_0"]
            return
        self._file.attrs[ATTR_CALLS] = self.n_calls  # metadata: written by every rank
        fill = _fill_value(spec.dtype)
        self._dset = self._file.create_dataset(
            "result_0", shape=spec.full_shape(self.n_calls), dtype=spec.dtype,
            fillvalue=fill)
        self._dset.attrs[ATTR_AXIS] = spec.stack_axis

    def collective_close(self) -> None:
        self._file.close()
        self._file = self._dset = None

    def _write_result_0(self, index: int, arr) -> None:
        sel = [slice(None)] * len(self._dset.shape)
        sel[self.spec.stack_axis] = index
        self._dset[tuple(sel)] = arr
