"""SLURM worker pools: ONE long-running MPI job that runs many maps.

``acme.slurm_cluster_setup()`` (and ``esi_cluster_setup``) call :func:`start_allocation`:
it plans the job like the ``slurm`` backend does (partition, memory per CPU, worker
ranks; :func:`acme.backends.slurm_site.plan_job`), writes a pool folder (a temporary
``.acme-slurm-pool-*`` folder in the current directory, which the compute nodes have
to see) and submits::

    srun python -m acme.slurm_job --serve POOLDIR     # n_workers + 1 tasks

then waits up to ``timeout`` seconds until rank 0 reports that the ranks are up
(``POOLDIR/ready.json``). Rank 0 then waits for maps. Each ``compute()`` on the pool
(``ParallelMap`` uses the current pool, or ``backend=pool``) writes the map into a
temporary folder inside ``POOLDIR`` (pickled context and calls, as for a one-run job)
and renames it to ``map_0001/``, ``map_0002/``, ... so rank 0 never sees half a map;
rank 0 runs the maps in order with the MPI scheduler and appends the outcomes to
``map_NNNN/outcomes.bin``, which this process reads as they arrive, exactly as for a
one-run job. Results on disk are written by the worker ranks; in-memory results
travel back in that file. A finished map's folder is removed.

Before each map :meth:`SlurmPool.check` asks ``squeue`` whether the job still RUNS:
a pool whose job was cancelled, hit its time limit or failed is a clear RuntimeError
("no active workers") before anything is sent. :meth:`SlurmPool.close` (what
``acme.cluster_cleanup`` calls) writes ``POOLDIR/stop``, gives rank 0 a few seconds
to end the job, then ``scancel``\\s it by id and checks that ``squeue`` no longer lists
it. A pool left running when this process ends is stopped the same way (atexit); the
job of one whose submitting process died without that (SIGKILL) ends by itself when
``POOLDIR/alive``, touched by this process every 30 s, is older than
``orphan_timeout`` (default 600 s).

Interrupting a map (Ctrl-C) cancels the pool's job: its ranks are busy with the calls
of that map and cannot be recalled one by one. Start a new pool afterwards.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
import weakref
from typing import Any, Iterator, Optional

from acme.slurm_job import (ALIVE_FILE, JOB_FILE, OUTCOMES_FILE, READY_FILE, STOP_FILE,
                            RecordReader, map_folder)
from acme.tasks import CallTask, WorkerContext

from .slurm_site import (END_GRACE_SECONDS, WAITING_STATES, SlurmJobError,
                         SlurmSetupTimeout, SlurmUnavailableError, _cancel, _job_record, _job_state, _live_jobs,
                         _log_tail, _wait_until_gone, job_error,
                         plan_job, slurm_unusable_reason, submit, time_text,
                         write_job_script)
from .slurm_work import (_has_cloudpickle, function_problem, job_python_problem,
                         script_to_load, write_work)

log = logging.getLogger(__name__)

__all__ = ["SlurmPool", "start_allocation"]

#: Seconds between two touches of ``POOLDIR/alive`` by this process.
HEARTBEAT_SECONDS = 30.0
#: Default ``orphan_timeout``: the job ends by itself when ``alive`` is this old.
ORPHAN_SECONDS = 600.0
#: Seconds ``close()`` lets rank 0 end the job after the stop file, before scancel.
STOP_GRACE_SECONDS = 5.0
#: Seconds a map waits while ``squeue`` fails before it gives up (and cancels the job).
SQUEUE_PATIENCE = 120.0
_open_pools: "weakref.WeakSet[SlurmPool]" = weakref.WeakSet()


@atexit.register
def _close_pools_at_exit() -> None:
    """Stop the pools still running when this process ends (stop file, then scancel),
    before the job cancellation of :mod:`acme.backends.slurm_site` (registered earlier,
    so it runs later) catches anything left."""
    for pool in list(_open_pools):
        if not pool.closed:
            log.warning("stopping the SLURM worker pool (job %s): this process ends "
                        "(acme.cluster_cleanup() stops it earlier)", pool.job_id)
            pool.close()


class SlurmPool:
    """A running SLURM job whose MPI ranks run the maps sent to it.

    Made by :func:`acme.slurm_cluster_setup`; stopped by :func:`acme.cluster_cleanup`.

    Attributes
    ----------
    backend_name : str
        ``"slurm"``: the backend that runs maps on this pool.
    job_id : str
        The SLURM job id.
    n_workers : int
        Worker ranks (the job has one more: rank 0 schedules).
    partition : str
    cpus_per_worker : int
        CPUs of each rank (``--cpus-per-task``).
    mem_mb : float or None
        Memory per CPU the job asked for, in MB.
    mem_per_worker_mb : float or None
        Memory per rank, in MB.
    folder : str
        The pool folder (job script, SLURM output log, the maps being run).
    log_path : str
        The job's SLURM output file.
    closed : bool
        True after :meth:`close`.
    """

    backend_name = "slurm"

    def __init__(self, job_id: str, folder: str, plan: dict, main_script: Optional[str],
                 temporary: bool = True, orphan_seconds: Optional[float] = ORPHAN_SECONDS,
                 log_path: Optional[str] = None):
        self.job_id = job_id
        self.folder = folder
        self.partition = plan["partition"]
        self.mem_mb = plan["mem_mb"]
        self.cpus_per_worker = plan.get("cpus_per_task", 1)
        self.mem_per_worker_mb = self.mem_mb * self.cpus_per_worker if self.mem_mb \
            else None
        self.n_workers = plan["n_workers"]
        self.ranks = plan["ntasks"]
        self.time_limit = plan["time"]
        self.main_script = main_script
        self.log_path = log_path or os.path.join(folder, f"slurm-{job_id}.out")
        self.closed = False
        self.maps_sent = 0
        self.host: Optional[str] = None
        self._temporary = temporary
        self._lock = threading.Lock()
        self._stop_beating = threading.Event()
        self._heartbeat: Optional[threading.Thread] = None
        # touch POOLDIR/alive often enough that rank 0 never takes us for dead
        self._beat_seconds = min(HEARTBEAT_SECONDS, orphan_seconds / 4) \
            if orphan_seconds else None
        #: seconds a question on the terminal waits for an answer (None: forever)
        self.answer_wait: Optional[float] = None

    # ------------------------------------------------------------ state
    def check(self) -> None:
        """Raise a clear RuntimeError unless the pool's job is RUNNING (the pool was
        stopped, or its job was cancelled, hit its time limit or failed)."""
        if self.closed:
            raise RuntimeError(f"this SLURM worker pool (job {self.job_id}) was stopped "
                               "(cluster_cleanup); start a new one with "
                               "acme.slurm_cluster_setup()")
        try:
            state, reason = _job_state(self.job_id)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot ask SLURM whether the worker pool's job "
                               f"{self.job_id} still runs: {exc}") from exc
        if state == "RUNNING":
            return
        if state is None:
            _live_jobs.discard(self.job_id)
            record = _job_record(self.job_id)
            what = (f"has ended (JobState={record.get('JobState', 'unknown')}, "
                    f"ExitCode={record.get('ExitCode', '?')})" if record else
                    "is no longer known to SLURM")
        else:
            what = f"is {state}" + (f" ({reason})" if reason and reason != "None" else "")
        raise RuntimeError(
            f"the SLURM worker pool has no active workers: its job {self.job_id} {what}, "
            f"not RUNNING (cancelled, past its time limit, or failed?); SLURM output "
            f"log: {self.log_path}. Stop it with acme.cluster_cleanup() and start a new "
            "one with acme.slurm_cluster_setup().")

    def _wait_ready(self, timeout: float, interactive: bool) -> None:
        """Wait until rank 0 reports the ranks up; late: ask on a terminal, or give up."""
        ready = os.path.join(self.folder, READY_FILE)
        submitted = time.monotonic()
        deadline = submitted + timeout
        delay = 0.05
        while not os.path.exists(ready):
            state, reason = _job_state(self.job_id)
            if state is None:
                _live_jobs.discard(self.job_id)
                record = _job_record(self.job_id)
                tail = _log_tail(self.log_path)
                raise SlurmJobError(
                    f"SLURM job {self.job_id} (the worker pool) ended before its ranks "
                    f"came up (JobState={record.get('JobState', 'UNKNOWN')}, ExitCode="
                    f"{record.get('ExitCode', '?')}); SLURM output log: {self.log_path}"
                    + (f"\nLast lines of the log:\n{tail}" if tail else ""),
                    self.job_id, record.get("JobState", "UNKNOWN"), self.log_path,
                    exit_code=record.get("ExitCode", "?"))
            now = time.monotonic()
            if now > deadline:
                self._late(state, reason, now - submitted, timeout, interactive)
                deadline = time.monotonic() + timeout
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        try:
            with open(ready, encoding="utf-8") as fh:
                info = json.load(fh)
        except (OSError, ValueError):
            info = {}
        self.host = info.get("host")
        log.info("SLURM worker pool is up: job %s, %d worker rank(s) + 1 on %s (%.1f s "
                 "after submission)", self.job_id, self.n_workers, self.host or "?",
                 time.monotonic() - submitted)

    def _late(self, state: str, reason: str, waited: float, timeout: float,
              interactive: bool) -> None:
        """The ranks are not up after ``timeout``: on a terminal ask whether to keep
        waiting; otherwise (or on "give up") cancel the job and raise."""
        what = f"SLURM job {self.job_id} (the worker pool) is still {state}" + (
            f" ({reason})" if reason and reason != "None" else "")
        if state not in WAITING_STATES:
            what += " but its ranks have not reported that they are up"
        on_terminal = interactive and sys.stdin is not None and sys.stdin.isatty()
        if on_terminal:
            answer = _ask(f"{what} after {waited:.0f} s. Keep waiting {timeout:g} s more "
                          "[w], or give up [g]? ", self.answer_wait)
            if answer is None:  # esi-acme's interactive_wait: no answer, no workers
                log.warning("%s after %.0f s: no answer within interactive_wait=%g s; "
                            "giving up", what, waited, self.answer_wait)
            elif answer in ("", "w", "wait"):
                log.info("%s after %.0f s: waiting %g s more, as asked", what, waited,
                         timeout)
                return
            else:
                log.warning("%s after %.0f s: giving up, as asked", what, waited)
        else:
            log.warning("%s after %.0f s (timeout=%g s, %s): cancelling it", what, waited,
                        timeout, "not on a terminal" if interactive else "interactive=False")
        self._cancel()
        raise SlurmSetupTimeout(
            f"{what} after {waited:.0f} s (timeout={timeout:g} s): it was cancelled. "
            "Raise the timeout, ask for fewer workers, or choose another partition "
            f"(sinfo shows them). SLURM output log: {self.log_path}",
            self.job_id, state, self.log_path)

    # ------------------------------------------------------------ heartbeat
    def _start_heartbeat(self) -> None:
        alive = os.path.join(self.folder, ALIVE_FILE)
        if not self._beat_seconds:
            return

        def beat() -> None:
            while True:
                try:
                    os.utime(alive)
                except OSError:
                    pass
                if self._stop_beating.wait(self._beat_seconds):
                    return

        self._heartbeat = threading.Thread(target=beat, daemon=True,
                                           name=f"acme-slurm-pool-{self.job_id}")
        self._heartbeat.start()

    # ------------------------------------------------------------ maps
    def function_problem(self, func) -> Optional[str]:
        """Why the pool's ranks could not load ``func`` (None: they can)."""
        problem = function_problem(func)
        if problem:
            return problem
        path = script_to_load(func)
        if path is None or path == self.main_script:
            return None
        return (f"the function {getattr(func, '__name__', func)!r} is defined in {path}, "
                "which the pool's ranks did not load "
                + (f"(they loaded {self.main_script})" if self.main_script else
                   "(the pool was started from elsewhere)")
                + "; install cloudpickle (pip install cloudpickle) to send it by value, "
                "move it into a module, or start the pool from that script")

    def _send(self, context: WorkerContext, tasks: list, timeout: Optional[float],
              n_workers: int) -> tuple:
        """Write the map into a temporary folder, then rename it to the next
        ``map_NNNN`` (rank 0 picks it up); returns ``(number, folder)``."""
        work = tempfile.mkdtemp(prefix=".map-", dir=self.folder)
        try:
            main_script = write_work(work, context, tasks)
            if main_script is not None and main_script != self.main_script:
                name = getattr(context.func, "__name__", context.func)
                raise TypeError(
                    f"The function {name!r} is defined in {main_script}, which the ranks "
                    f"of the SLURM worker pool (job {self.job_id}) did not load "
                    + (f"(they loaded {self.main_script})" if self.main_script else
                       "(the pool was started from elsewhere)")
                    + ". Install cloudpickle (pip install cloudpickle) to send it by "
                    "value, move it into a module, or start the pool from that script.")
            with open(os.path.join(work, JOB_FILE), "w", encoding="utf-8") as fh:
                json.dump({"timeout": timeout, "n_workers": n_workers,
                           "calls": len(tasks)}, fh)
            with self._lock:
                number = self.maps_sent + 1
                folder = map_folder(self.folder, number)
                os.rename(work, folder)
                self.maps_sent = number
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return number, folder

    def run_map(self, context: WorkerContext, tasks: list[CallTask],
                timeout: Optional[float], backend: Any) -> Iterator[tuple]:
        """Send one map to the running job and yield its outcomes as they arrive
        (the ``run`` of a SlurmBackend made with ``pool=``)."""
        n_workers = max(1, min(backend.n_workers, self.n_workers, len(tasks)))
        number, folder = self._send(context, tasks, timeout, n_workers)
        log.info("map %d sent to the SLURM worker pool (job %s): %d calls on %d worker "
                 "rank(s); map folder %s", number, self.job_id, len(tasks), n_workers,
                 folder)
        backend.stats = {"job_id": self.job_id, "partition": self.partition,
                         "ranks": self.ranks, "mem_per_cpu_mb": self.mem_mb,
                         "job_dir": folder, "pool_map": number}
        reader = RecordReader(os.path.join(folder, OUTCOMES_FILE))
        missing = {t[0] for t in tasks}
        found: dict = {}
        poll = float(getattr(backend, "poll_interval", 0.5))

        def drain():
            for kind, payload in reader.read_new():
                if kind == "batch":  # (indices, values, durations, failed outcomes)
                    missing.difference_update(payload[0])
                    missing.difference_update(o.index for o in payload[3])
                    yield payload
                elif kind in ("done", "error", "refused"):
                    found[kind] = payload

        state = "RUNNING"
        try:
            delay, next_check = 0.002, time.monotonic() + poll
            unanswered_since: Optional[float] = None
            while not found:
                before = len(missing)
                yield from drain()
                if found:
                    break
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + poll
                    try:
                        state, _ = _job_state(self.job_id)
                        unanswered_since = None
                    except RuntimeError as exc:  # slurmctld busy: the outcomes tell
                        if unanswered_since is None:
                            unanswered_since = now
                            log.warning("%s; still waiting for map %d", exc, number)
                        elif now - unanswered_since > SQUEUE_PATIENCE:
                            raise
                        continue
                    if state not in ("RUNNING", "SUSPENDED"):
                        yield from drain()  # whatever it wrote last
                        break
                delay = 0.002 if len(missing) < before else min(delay * 2, poll)
                time.sleep(delay)
        except BaseException:  # Ctrl-C, an error here, or the run abandoned
            if not self.closed:
                log.warning("cancelling SLURM job %s (the worker pool): map %d on it was "
                            "interrupted, and its ranks cannot be recalled one by one",
                            self.job_id, number)
                self._cancel()
            raise

        if "done" in found and not missing:
            backend.stats.update(found["done"])
            shutil.rmtree(folder, ignore_errors=True)
            return
        n_calls = len(tasks)
        if "refused" in found:  # the function could not be loaded; the pool goes on
            shutil.rmtree(folder, ignore_errors=True)
            raise SlurmJobError(
                f"map {number} could not start on the SLURM worker pool (job "
                f"{self.job_id}; the pool is still running and takes the next map). "
                f"Its rank 0 reported:\n{found['refused'].rstrip()}",
                self.job_id, "RUNNING", self.log_path, sorted(missing))
        # The job ended (or its rank 0 failed) before every call had a result.
        if state is not None and not _wait_until_gone(self.job_id, END_GRACE_SECONDS):
            _cancel(self.job_id)
            _wait_until_gone(self.job_id, END_GRACE_SECONDS)
        _live_jobs.discard(self.job_id)
        yield from drain()
        record = _job_record(self.job_id)
        error = job_error(self.job_id, record.get("JobState", "UNKNOWN"),
                          record.get("ExitCode", "?"), self.log_path, sorted(missing),
                          n_calls, found.get("error"),
                          getattr(context.sink, "layout", None) is not None)
        error.args = (f"{error.args[0]}\nThat job was the SLURM worker pool: it is gone; "
                      "stop it with acme.cluster_cleanup() and start a new one. Map "
                      f"folder kept for inspection: {folder}",)
        raise error

    # ------------------------------------------------------------ stopping
    def _cancel(self) -> bool:
        """scancel the job and wait until squeue no longer lists it."""
        self._stop_beating.set()
        _cancel(self.job_id)
        gone = _wait_until_gone(self.job_id, END_GRACE_SECONDS)
        if gone:
            _live_jobs.discard(self.job_id)
        else:
            log.error("SLURM job %s (worker pool) is still listed by squeue %.0f s after "
                      "scancel", self.job_id, END_GRACE_SECONDS)
        return gone

    def close(self) -> None:
        """Stop the pool: ask rank 0 to end the job (the ``stop`` file), give it
        a few seconds, then ``scancel`` it; check that squeue no longer lists it."""
        if self.closed:
            return
        self.closed = True
        self._stop_beating.set()
        try:
            with open(os.path.join(self.folder, STOP_FILE), "w"):
                pass
        except OSError as exc:
            log.debug("could not write the stop file of the SLURM worker pool: %s", exc)
        if _wait_until_gone(self.job_id, STOP_GRACE_SECONDS):
            _live_jobs.discard(self.job_id)
            how, gone = "ended", True
        else:
            how, gone = "cancelled (scancel)", self._cancel()
        if gone:
            log.info("SLURM worker pool stopped: job %s %s after %d map(s)", self.job_id,
                     how, self.maps_sent)
        leftovers = [n for n in os.listdir(self.folder) if n.startswith("map_")] \
            if os.path.isdir(self.folder) else []
        if self._temporary and gone and how == "ended" and not leftovers:
            shutil.rmtree(self.folder, ignore_errors=True)
        elif os.path.isdir(self.folder):
            log.info("the SLURM worker pool folder %s is kept (job log%s)", self.folder,
                     ", maps that did not finish" if leftovers else "")

    def __repr__(self) -> str:
        state = "stopped" if self.closed else "running"
        return (f"<acme SlurmPool: job {self.job_id} {state}, {self.n_workers} worker "
                f"rank(s), partition {self.partition}>")


