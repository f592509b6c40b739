"""Submission from a login node: every call of a ``compute()`` runs in one SLURM job.

``run()`` writes the work into a job folder (``<output_dir>/<f>_slurm/`` when results go
to disk; a temporary ``.acme-slurm-*`` folder in the current directory for in-memory
results, removed afterwards unless the job failed), writes a job script there and
submits ONE MPI job with ``sbatch``::

    srun python -m acme.slurm_job JOBDIR        # n_workers + 1 tasks

Inside the job (:mod:`acme.slurm_job`) rank 0 runs the calls on ranks 1..N with the MPI
scheduler and appends every outcome to ``JOBDIR/outcomes.bin`` as it arrives. This
process polls ``squeue -h -j ID`` (every ``poll_interval`` s, sleeping in between),
yields the outcomes as they appear (so the run shows progress and in-memory results
come home), and at the end reads ``scontrol show job ID`` for the job's state and exit
code. Workers write result files themselves; the runner then builds the container.

Parameters (the ParallelMap ones, plus a few of our own)
--------------------------------------------------------
partition : "auto" or a name
    "auto": one call runs here first (a dry run, at most ``probe_seconds``) and the
    partition whose maximum memory per CPU fits its peak memory with the least waste is
    chosen, from ``sinfo`` and ``scontrol show partition``. SLURM itself does not move
    a job with a big ``--mem-per-cpu`` to a partition with more memory per CPU (it gives
    it more CPUs instead), so acme picks the partition.
mem_per_worker : "auto" or a size
    "auto": the partition's DefMemPerCPU, or more if the dry run measured more.
n_workers : "auto" or an int
    "auto": ``min(n_calls, CPUs - 1, MAX_AUTO_WORKERS)``, counting the partition's CPUs
    that are idle now (all of its CPUs when fewer than 2 are), and no more workers than
    its memory holds at ``mem_per_worker`` (rank 0, the scheduler, takes one CPU).
    More tasks than the partition has CPUs are submitted with ``--overcommit``.
setup_timeout, setup_interactive :
    How long the job may stay PENDING. Then, on a terminal (and with
    ``setup_interactive``), a question: keep waiting, run locally instead, or give
    up; otherwise the job is cancelled and :class:`SlurmSetupTimeout` names it.
stop_client : True, False or "auto"
    True: the job is cancelled (``scancel``) as soon as every result is in. "auto" and
    False: the job ends by itself when its work is done (it does right away).
time_limit : minutes (int) or a SLURM time string ("1:30:00"), optional
    ``sbatch --time``; default ``$ACME_SLURM_TIME_LIMIT``, else the partition's default.
sbatch_args : list of str, optional
    More ``sbatch`` options; default ``shlex.split($ACME_SLURM_SBATCH_ARGS)``.

ParallelMap does not pass ``time_limit`` or ``sbatch_args``: set the environment
variables, or register a configured backend::

    from acme.backends import register_backend
    from acme.backends.slurm import SlurmBackend
    register_backend("slurm-2h", SlurmBackend.configured(time_limit="2:00:00"))
    ParallelMap(f, x, backend="slurm-2h")

Before anything is measured, written or submitted, :meth:`SlurmBackend.check_can_run`
makes sure the job can run: SLURM answers, this Python (the one the ranks run) imports
mpi4py and acme, and the ranks can load the function; else RuntimeError or TypeError
(``backend="auto"`` then runs locally and says why). A failure before a job exists
leaves no job folder (only a refused job's ``job.sh`` stays in an output folder).

Faults: a job that is cancelled, hits its time limit or fails raises
:class:`SlurmJobError` naming the job id, its state and the SLURM output log; results
already written stay on disk. Ctrl-C here cancels the job and waits until it is gone.

With ``pool=`` (a :class:`~acme.backends.slurm_pool.SlurmPool` from
:func:`acme.slurm_cluster_setup`) nothing is submitted: the calls go to the running
allocation (see :mod:`acme.backends.slurm_pool`).

The SLURM commands, partitions and job planning live in :mod:`acme.backends.slurm_site`,
what travels to the ranks (the work files, whether the ranks can load the function)
in :mod:`acme.backends.slurm_work`; their public names are importable from here too.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator, Optional, Union

from acme.slurm_job import (CONTEXT_FILE, JOB_FILE, OUTCOMES_FILE, TASKS_FILE,
                            RecordReader)
from acme.tasks import CallOutcome, CallTask, WorkerContext, dumps

from .base import Backend
from .slurm_site import (  # noqa: F401 - names of this module before the split
    ACTIVE_STATES, END_GRACE_SECONDS, MAX_AUTO_WORKERS, MEMORY_MARGIN, WAITING_STATES,
    WORKER_BASE_MB, PartitionInfo, SlurmJobError, SlurmSetupTimeout,
    SlurmSubmitError, SlurmUnavailableError, _cancel, _job_record, _job_state, _key_values, _live_jobs,
    _log_tail, _parse_mb, _parse_minutes, _python_path, _sbatch_quote, _slurm,
    _wait_until_gone, choose_partition, in_slurm_allocation, job_error,
    plan_job, read_partitions, slurm_unusable_reason, slurm_usable, submit, time_text,
    write_job_script)
from .slurm_work import (  # noqa: F401 - names of this module before the split
    _has_cloudpickle, function_problem, job_python_problem, main_script_problem,
    script_to_load, write_work)

log = logging.getLogger(__name__)

__all__ = ["SlurmBackend", "SlurmJobError", "SlurmSetupTimeout", "SlurmSubmitError",
           "SlurmUnavailableError",
           "PartitionInfo", "read_partitions", "choose_partition", "slurm_usable",
           "in_slurm_allocation", "start_allocation"]


# --------------------------------------------------------------- memory dry run
def _status_kb(pid: Union[int, str], field: str) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _probe_child(conn, context: WorkerContext, task: CallTask) -> None:
    try:  # count only what the call adds: reset the peak RSS ("high water mark")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    before = _status_kb("self", "VmRSS") or 0
    conn.send(("started", before))
    outcome = context.run(task)
    peak = _status_kb("self", "VmHWM") or 0
    conn.send(("done", peak, None if outcome.ok else outcome.failure.summary))
    conn.close()


@dataclass
class MemoryProbe:
    index: int
    extra_mb: float       # what the call added to the process's peak memory
    seconds: float
    finished: bool        # False: stopped after probe_seconds (extra_mb is a lower bound)
    error: Optional[str]


def probe_memory(context: WorkerContext, tasks: list, seconds: float) -> MemoryProbe:
    """Run one random call here in a child process for at most ``seconds`` and measure
    the memory it adds (peak RSS, from /proc); its value is discarded."""
    from acme.sinks import InMemorySink
    task = random.choice(tasks)
    probe = WorkerContext.__new__(WorkerContext)
    probe.__dict__.update(context.__dict__)
    probe.sink = InMemorySink(getattr(context.sink, "spec", None))  # nothing on disk
    mp = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    parent, child = mp.Pipe(duplex=False)
    process = mp.Process(target=_probe_child, args=(child, probe, task),
                         name="acme-slurm-probe")
    start = time.monotonic()
    process.start()
    child.close()
    before_kb, peak_kb, error, finished = 0, 0, None, False
    try:
        if parent.poll(max(seconds, 1.0)):
            before_kb = parent.recv()[1]
        remaining = max(0.0, start + seconds - time.monotonic())
        if parent.poll(remaining):
            _, peak_kb, error = parent.recv()
            finished = True
        else:
            peak_kb = _status_kb(process.pid, "VmHWM") or 0
    except EOFError:
        process.join(5)
        error = f"the dry-run process died (exit code {process.exitcode})"
    finally:
        if process.is_alive():
            process.kill()
        process.join(5)
    extra = max(0.0, (peak_kb - before_kb) / 1024) if peak_kb else 0.0
    return MemoryProbe(task[0], extra, time.monotonic() - start, finished, error)


# -------------------------------------------------------------------- backend
class SlurmBackend(Backend):
    """Every call of a ``compute()`` runs in one MPI job submitted with ``sbatch``;
    with ``pool=`` (a running :class:`~acme.backends.slurm_pool.SlurmPool`) the calls
    run on that job's ranks instead and nothing is submitted."""

    name = "slurm"
    #: Options set by :meth:`configured` subclasses.
    default_options: dict = {}

    def __init__(self, n_workers: Optional[int] = None, pool=None, **options):
        options = {**self.default_options, **options}
        self.requested_workers = n_workers
        super().__init__(n_workers=n_workers or 1, **options)
        self.partition = options.get("partition", "auto") or "auto"
        mem = options.get("mem_per_worker", "auto")
        from acme.validation import parse_memory
        self.mem_per_worker_mb = None if mem in (None, "auto") else parse_memory(mem)
        self.setup_timeout = float(options.get("setup_timeout", 60) or 60)
        self.setup_interactive = bool(options.get("setup_interactive", True))
        self.stop_client = options.get("stop_client", "auto")
        time_limit = options.get("time_limit", os.environ.get("ACME_SLURM_TIME_LIMIT"))
        self.time_limit = self._time_text(time_limit)
        sbatch_args = options.get("sbatch_args")
        if sbatch_args is None:
            sbatch_args = shlex.split(os.environ.get("ACME_SLURM_SBATCH_ARGS", ""))
        self.sbatch_args = [str(a) for a in sbatch_args]
        self.poll_interval = float(options.get("poll_interval", 0.5))
        self.probe_seconds = float(options.get("probe_seconds", 30.0))
        self.job_name = options.get("job_name")
        self.job_id: Optional[str] = None
        self.job_dir: Optional[str] = None
        self._chosen: Optional[str] = None
        self._on_disk = True
        #: the running SLURM worker pool the calls go to (None: submit a job per run)
        self.pool = pool
        if pool is not None:
            self.n_workers = max(1, min(n_workers or pool.n_workers, pool.n_workers))
            self._chosen = pool.partition
            self._pool_options(n_workers)

    @classmethod
    def configured(cls, **options) -> type:
        """A subclass with other defaults, e.g. ``SlurmBackend.configured(time_limit=90)``,
        to register under a name of its own."""
        return type(f"{cls.__name__}Configured", (cls,),
                    {"default_options": {**cls.default_options, **options}})

    _time_text = staticmethod(time_text)

    @classmethod
    def is_available(cls) -> bool:
        return slurm_usable()

    @classmethod
    def check_can_run(cls, func, pool=None) -> None:
        """Raise now, before anything is written, measured or submitted, when the
        calls of ``func`` cannot run: RuntimeError when SLURM or the job's Python
        cannot (mpi4py missing, ...), TypeError when the job cannot load ``func``."""
        if pool is not None:
            pool.check()  # its job still RUNS
            problem = pool.function_problem(func)
            if problem:
                raise TypeError(f"the SLURM worker pool (job {pool.job_id}) cannot run "
                                f"this map: {problem}")
            return
        problem = slurm_problem()
        if problem:
            raise RuntimeError(f"backend='slurm' cannot run here: {problem}")
        problem = function_problem(func)
        if problem:
            raise TypeError(f"backend='slurm' cannot run this map: {problem}")

    def _pool_options(self, n_workers: Optional[int]) -> None:
        """Say which of this map's settings a running pool cannot follow."""
        pool = self.pool
        if n_workers and n_workers > pool.n_workers:
            log.warning("n_workers=%d, but the SLURM worker pool (job %s) has %d worker "
                        "rank(s): the map runs on those", n_workers, pool.job_id,
                        pool.n_workers)
        if self.partition not in ("auto", pool.partition):
            log.warning("partition=%r is ignored: the map runs on the SLURM worker pool "
                        "(job %s) in partition %r", self.partition, pool.job_id,
                        pool.partition)
        pool_mem = getattr(pool, "mem_per_worker_mb", pool.mem_mb)
        if self.mem_per_worker_mb and pool_mem and self.mem_per_worker_mb > pool_mem:
            log.warning("mem_per_worker=%.0f MB is more than the %.0f MB per worker of "
                        "the SLURM worker pool (job %s) the map runs on",
                        self.mem_per_worker_mb, pool_mem, pool.job_id)

    def describe(self) -> str:
        if self.pool is not None:
            return (f"slurm backend on the worker pool of job {self.pool.job_id} "
                    f"(partition {self.pool.partition}, {self.n_workers} worker rank(s))")
        workers = self.requested_workers or "auto"
        partition = self._chosen or self.partition
        return f"slurm backend (partition {partition}, {workers} worker(s), one sbatch job)"

    def close(self) -> None:
        """Cancel a job this backend started that is still running (an interrupted run)."""
        if self.job_id and self.job_id in _live_jobs:
            log.warning("cancelling SLURM job %s", self.job_id)
            _cancel(self.job_id)
            _live_jobs.discard(self.job_id)

    # ------------------------------------------------------------ planning
    def _plan(self, context: WorkerContext, tasks: list) -> dict:
        plan = plan_job(self.partition, self.mem_per_worker_mb, self.requested_workers,
                        self.time_limit, len(tasks),
                        measure=lambda: self._measure(context, tasks))
        self._chosen = plan["partition"]
        self.n_workers = plan["n_workers"]
        return plan

    def _measure(self, context: WorkerContext, tasks: list) -> float:
        probe = probe_memory(context, tasks, self.probe_seconds)
        payload_mb = len(dumps(context, "The function or its constant arguments",
                               by_value=_has_cloudpickle())) / 2 ** 20
        need = WORKER_BASE_MB + 2 * payload_mb + MEMORY_MARGIN * probe.extra_mb
        if probe.error:
            log.warning("the dry run of call %d failed (%s); its memory is not known, "
                        "assuming %.0f MB per worker", probe.index, probe.error, need)
        elif not probe.finished:
            log.info("dry run of call %d: still running after %.1f s, had used at least "
                     "%.1f MB; assuming %.0f MB per worker", probe.index, probe.seconds,
                     probe.extra_mb, need)
        else:
            log.info("dry run of call %d: %.2f s, %.1f MB used by the call; a worker needs "
                     "about %.0f MB", probe.index, probe.seconds, probe.extra_mb, need)
        return need

    # ------------------------------------------------------------ job files
    def _job_folder(self, context: WorkerContext) -> tuple:
        """(folder, temporary) — in the output folder, or a temporary one."""
        from acme.layout import file_stem
        layout = getattr(context.sink, "layout", None)
        if layout is not None:
            folder = os.path.join(layout.output_dir, f"{layout.stem}_slurm")
            if os.path.exists(folder):
                folder = tempfile.mkdtemp(prefix=f"{layout.stem}_slurm_",
                                          dir=layout.output_dir)
            else:
                os.makedirs(folder)
            return folder, False
        prefix = f".acme-slurm-{file_stem(context.func)}-"
        try:
            folder = tempfile.mkdtemp(prefix=prefix, dir=os.getcwd())
        except OSError:
            folder = tempfile.mkdtemp(prefix=prefix)
            log.warning("the current folder is not writable: the SLURM job folder is %s, "
                        "which the compute nodes have to see", folder)
        return folder, True

    def _write_job(self, folder: str, context: WorkerContext, tasks: list, plan: dict,
                   timeout: Optional[float]) -> str:
        from acme.layout import file_stem
        main_script = write_work(folder, context, tasks)
        job = {"timeout": timeout, "n_workers": plan["n_workers"], "calls": len(tasks),
               "main_script": main_script, "python": sys.executable, **plan}
        with open(os.path.join(folder, JOB_FILE), "w", encoding="utf-8") as fh:
            json.dump(job, fh, indent=1)
        name = self.job_name or f"acme_{file_stem(context.func)}"
        comment = [f"Written by acme's SLURM backend: {len(tasks)} calls of "
                   f"{getattr(context.func, '__qualname__', context.func)!s}",
                   f"on {plan['n_workers']} worker rank(s) + 1 scheduling rank. "
                   "Resubmit with: sbatch job.sh"]
        return write_job_script(folder, plan, name, comment, [folder])

    def _submit(self, script: str, folder: str, temporary: bool = False) -> str:
        return submit(script, self.sbatch_args, keep_script=not temporary)

    def _prepare_job(self, context: WorkerContext, tasks: list, plan: dict,
                     timeout: Optional[float]) -> tuple:
        """Write the job folder and submit it: ``(folder, temporary, job_id)``. When
        anything fails before a job exists, nothing is left behind: a temporary
        folder is removed; in the output folder only the job script stays."""
        folder, temporary = self._job_folder(context)
        self.job_dir = folder
        self._on_disk = not temporary
        try:
            script = self._write_job(folder, context, tasks, plan, timeout)
            job_id = self._submit(script, folder, temporary)
        except BaseException:
            if temporary:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                for name in (CONTEXT_FILE, TASKS_FILE, JOB_FILE):
                    _remove_quietly(os.path.join(folder, name))
                _remove_empty_folder(folder)
            self.job_dir = None
            raise
        self.job_id = job_id
        _live_jobs.add(job_id)
        return folder, temporary, job_id

    # ------------------------------------------------------------ running
    def run(self, context: WorkerContext, tasks: list[CallTask],
            timeout: Optional[float] = None) -> Iterator[CallOutcome]:
        if self.pool is not None:  # a running allocation: no job to submit
            self.pool.check()
            if tasks:
                yield from self.pool.run_map(context, tasks, timeout, self)
            return
        if not tasks:
            return
        plan = self._plan(context, tasks)
        folder, temporary, job_id = self._prepare_job(context, tasks, plan, timeout)
        success = False
        try:
            log_path = os.path.join(folder, f"slurm-{job_id}.out")
            log.info("submitted SLURM job %s: %d calls on %d worker rank(s) + 1, partition "
                     "%s%s%s; job folder %s", job_id, len(tasks), plan["n_workers"],
                     plan["partition"],
                     f", {plan['mem_mb']:.0f} MB per CPU" if plan["mem_mb"] else "",
                     f", time limit {plan['time']}" if plan["time"] else "", folder)
            self.stats = {"job_id": job_id, "partition": plan["partition"],
                          "ranks": plan["ntasks"], "mem_per_cpu_mb": plan["mem_mb"],
                          "job_dir": folder}
            try:
                result = yield from self._follow(job_id, folder, log_path, context, tasks,
                                                 timeout)
            except BaseException:  # Ctrl-C, an error here, or the run abandoned
                if job_id in _live_jobs:
                    log.warning("cancelling SLURM job %s", job_id)
                    _cancel(job_id)
                    if not _wait_until_gone(job_id, END_GRACE_SECONDS):
                        log.error("SLURM job %s is still listed by squeue %.0f s after "
                                  "scancel", job_id, END_GRACE_SECONDS)
                    _live_jobs.discard(job_id)
                raise
            success = result
        finally:
            if success:
                for name in (CONTEXT_FILE, TASKS_FILE, OUTCOMES_FILE):
                    _remove_quietly(os.path.join(folder, name))
                if temporary:
                    shutil.rmtree(folder, ignore_errors=True)
            elif temporary:
                log.warning("the SLURM job folder %s is kept for inspection", folder)

    def _follow(self, job_id: str, folder: str, log_path: str, context: WorkerContext,
                tasks: list, timeout: Optional[float]):
        reader = RecordReader(os.path.join(folder, OUTCOMES_FILE))
        missing = {t[0] for t in tasks}
        n_calls = len(tasks)
        submitted = time.monotonic()
        setup_deadline = submitted + self.setup_timeout
        started_at: Optional[float] = None
        done_stats: Optional[dict] = None
        error_text: Optional[str] = None
        last_report, reported = time.monotonic(), -1
        state = "PENDING"

        def drain():
            nonlocal done_stats, error_text
            for kind, payload in reader.read_new():
                if kind == "batch":  # (indices, values, durations, failed outcomes)
                    missing.difference_update(payload[0])
                    missing.difference_update(o.index for o in payload[3])
                    yield payload
                elif kind == "start":
                    log.debug("SLURM job %s: rank 0 started on %s with %s ranks", job_id,
                              payload.get("host"), payload.get("ranks"))
                elif kind == "done":
                    done_stats = payload
                elif kind == "error":
                    error_text = payload

        while True:
            yield from drain()
            if done_stats is not None or error_text is not None:
                break
            state, reason = _job_state(job_id)
            if state is None:  # gone: whatever it wrote last is in the file now
                yield from drain()
                break
            now = time.monotonic()
            if state in WAITING_STATES:
                if now > setup_deadline:
                    choice = self._late_start(job_id, state, reason, now - submitted,
                                              log_path)
                    if choice == "wait":
                        setup_deadline = time.monotonic() + self.setup_timeout
                    else:  # "local": the job is cancelled; run everything here
                        yield from self._run_locally(context, tasks, timeout)
                        return True
            elif started_at is None:
                started_at = now
                log.info("SLURM job %s is %s (it waited %.1f s)", job_id, state,
                         now - submitted)
                self.stats["pending_seconds"] = now - submitted
            done = n_calls - len(missing)
            if now - last_report >= 5.0:
                if state in WAITING_STATES:
                    log.info("SLURM job %s is %s (%s) since %.0f s", job_id, state, reason,
                             now - submitted)
                    last_report = now
                elif done != reported:  # (a terminal shows the runner's progress line)
                    log.log(logging.DEBUG if _stderr_is_terminal() else logging.INFO,
                            "SLURM job %s: %d of %d calls done", job_id, done, n_calls)
                    last_report, reported = now, done
            time.sleep(self.poll_interval)

        if done_stats is not None and not missing:
            self.stats.update(done_stats)
            self._finish(job_id, log_path)
            return True
        # The job ended (or its rank 0 failed) before every call had a result.
        if state is not None and not _wait_until_gone(job_id, END_GRACE_SECONDS):
            _cancel(job_id)
            _wait_until_gone(job_id, END_GRACE_SECONDS)
        _live_jobs.discard(job_id)
        yield from drain()
        record = _job_record(job_id)
        job_state = record.get("JobState", "UNKNOWN")
        exit_code = record.get("ExitCode", "?")
        raise self._job_error(job_id, job_state, exit_code, log_path, sorted(missing),
                              n_calls, error_text, self._on_disk)

    def _finish(self, job_id: str, log_path: str) -> None:
        """Every result is in: let the job end (or cancel it) and check how it ended."""
        if self.stop_client is True:
            _cancel(job_id)
            _live_jobs.discard(job_id)
            _wait_until_gone(job_id, END_GRACE_SECONDS)
            log.info("SLURM job %s cancelled after its last result (stop_client=True)",
                     job_id)
            return
        if not _wait_until_gone(job_id, END_GRACE_SECONDS):
            log.warning("SLURM job %s did not end within %.0f s of its last result: "
                        "cancelling it", job_id, END_GRACE_SECONDS)
            _cancel(job_id)
            _wait_until_gone(job_id, END_GRACE_SECONDS)
        _live_jobs.discard(job_id)
        record = _job_record(job_id)
        state, exit_code = record.get("JobState", "UNKNOWN"), record.get("ExitCode", "?")
        self.stats.update(job_state=state, job_exit_code=exit_code)
        if state != "COMPLETED":
            log.warning("SLURM job %s ended %s (exit code %s) after every call had its "
                        "result; see %s", job_id, state, exit_code, log_path)
        else:
            log.info("SLURM job %s %s (exit code %s); its output: %s", job_id, state,
                     exit_code, log_path)

    _job_error = staticmethod(job_error)

    def _late_start(self, job_id: str, state: str, reason: str, waited: float,
                    log_path: str) -> str:
        """The job is still waiting after setup_timeout: ask, or give up."""
        what = f"SLURM job {job_id} is still {state}" + (f" ({reason})" if reason and
                                                         reason != "None" else "")
        interactive = self.setup_interactive and sys.stdin is not None and \
            sys.stdin.isatty()
        while interactive:
            try:
                answer = input(f"{what} after {waited:.0f} s. Keep waiting "
                               f"{self.setup_timeout:g} s more [w], run the calls on this "
                               "machine instead [l], or give up [g]? ").strip().lower()
            except EOFError:
                break
            if answer in ("", "w", "wait"):
                return "wait"
            if answer in ("l", "local"):
                log.info("cancelling SLURM job %s; running the calls here", job_id)
                _cancel(job_id)
                _wait_until_gone(job_id, END_GRACE_SECONDS)
                _live_jobs.discard(job_id)
                return "local"
            if answer in ("g", "give up", "q"):
                break
        _cancel(job_id)
        _wait_until_gone(job_id, END_GRACE_SECONDS)
        _live_jobs.discard(job_id)
        raise SlurmSetupTimeout(
            f"{what} after {waited:.0f} s (setup_timeout={self.setup_timeout:g} s): it "
            f"was cancelled and nothing ran. Raise setup_timeout, or choose another "
            f"partition (sinfo shows them). SLURM output log: {log_path}",
            job_id, state, log_path)

    def _run_locally(self, context: WorkerContext, tasks: list,
                     timeout: Optional[float]) -> Iterator[CallOutcome]:
        from .local import LocalBackend
        local = LocalBackend(n_workers=self.requested_workers)
        yield from local.run(context, tasks, timeout=timeout)
        self.stats.update(local.stats, ran_locally=True)


# ---------------------------------------------------------------- helpers
def _stderr_is_terminal() -> bool:
    return bool(sys.stderr) and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def slurm_problem() -> Optional[str]:
    """Why no job can be submitted from here or run its ranks (None: it can)."""
    unusable = slurm_unusable_reason()
    if unusable:
        return f"SLURM is not usable ({unusable})"
    return job_python_problem()[0]


def start_allocation(**kwargs):
    """See :func:`acme.backends.slurm_pool.start_allocation`."""
    from .slurm_pool import start_allocation as start
    return start(**kwargs)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _remove_empty_folder(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:  # not empty (the job script stays), or gone
        pass
