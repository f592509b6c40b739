"""The inside of a SLURM job submitted by the ``slurm`` backend:
``srun python -m acme.slurm_job JOBDIR`` on every rank (one run), or
``srun python -m acme.slurm_job --serve POOLDIR`` (a worker pool serving many runs).

The submitting process (:mod:`acme.backends.slurm`) leaves in ``JOBDIR``:

``job.json``
    settings: per-call timeout, number of worker ranks, the script to load on every
    rank (only when the function travels by reference to a ``__main__`` script);
``context.pkl``
    the pickled :class:`~acme.tasks.WorkerContext` (function, constant arguments,
    result sink);
``tasks.pkl``
    the pickled list of calls ``(index, varying positional, varying keyword values)``.

Rank 0 loads them and runs the calls on ranks 1..N-1 with the MPI scheduler of
:mod:`acme.backends.mpi` (an :class:`~acme.backends.mpi.MPIPool`, as
:mod:`acme.mpi_run` uses). Every outcome is appended to ``JOBDIR/outcomes.bin`` the
moment it arrives (as the packed batches the MPI scheduler yields), so the
submitting process shows progress and hands results on while the job runs. Results on disk are written by the worker ranks themselves;
in-memory results travel back in that file.

``outcomes.bin`` is a sequence of records, each an 8-byte little-endian length and
that many bytes of pickle: ``("start", info)``, ``("batch", (indices, values,
durations, failed outcomes))`` (see :func:`acme.tasks.pack_outcomes`; every call is in
exactly one batch), then ``("done", stats)`` or ``("error", text)``. Each record is written with one
``write`` on a file opened for appending, so a reader sees whole records or a tail it
has to wait for (never a mixture of two records).

Serve mode (:mod:`acme.backends.slurm_pool`, ``acme.slurm_cluster_setup``): ``POOLDIR``
holds ``job.json`` (settings of the pool). When every rank is up, rank 0 writes
``POOLDIR/ready.json``. It then waits for ``POOLDIR/map_0001/``, ``map_0002/``, ...
(each made complete by the submitting process, then renamed into place, so a folder
that exists is whole), each a job folder as above, runs their calls in that order
exactly like a one-run job (outcomes in ``map_NNNN/outcomes.bin``), and ends when the
file ``POOLDIR/stop`` appears (or, if set, when the submitting process stopped
touching ``POOLDIR/alive`` for ``orphan_seconds``). A map whose function cannot be
loaded (on rank 0 or on a worker rank) gets an ``("error", text)`` record and the pool
goes on (its record is ``("refused", text)`` instead of ``("error", text)``); any
other failure ends every rank, as in a one-run job.

Like :mod:`acme.mpi_run`, an exception on rank 0 (or SIGTERM, sent by ``scancel`` and
by SLURM at the time limit) ends every rank at once (``MPI_Abort``), so a broken job
never waits for its time limit. This module imports mpi4py only when it runs.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import struct
import sys
import traceback
from typing import Any, Iterator, Optional

log = logging.getLogger("acme")

__all__ = ["JOB_FILE", "CONTEXT_FILE", "TASKS_FILE", "OUTCOMES_FILE", "READY_FILE",
           "STOP_FILE", "ALIVE_FILE", "map_folder", "RecordWriter", "RecordReader",
           "main"]

JOB_FILE = "job.json"
CONTEXT_FILE = "context.pkl"
TASKS_FILE = "tasks.pkl"
OUTCOMES_FILE = "outcomes.bin"
#: serve mode: written by rank 0 when the pool is up / by the submitter to end it /
#: touched by the submitter while it lives
READY_FILE = "ready.json"
STOP_FILE = "stop"
ALIVE_FILE = "alive"
#: serve mode: rank 0 sleeps at most this long between looks for the next map
SERVE_MAX_DELAY = 0.05


def map_folder(pooldir: str, number: int) -> str:
    """The folder of map ``number`` (1, 2, ...) of a worker pool."""
    return os.path.join(pooldir, f"map_{number:04d}")

_HEADER = struct.Struct("<Q")

USAGE = """usage: srun python -m acme.slurm_job JOBDIR
       srun python -m acme.slurm_job --serve POOLDIR