def _ask(prompt: str, seconds: Optional[float]) -> Optional[str]:
    """Ask on the terminal; the answer in lower case, "g" at end of input, None when
    nothing was typed within ``seconds`` (None: wait for ever)."""
    if seconds is None:
        try:
            return input(prompt).strip().lower()
        except EOFError:
            return "g"
    import select
    sys.stdout.write(prompt)
    sys.stdout.flush()
    ready, _, _ = select.select([sys.stdin], [], [], seconds)
    if not ready:
        sys.stdout.write("\n")
        return None
    line = sys.stdin.readline()
    return line.strip().lower() if line else "g"


def _main_script_to_load() -> Optional[str]:
    """Without cloudpickle, functions of the ``__main__`` script travel by reference:
    the pool's ranks load that script (without its main block) when they start."""
    if _has_cloudpickle():
        return None
    from acme.mpi_run import has_main_guard
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if path and os.path.isfile(path) and has_main_guard(path):
        return os.path.abspath(path)
    return None


def _submit_pool(folder: str, plan: dict, main_script: Optional[str],
                 orphan: Optional[float], job_name: str, sbatch_args: list,
                 temporary: bool) -> str:
    """Write the pool folder's job files and submit it; the job id."""
    with open(os.path.join(folder, JOB_FILE), "w", encoding="utf-8") as fh:
        json.dump({"mode": "serve", "n_workers": plan["n_workers"],
                   "main_script": main_script, "orphan_seconds": orphan,
                   "python": sys.executable, **plan}, fh, indent=1)
    with open(os.path.join(folder, ALIVE_FILE), "w"):
        pass
    comment = [f"Written by acme.slurm_cluster_setup: a worker pool of {plan['n_workers']} "
               "worker rank(s) + 1 scheduling rank,",
               "running the maps that appear as map_0001/, map_0002/, ... until the "
               "file 'stop' appears."]
    script = write_job_script(folder, plan, job_name, comment, ["--serve", folder])
    return submit(script, ["--no-requeue", *sbatch_args], keep_script=not temporary)


