"""The inside of a SLURM job submitted by the ``slurm`` backend:
``srun python -m acme.slurm_job JOBDIR`` on every rank.

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

__all__ = ["JOB_FILE", "CONTEXT_FILE", "TASKS_FILE", "OUTCOMES_FILE", "RecordWriter",
           "RecordReader", "main"]

JOB_FILE = "job.json"
CONTEXT_FILE = "context.pkl"
TASKS_FILE = "tasks.pkl"
OUTCOMES_FILE = "outcomes.bin"

_HEADER = struct.Struct("<Q")

USAGE = """usage: srun python -m acme.slurm_job JOBDIR

Runs the job that acme's SLURM backend prepared in JOBDIR (job.json, context.pkl,
tasks.pkl) on every rank: rank 0 schedules, ranks 1..N-1 run the calls."""


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


def _run_rank0(comm, jobdir: str, job: dict) -> None:
    import socket
    import time

    from .backends.mpi import MPIBackend, MPIPool
    from .tasks import loads, pack_outcomes

    class JobBackend(MPIBackend):
        """The MPI scheduler on this job's pool (not acme.mpi_run's global one)."""

        def __init__(self, pool, n_workers):
            super().__init__(n_workers=n_workers)
            self._job_pool = pool

        def _pool(self):
            return self._job_pool

    writer = RecordWriter(os.path.join(jobdir, OUTCOMES_FILE))
    pool = MPIPool(comm, script_loaded=True)  # rank 0 tries pickle, then cloudpickle
    started = time.time()
    try:
        with open(os.path.join(jobdir, CONTEXT_FILE), "rb") as fh:
            context = loads(fh.read())
        with open(os.path.join(jobdir, TASKS_FILE), "rb") as fh:
            tasks = loads(fh.read())
        n_workers = int(job.get("n_workers") or max(1, comm.size - 1))
        writer.write("start", {"host": socket.gethostname(), "ranks": comm.size,
                               "pid": os.getpid(), "calls": len(tasks),
                               "job_id": os.environ.get("SLURM_JOB_ID")})
        backend = JobBackend(pool, n_workers)
        for item in backend.run(context, tasks, timeout=job.get("timeout")):
            # one CallOutcome or a packed batch of them: always written packed
            writer.write("batch", item if isinstance(item, tuple) else pack_outcomes([item]))
        writer.write("done", dict(backend.stats, job_seconds=time.time() - started))
    except BaseException as exc:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            writer.write("error", text)
        except Exception:  # the exception itself matters more
            pass
        raise
    finally:
        writer.close()
        pool.shutdown()


def main(argv: Optional[list] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
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

    log.info("rank 0 of %d on %s: running %s", comm.size, os.uname().nodename, jobdir)
    if comm.size == 1:
        log.warning("the job has 1 rank: there are no worker ranks, so every call runs "
                    "on rank 0")
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _run_rank0(comm, jobdir, job)
    except BaseException:
        traceback.print_exc()
        print(f"acme.slurm_job: rank 0 failed; ending all {comm.size} ranks",
              file=sys.stderr)
        sys.stderr.flush()
        comm.Abort(1)
    log.info("all calls done")
    return 0


if __name__ == "__main__":
    # Run the copy registered as "acme.slurm_job" (the record classes the backend
    # imports are the same objects).
    from acme import slurm_job as _registered
    sys.exit(_registered.main())