Runs the job that acme's SLURM backend prepared in JOBDIR (job.json, context.pkl,
tasks.pkl) on every rank: rank 0 schedules, ranks 1..N-1 run the calls. With --serve,
runs the maps that appear as POOLDIR/map_0001/, map_0002/, ... one after another
until POOLDIR/stop appears (a worker pool of acme.slurm_cluster_setup)."""


# ------------------------------------------------------------------ outcome records
class RecordWriter:
    """Appends records to the outcomes file, each with one ``write`` (rank 0 only)."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, kind: str, payload: Any) -> None:
        try:
            data = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # a value rank 0 cannot pickle again fails its call only
            if kind != "batch":
                raise
            from .tasks import sendable
            data = pickle.dumps((kind, sendable(payload)), protocol=pickle.HIGHEST_PROTOCOL)
        record = _HEADER.pack(len(data)) + data
        written = 0
        while written < len(record):  # one write for anything but huge records
            written += os.write(self.fd, record[written:])

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class RecordReader:
    """Reads the records that are complete so far; call :meth:`read_new` again later
    for more (the submitting process, while the job runs)."""

    def __init__(self, path: str):
        self.path = path
        self.offset = 0

    def read_new(self) -> Iterator[tuple]:
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return
        with fh:
            fh.seek(self.offset)
            while True:
                header = fh.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    return
                (size,) = _HEADER.unpack(header)
                data = fh.read(size)
                if len(data) < size:  # the rest is still being written
                    return
                self.offset += _HEADER.size + size
                yield pickle.loads(data)


# ---------------------------------------------------------------------- the job
def read_job(jobdir: str) -> dict:
    with open(os.path.join(jobdir, JOB_FILE), encoding="utf-8") as fh:
        return json.load(fh)


def _load_main_script(path: str) -> None:
    """Define a ``__main__`` script's functions without running its main block (only
    used when the function travels by reference: no cloudpickle)."""
    from .mpi_run import _load_script_on_worker
    sys.path.insert(0, os.path.dirname(path))
    _load_script_on_worker(path)


class _Terminated(BaseException):
    """SIGTERM on rank 0: ``scancel``, or SLURM's time limit."""


def _on_sigterm(signum, frame):
    raise _Terminated(f"received signal {signum} (scancel or the job's time limit)")


def _job_backend(pool, n_workers: int):
    """The MPI scheduler on this job's pool (not acme.mpi_run's global one)."""
    from .backends.mpi import MPIBackend

    class JobBackend(MPIBackend):
        def __init__(self, job_pool, workers):
            super().__init__(n_workers=workers)
            self._job_pool = job_pool

        def _pool(self):
            return self._job_pool

    return JobBackend(pool, n_workers)


class _MapNotStarted(Exception):
    """Serve mode: a map's function could not be loaded; no call was sent, every rank
    is ready for the next map."""


def _run_calls(comm, pool, jobdir: str, job: Optional[dict], serving: bool = False) -> None:
    """Run the calls of ``jobdir`` on ``pool``, every outcome to ``outcomes.bin``.

    ``job`` None: read ``jobdir/job.json`` first (serve mode). With ``serving``, a
    failure to load the map (before any call was sent) is recorded as ``("refused",
    text)`` and raises :class:`_MapNotStarted`; other failures are recorded as
    ``("error", text)`` and propagate.
    """
    import socket
    import time

    from .backends.mpi import WorkerLoadError
    from .tasks import loads, pack_outcomes

    writer = RecordWriter(os.path.join(jobdir, OUTCOMES_FILE))
    started = time.time()
    loading = True
    try:
        if job is None:
            job = read_job(jobdir)
        with open(os.path.join(jobdir, CONTEXT_FILE), "rb") as fh:
            context = loads(fh.read())
        with open(os.path.join(jobdir, TASKS_FILE), "rb") as fh:
            tasks = loads(fh.read())
        loading = False
        n_workers = int(job.get("n_workers") or max(1, comm.size - 1))
        writer.write("start", {"host": socket.gethostname(), "ranks": comm.size,
                               "pid": os.getpid(), "calls": len(tasks),
                               "job_id": os.environ.get("SLURM_JOB_ID")})
        backend = _job_backend(pool, n_workers)
        for item in backend.run(context, tasks, timeout=job.get("timeout")):
            # one CallOutcome or a packed batch of them: always written packed
            writer.write("batch", item if isinstance(item, tuple) else pack_outcomes([item]))
        writer.write("done", dict(backend.stats, job_seconds=time.time() - started))
    except BaseException as exc:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        refused = serving and isinstance(exc, Exception) and (
            loading or isinstance(exc, WorkerLoadError))
        try:
            writer.write("refused" if refused else "error", text)
        except Exception:  # the exception itself matters more
            pass
        if refused:
            raise _MapNotStarted(text) from exc
        raise
    finally:
        writer.close()