def start_allocation(partition: str = "auto", n_workers: Optional[int] = None,
                     mem_per_worker: str = "auto", timeout: float = 60,
                     interactive: bool = True, *, cpus_per_worker: int = 1,
                     interactive_wait: Optional[float] = None,
                     only_partitions: Optional[set] = None,
                     excluded_partitions: Optional[set] = None,
                     mem_cushion: Optional[float] = None, **kwargs: Any) -> SlurmPool:
    """Submit one MPI job that serves maps, wait until its ranks are up, return it.

    Parameters
    ----------
    partition : str
        A partition, or "auto": the one that fits ``mem_per_worker`` with the least
        waste (without it, the one that fits a worker's base need).
    n_workers : int or None
        Worker ranks (the job has one more); None: one per idle CPU of the partition,
        at most 64.
    mem_per_worker : str
        Memory per worker such as ``"4GB"``; "auto": the partition's default.
    timeout : float
        Seconds to wait for the job to start and its ranks to come up.
    interactive : bool
        When the job is still pending after ``timeout``: on a terminal, ask whether to
        keep waiting; otherwise cancel it and raise :class:`SlurmSetupTimeout`.
    cpus_per_worker : int
        CPUs of each rank (``--cpus-per-task``).
    interactive_wait : float or None
        Seconds that question waits for an answer before giving up (None: for ever).
    only_partitions, excluded_partitions : set of str or None
        The partitions acme may use (None: all), and those it must not.
    mem_cushion : float or None
        MB kept clear of the partition's memory limit per worker (None: none, and a
        request above the limit is passed on with a warning instead of capped).
    **kwargs
        ``time_limit`` (minutes or a SLURM time; default ``$ACME_SLURM_TIME_LIMIT``),
        ``sbatch_args`` (list; default ``$ACME_SLURM_SBATCH_ARGS``), ``job_extra``
        (esi-acme's name: more sbatch options), ``job_name``, ``folder`` (the pool
        folder; default a new ``.acme-slurm-pool-*`` in the current directory),
        ``orphan_timeout`` (seconds; see the module's notes; None: never).

    Raises
    ------
    SlurmUnavailableError
        SLURM cannot take jobs from here (an OSError, as esi-acme's IOError).
    """
    from acme.validation import (check_auto_or_int, check_bool, check_positive_number,
                                 parse_memory)
    if not isinstance(partition, str) or not partition.strip():
        raise TypeError(f"`partition` has to be 'auto' or the name of a SLURM partition, "
                        f"not {partition!r}")
    workers = check_auto_or_int("auto" if n_workers is None else n_workers, "n_workers")
    mem = parse_memory(mem_per_worker, "mem_per_worker")
    timeout = check_positive_number(timeout, "timeout")
    check_bool(interactive, "interactive")
    time_limit = time_text(kwargs.pop("time_limit", os.environ.get("ACME_SLURM_TIME_LIMIT")))
    sbatch_args = kwargs.pop("sbatch_args", None)
    if sbatch_args is None:
        sbatch_args = shlex.split(os.environ.get("ACME_SLURM_SBATCH_ARGS", ""))
    sbatch_args = [str(a) for a in [*sbatch_args, *(kwargs.pop("job_extra", None) or [])]]
    job_name = kwargs.pop("job_name", None) or "acme_pool"
    folder = kwargs.pop("folder", None)
    orphan = kwargs.pop("orphan_timeout", ORPHAN_SECONDS)
    orphan = None if orphan is None else check_positive_number(orphan, "orphan_timeout")
    if kwargs:
        log.warning("slurm_cluster_setup: ignoring unknown option(s) %s",
                    ", ".join(sorted(kwargs)))
    unusable = slurm_unusable_reason(refresh=True)
    if unusable:
        raise SlurmUnavailableError(f"slurm_cluster_setup cannot start a worker pool: "
                                    f"SLURM is not usable here: {unusable}")
    problem = job_python_problem()[0]  # the ranks' Python: mpi4py, acme
    if problem:
        raise RuntimeError(f"slurm_cluster_setup cannot start a worker pool: {problem}")

    plan = plan_job(partition, None if mem == "auto" else mem,
                    None if workers == "auto" else workers, time_limit, None,
                    cpus_per_worker=cpus_per_worker, mem_cushion_mb=mem_cushion,
                    only=only_partitions, excluded=excluded_partitions)
    folder, temporary = _pool_folder(folder)
    main_script = _main_script_to_load()
    try:
        job_id = _submit_pool(folder, plan, main_script, orphan, job_name, sbatch_args,
                              temporary)
    except BaseException:  # no job exists: leave nothing behind
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    _live_jobs.add(job_id)
    log.info("submitted SLURM job %s: a worker pool of %d worker rank(s) + 1, partition "
             "%s%s%s%s; pool folder %s", job_id, plan["n_workers"], plan["partition"],
             f", {plan['cpus_per_task']} CPUs per rank" if plan["cpus_per_task"] > 1
             else "", f", {plan['mem_mb']:.0f} MB per CPU" if plan["mem_mb"] else "",
             f", time limit {plan['time']}" if plan["time"] else "", folder)
    pool = SlurmPool(job_id, folder, plan, main_script, temporary, orphan,
                     _user_log_path(job_id, sbatch_args))
    pool.answer_wait = interactive_wait
    pool._start_heartbeat()
    try:
        pool._wait_ready(timeout, interactive)
    except BaseException:
        if job_id in _live_jobs:
            log.warning("cancelling SLURM job %s (the worker pool did not come up)", job_id)
            pool._cancel()
        pool.closed = True
        pool._stop_beating.set()
        raise
    _open_pools.add(pool)
    return pool


def _pool_folder(folder: Optional[str]) -> tuple:
    """``(folder, temporary)``: the folder asked for, or a new temporary one."""
    if folder is not None:
        folder = os.path.abspath(folder)
        os.makedirs(folder, exist_ok=True)
        return folder, False
    try:
        return tempfile.mkdtemp(prefix=".acme-slurm-pool-", dir=os.getcwd()), True
    except OSError:
        folder = tempfile.mkdtemp(prefix=".acme-slurm-pool-")
        log.warning("the current folder is not writable: the SLURM worker pool folder is "
                    "%s, which the compute nodes have to see", folder)
        return folder, True


def _user_log_path(job_id: str, sbatch_args: list) -> Optional[str]:
    """The job's output file when the sbatch options chose it (``--output=``/``-o``):
    as SLURM resolved it (``scontrol show job``: StdOut)."""
    if not any(a.startswith(("--output", "-o")) for a in sbatch_args):
        return None
    return _job_record(job_id).get("StdOut") or None