def _run_rank0(comm, jobdir: str, job: dict) -> None:
    from .backends.mpi import MPIPool
    pool = MPIPool(comm, script_loaded=True)  # rank 0 tries pickle, then cloudpickle
    try:
        _run_calls(comm, pool, jobdir, job)
    finally:
        pool.shutdown()


def _write_json(path: str, data: dict) -> None:
    """Write ``path`` whole or not at all (a temporary name, then rename)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def _orphaned(pooldir: str, seconds: Optional[float], since: float) -> bool:
    """Whether the submitting process stopped touching ``POOLDIR/alive`` (it died
    without stopping the pool) for ``seconds``, counted from ``since`` at the earliest
    (when this rank started serving: a slow start is no silence)."""
    import time
    if not seconds:
        return False
    try:
        touched = os.stat(os.path.join(pooldir, ALIVE_FILE)).st_mtime
    except OSError:
        return False
    return time.time() - max(touched, since) > seconds


def _serve_rank0(comm, pooldir: str, job: dict) -> None:
    """Serve mode on rank 0: run ``map_0001/``, ``map_0002/``, ... until ``stop``."""
    import socket
    import time

    from .backends.mpi import MPIPool
    pool = MPIPool(comm, script_loaded=True)
    try:
        _write_json(os.path.join(pooldir, READY_FILE),
                    {"host": socket.gethostname(), "ranks": comm.size, "pid": os.getpid(),
                     "job_id": os.environ.get("SLURM_JOB_ID"), "time": time.time()})
        number, delay, since = 1, 0.001, time.time()
        while True:
            folder = map_folder(pooldir, number)
            if os.path.isdir(folder):
                log.info("map %d: %s", number, folder)
                try:
                    _run_calls(comm, pool, folder, None, serving=True)
                except _MapNotStarted as exc:
                    log.error("map %d could not start; waiting for the next one:\n%s",
                              number, exc)
                number, delay = number + 1, 0.001
                continue
            if os.path.exists(os.path.join(pooldir, STOP_FILE)):
                log.info("asked to stop after %d map(s)", number - 1)
                return
            if _orphaned(pooldir, job.get("orphan_seconds"), since):
                log.warning("the submitting process has not been heard of for %s s: "
                            "ending the pool", job.get("orphan_seconds"))
                return
            time.sleep(delay)
            delay = min(delay * 2, SERVE_MAX_DELAY)
    finally:
        pool.shutdown()


def main(argv: Optional[list] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    serving = bool(args) and args[0] == "--serve"
    if serving:
        args = args[1:]
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args and args[0] in ("-h", "--help") else 2
    jobdir = os.path.abspath(args[0])
    try:
        job = read_job(jobdir)
    except OSError as exc:
        print(f"acme.slurm_job: cannot read the job in {jobdir}: {exc}", file=sys.stderr)
        return 2
    try:
        from mpi4py import MPI
    except ImportError as exc:
        print(f"acme.slurm_job needs mpi4py (pip install mpi4py): {exc}", file=sys.stderr)
        return 2
    from .backends.mpi import serve

    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s - ACME job - %(levelname)s - %(message)s")
    comm = MPI.COMM_WORLD
    if job.get("main_script"):
        _load_main_script(job["main_script"])
    if comm.rank != 0:
        serve(comm, script_loaded=True)
        return 0

    log.info("rank 0 of %d on %s: %s %s", comm.size, os.uname().nodename,
             "serving the maps of" if serving else "running", jobdir)
    if comm.size == 1:
        log.warning("the job has 1 rank: there are no worker ranks, so every call runs "
                    "on rank 0")
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if serving:
            _serve_rank0(comm, jobdir, job)
        else:
            _run_rank0(comm, jobdir, job)
    except BaseException:
        traceback.print_exc()
        print(f"acme.slurm_job: rank 0 failed; ending all {comm.size} ranks",
              file=sys.stderr)
        sys.stderr.flush()
        comm.Abort(1)
    log.info("pool stopped" if serving else "all calls done")
    return 0


if __name__ == "__main__":
    # Run the copy registered as "acme.slurm_job" (the record classes the backend
    # imports are the same objects).
    from acme import slurm_job as _registered
    sys.exit(_registered.main())
