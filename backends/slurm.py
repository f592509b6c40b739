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

Faults: a job that is cancelled, hits its time limit or fails raises
:class:`SlurmJobError` naming the job id, its state and the SLURM output log; results
already written stay on disk. Ctrl-C here cancels the job and waits until it is gone.
"""
from __future__ import annotations

import atexit
import json
import logging
import math
import multiprocessing
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator, Optional, Union

from acme.slurm_job import (CONTEXT_FILE, JOB_FILE, OUTCOMES_FILE, TASKS_FILE,
                            RecordReader)
from acme.tasks import CallOutcome, CallTask, WorkerContext, dumps

from .base import Backend

log = logging.getLogger("acme")

__all__ = ["SlurmBackend", "SlurmJobError", "SlurmSetupTimeout", "SlurmSubmitError",
           "PartitionInfo", "read_partitions", "choose_partition", "slurm_usable",
           "in_slurm_allocation"]

#: States in which a job still exists as far as ``squeue`` is concerned.
ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED",
                 "RESIZING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING",
                 "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
#: States of a job that has not started yet.
WAITING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                  "RESV_DEL_HOLD"}

#: Memory (MB) a worker rank needs besides what a call allocates: the interpreter with
#: numpy, h5py, mpi4py and MPI (a rank measured ≈ 60 MB here; the rest is headroom).
WORKER_BASE_MB = 200
#: A call's measured extra memory is multiplied by this for the request.
MEMORY_MARGIN = 1.2
#: n_workers="auto" never asks for more worker ranks than this.
MAX_AUTO_WORKERS = 64
#: Seconds a job may take to leave squeue after its last result before we cancel it.
END_GRACE_SECONDS = 30.0


class SlurmSubmitError(RuntimeError):
    """``sbatch`` refused the job (no job id exists)."""


class SlurmJobError(RuntimeError):
    """The SLURM job ended (or was stopped) before every call had a result.

    Attributes
    ----------
    job_id : str
    state : str
        SLURM's JobState (CANCELLED, TIMEOUT, FAILED, ...), or PENDING when it never
        started.
    log_path : str
        The job's SLURM output file (stdout and stderr of every rank).
    missing : list of int
        Calls without a result.
    """

    def __init__(self, message: str, job_id: str, state: str, log_path: str,
                 missing: Optional[list] = None, exit_code: str = ""):
        super().__init__(message)
        self.job_id = job_id
        self.state = state
        self.log_path = log_path
        self.missing = list(missing or [])
        self.exit_code = exit_code

    def __reduce__(self):
        return (type(self), (self.args[0], self.job_id, self.state, self.log_path,
                             self.missing, self.exit_code))


class SlurmSetupTimeout(SlurmJobError, TimeoutError):
    """The job did not leave PENDING within ``setup_timeout`` (it was cancelled)."""


# ------------------------------------------------------------------- SLURM queries
def _slurm(args: list, timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess:
    """Run a SLURM command; raise RuntimeError with its message when it fails."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise RuntimeError(f"{args[0]} not found: the SLURM client commands have to be "
                           "on PATH for backend='slurm'") from exc
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"`{' '.join(args)}` did not answer within {timeout:g} s "
                           "(is slurmctld reachable?)") from exc
    if check and proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` failed (exit code {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()}")
    return proc


_usable: Optional[bool] = None


def slurm_usable(refresh: bool = False) -> bool:
    """Whether SLURM can take jobs from here: ``sbatch`` is on PATH and ``sinfo``
    answers (checked once per process unless ``refresh``)."""
    global _usable
    if _usable is None or refresh:
        ok = all(shutil.which(c) for c in ("sbatch", "sinfo", "scontrol"))
        # `scontrol ping` says in milliseconds whether slurmctld is down; `sinfo`
        # alone would retry for ≈ 10 s first
        for cmd in (["scontrol", "ping"], ["sinfo", "-h", "-o", "%P"]):
            if not ok:
                break
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10,
                                      stdin=subprocess.DEVNULL)
                ok = proc.returncode == 0 and bool(proc.stdout.strip())
            except (OSError, subprocess.TimeoutExpired):
                ok = False
        _usable = ok
    return _usable


def in_slurm_allocation() -> bool:
    """Whether this process runs inside a SLURM job (batch script, salloc or srun)."""
    return any(os.environ.get(v) for v in ("SLURM_JOB_ID", "SLURM_JOBID"))


def _parse_minutes(text: str) -> Optional[float]:
    """A SLURM time ("10", "10:00", "1:00:00", "2-12", "2-12:30:00") in minutes;
    None for UNLIMITED/infinite."""
    text = str(text).strip()
    if not text or text.upper() in ("UNLIMITED", "INFINITE", "NONE", "N/A"):
        return None
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        days = int(day_text)
        parts = [int(p) for p in text.split(":")] + [0, 0]
        hours, minutes, seconds = parts[0], parts[1], parts[2]
    else:
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 1:
            hours, minutes, seconds = 0, parts[0], 0
        elif len(parts) == 2:
            hours, (minutes, seconds) = 0, parts
        else:
            hours, minutes, seconds = parts[:3]
    return days * 1440 + hours * 60 + minutes + seconds / 60


def _parse_mb(text: str) -> Optional[float]:
    text = str(text).strip().rstrip("+")
    if not text or text.upper() in ("UNLIMITED", "N/A", "0", "(NULL)"):
        return None
    match = re.match(r"^(\d+(?:\.\d+)?)([KMGT]?)$", text, re.IGNORECASE)
    if not match:
        return None
    scale = {"": 1.0, "K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0 ** 2}
    return float(match.group(1)) * scale[match.group(2).upper()]


@dataclass
class PartitionInfo:
    """What acme needs to know about one partition."""

    name: str
    default: bool = False
    up: bool = True
    total_cpus: int = 0
    idle_cpus: Optional[int] = None
    cpus_per_node: int = 0
    nodes: int = 0
    node_mem_mb: Optional[float] = None
    max_time_min: Optional[float] = None      # None: unlimited
    def_mem_per_cpu: Optional[float] = None
    max_mem_per_cpu: Optional[float] = None
    max_mem_per_node: Optional[float] = None

    @property
    def mem_per_cpu_limit(self) -> Optional[float]:
        """Most memory one CPU (one worker) can get here, in MB (None: unknown)."""
        if self.max_mem_per_cpu:
            return self.max_mem_per_cpu
        per_node = self.max_mem_per_node or self.node_mem_mb
        if per_node and self.cpus_per_node:
            return per_node / self.cpus_per_node
        return None

    @property
    def total_mem_mb(self) -> Optional[float]:
        per_node = self.max_mem_per_node or self.node_mem_mb
        return per_node * self.nodes if per_node and self.nodes else None

    def describe(self) -> str:
        limit = self.mem_per_cpu_limit
        time_text = "no time limit" if self.max_time_min is None else \
            f"at most {self.max_time_min:g} min"
        return (f"{self.name} ({self.total_cpus} CPUs, "
                f"{'?' if limit is None else f'{limit:.0f}'} MB per CPU at most, "
                f"{'?' if self.def_mem_per_cpu is None else f'{self.def_mem_per_cpu:.0f}'}"
                f" MB by default, {time_text})")


def _key_values(line: str) -> dict:
    out = {}
    for token in line.split():
        key, sep, value = token.partition("=")
        if sep:
            out[key] = value
    return out


def read_partitions() -> dict:
    """Partitions from ``sinfo -h -o "%P %a %m %l %c %D %C"`` and ``scontrol show
    partition`` (DefMemPerCPU, MaxMemPerCPU, MaxTime, ...)."""
    parts: dict[str, PartitionInfo] = {}
    out = _slurm(["sinfo", "-h", "-o", "%P %a %m %l %c %D %C"]).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 7:
            continue
        raw_name, avail, mem, limit, cpus, nodes, cpu_states = fields[:7]
        name = raw_name.rstrip("*")
        info = parts.setdefault(name, PartitionInfo(name, default=raw_name.endswith("*")))
        info.up = info.up and avail.lower() == "up"
        n_nodes = int(nodes) if nodes.isdigit() else 0
        n_cpus = int(cpus.rstrip("+")) if cpus.rstrip("+").isdigit() else 0
        info.nodes += n_nodes
        info.total_cpus += n_nodes * n_cpus
        info.cpus_per_node = max(info.cpus_per_node, n_cpus)
        node_mem = _parse_mb(mem)
        if node_mem is not None:  # the smallest node decides what surely fits
            info.node_mem_mb = node_mem if info.node_mem_mb is None else \
                min(info.node_mem_mb, node_mem)
        info.max_time_min = _parse_minutes(limit)
        states = cpu_states.split("/")  # allocated/idle/other/total
        if len(states) == 4 and states[1].isdigit():
            info.idle_cpus = (info.idle_cpus or 0) + int(states[1])
    try:
        text = _slurm(["scontrol", "show", "partition", "-o"]).stdout
    except RuntimeError as exc:
        log.debug("scontrol show partition failed (%s): using sinfo only", exc)
        text = ""
    for line in text.splitlines():
        kv = _key_values(line)
        info = parts.get(kv.get("PartitionName", ""))
        if info is None:
            continue
        info.def_mem_per_cpu = _parse_mb(kv.get("DefMemPerCPU", ""))
        info.max_mem_per_cpu = _parse_mb(kv.get("MaxMemPerCPU", ""))
        info.max_mem_per_node = _parse_mb(kv.get("MaxMemPerNode", ""))
        if kv.get("TotalCPUs", "").isdigit():
            info.total_cpus = int(kv["TotalCPUs"])
        if "MaxTime" in kv:
            info.max_time_min = _parse_minutes(kv["MaxTime"])
        if kv.get("Default") == "YES":
            info.default = True
        if kv.get("State") and kv["State"] != "UP":
            info.up = False
    return parts


def choose_partition(partitions: dict, need_mb: float,
                     time_limit_min: Optional[float] = None) -> tuple:
    """The partition whose most memory per CPU fits ``need_mb`` with the least waste,
    among those that are up and allow ``time_limit_min``; returns ``(info, reason)``."""
    usable = [p for p in partitions.values() if p.up and (
        time_limit_min is None or p.max_time_min is None or p.max_time_min >= time_limit_min)]
    if not usable:
        raise RuntimeError("no SLURM partition is up" + (
            f" and allows a time limit of {time_limit_min:g} min" if time_limit_min else "")
            + f": {', '.join(p.describe() for p in partitions.values())}")
    known = [p for p in usable if p.mem_per_cpu_limit is not None]
    fitting = [p for p in known if p.mem_per_cpu_limit >= need_mb]
    listing = ", ".join(p.describe() for p in usable)
    if fitting:
        best = min(fitting, key=lambda p: (p.mem_per_cpu_limit - need_mb, not p.default,
                                           p.name))
        return best, (f"it allows {best.mem_per_cpu_limit:.0f} MB per CPU, the least "
                      f"waste above the {need_mb:.0f} MB a worker needs; partitions: "
                      f"{listing}")
    if known:
        best = max(known, key=lambda p: p.mem_per_cpu_limit)
        return best, (f"no partition allows the {need_mb:.0f} MB a worker needs per CPU; "
                      f"{best.name} allows the most ({best.mem_per_cpu_limit:.0f} MB); "
                      f"partitions: {listing}")
    best = next((p for p in usable if p.default), usable[0])
    return best, f"the memory limits of the partitions are unknown; partitions: {listing}"


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


# -------------------------------------------------------------------- live jobs
_live_jobs: set = set()


def _cancel(job_id: str) -> None:
    """``scancel ID``, not interrupted by a second Ctrl-C."""
    previous = None
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass
    try:
        _slurm(["scancel", str(job_id)], timeout=30, check=False)
    except RuntimeError as exc:
        log.error("could not cancel SLURM job %s: %s", job_id, exc)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


@atexit.register
def _cancel_live_jobs_at_exit() -> None:
    for job_id in list(_live_jobs):
        log.warning("cancelling SLURM job %s (this process ends)", job_id)
        _cancel(job_id)
        _live_jobs.discard(job_id)


def _job_state(job_id: str) -> tuple:
    """``(state, reason)`` from squeue; ``(None, "")`` when squeue no longer lists it."""
    proc = _slurm(["squeue", "-h", "-j", str(job_id), "-o", "%T|%r"], check=False)
    if proc.returncode != 0:
        if "invalid job id" in (proc.stderr or "").lower():
            return None, ""
        raise RuntimeError(f"squeue -j {job_id} failed: {proc.stderr.strip()}")
    line = proc.stdout.strip().splitlines()
    if not line:
        return None, ""
    state, _, reason = line[0].partition("|")
    state = state.strip().upper()
    if state not in ACTIVE_STATES:
        return None, reason
    return state, reason.strip()


def _job_record(job_id: str) -> dict:
    """``scontrol show job ID`` as a dict (JobState, ExitCode, Reason, StdOut, ...)."""
    proc = _slurm(["scontrol", "show", "job", "-o", str(job_id)], check=False)
    return _key_values(proc.stdout) if proc.returncode == 0 else {}


def _wait_until_gone(job_id: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        try:
            state, _ = _job_state(job_id)
        except RuntimeError:
            state = "?"
        if state is None:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def _log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as fh:
            tail = fh.readlines()[-lines:]
    except OSError:
        return ""
    return "".join(tail).rstrip()


# -------------------------------------------------------------------- backend
class SlurmBackend(Backend):
    """Every call of a ``compute()`` runs in one MPI job submitted with ``sbatch``."""

    name = "slurm"
    #: Options set by :meth:`configured` subclasses.
    default_options: dict = {}

    def __init__(self, n_workers: Optional[int] = None, **options):
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

    @classmethod
    def configured(cls, **options) -> type:
        """A subclass with other defaults, e.g. ``SlurmBackend.configured(time_limit=90)``,
        to register under a name of its own."""
        return type(f"{cls.__name__}Configured", (cls,),
                    {"default_options": {**cls.default_options, **options}})

    @staticmethod
    def _time_text(value) -> Optional[str]:
        if value is None or value == "":
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value <= 0:
                raise ValueError(f"`time_limit` has to be positive, not {value!r}")
            return str(int(math.ceil(value)))
        text = str(value).strip()
        try:
            _parse_minutes(text)
        except ValueError:
            raise ValueError(f"`time_limit` has to be minutes or a SLURM time such as "
                             f"'1:30:00' or '2-00:00:00', not {value!r}") from None
        return text

    @classmethod
    def is_available(cls) -> bool:
        return slurm_usable()

    def describe(self) -> str:
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
        partitions = read_partitions()
        if not partitions:
            raise RuntimeError("sinfo lists no SLURM partition")
        time_min = _parse_minutes(self.time_limit) if self.time_limit else None
        need_mb = self.mem_per_worker_mb
        if self.partition == "auto":
            if len(partitions) == 1:
                info = next(iter(partitions.values()))
                reason = "it is the only partition"
            else:
                if need_mb is None:
                    need_mb = self._measure(context, tasks)
                    basis = "measured"
                else:
                    basis = "asked for (mem_per_worker)"
                info, reason = choose_partition(partitions, need_mb, time_min)
                reason = f"{basis} need {need_mb:.0f} MB per worker: {reason}"
            log.info("SLURM partition %r chosen: %s", info.name, reason)
        else:
            info = partitions.get(self.partition)
            if info is None:
                raise ValueError(f"`partition` {self.partition!r} is not a SLURM partition "
                                 f"here; sinfo lists {sorted(partitions)}")
        self._chosen = info.name

        if self.mem_per_worker_mb is not None:
            mem = self.mem_per_worker_mb
            limit = info.mem_per_cpu_limit
            if limit is not None and mem > limit:
                log.warning("mem_per_worker %.0f MB is more than partition %s allows per "
                            "CPU (%.0f MB): SLURM gives each task more CPUs instead "
                            "(or refuses the job)", mem, info.name, limit)
        else:
            # the partition's default, or more when the dry run measured more
            known = [m for m in (info.def_mem_per_cpu, need_mb) if m]
            mem = max(known) if known else None
            if mem is not None and info.mem_per_cpu_limit is not None:
                mem = min(mem, info.mem_per_cpu_limit)

        n_calls = len(tasks)
        if self.requested_workers:
            n_workers = max(1, min(self.requested_workers, n_calls))
        else:
            # one worker per CPU that is idle now (so the job can start at once), or
            # per CPU of the partition when (almost) none is; rank 0 takes one CPU
            slots = info.total_cpus or 2
            if info.idle_cpus is not None and info.idle_cpus >= 2:
                slots = min(slots, info.idle_cpus)
            if mem and info.total_mem_mb:
                slots = min(slots, int(info.total_mem_mb // mem))
            n_workers = max(1, min(n_calls, slots - 1, MAX_AUTO_WORKERS))
            log.info("n_workers='auto': %d worker rank(s) for %d calls (partition %s: %d "
                     "CPUs, %s idle)", n_workers, n_calls, info.name, info.total_cpus,
                     "?" if info.idle_cpus is None else info.idle_cpus)
        ntasks = n_workers + 1
        overcommit = bool(info.total_cpus) and ntasks > info.total_cpus
        if overcommit:
            log.warning("%d tasks (n_workers + 1) are more than the %d CPUs of partition "
                        "%s: submitting with --overcommit, so several ranks share a CPU",
                        ntasks, info.total_cpus, info.name)
        self.n_workers = n_workers
        return {"partition": info.name, "mem_mb": mem, "n_workers": n_workers,
                "ntasks": ntasks, "overcommit": overcommit, "time": self.time_limit}

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
        by_value = _has_cloudpickle()
        main_script = None
        if not by_value and getattr(context.func, "__module__", None) == "__main__":
            main_script = _main_script_for_workers(context.func)
        context_bytes = dumps(context, "The function or one of its constant arguments",
                              by_value=by_value)
        tasks_bytes = dumps(tasks, "A varying argument", by_value=by_value)
        with open(os.path.join(folder, CONTEXT_FILE), "wb") as fh:
            fh.write(context_bytes)
        with open(os.path.join(folder, TASKS_FILE), "wb") as fh:
            fh.write(tasks_bytes)
        job = {"timeout": timeout, "n_workers": plan["n_workers"], "calls": len(tasks),
               "main_script": main_script, "python": sys.executable, **plan}
        with open(os.path.join(folder, JOB_FILE), "w", encoding="utf-8") as fh:
            json.dump(job, fh, indent=1)

        name = self.job_name or f"acme_{file_stem(context.func)}"
        lines = ["#!/bin/bash",
                 f"# Written by acme's SLURM backend: {len(tasks)} calls of "
                 f"{getattr(context.func, '__qualname__', context.func)!s}",
                 f"# on {plan['n_workers']} worker rank(s) + 1 scheduling rank. "
                 "Resubmit with: sbatch job.sh",
                 f"#SBATCH --job-name={_sbatch_quote(name)}",
                 f"#SBATCH --partition={_sbatch_quote(plan['partition'])}",
                 f"#SBATCH --ntasks={plan['ntasks']}",
                 f"#SBATCH --output={_sbatch_quote(os.path.join(folder, 'slurm-%j.out'))}",
                 f"#SBATCH --chdir={_sbatch_quote(os.getcwd())}"]
        if plan["mem_mb"]:
            lines.append(f"#SBATCH --mem-per-cpu={int(math.ceil(plan['mem_mb']))}M")
        if plan["time"]:
            lines.append(f"#SBATCH --time={plan['time']}")
        if plan["overcommit"]:
            lines.append("#SBATCH --overcommit")
        lines += ["",
                  "# the submitting process's import path (its script folder, the tests, ...)",
                  f"export PYTHONPATH={shlex.quote(_python_path())}",
                  "export PYTHONUNBUFFERED=1",
                  f"srun {shlex.quote(sys.executable)} -m acme.slurm_job "
                  f"{shlex.quote(folder)}", ""]
        script = os.path.join(folder, "job.sh")
        with open(script, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines))
        os.chmod(script, 0o755)
        return script

    def _submit(self, script: str, folder: str) -> str:
        cmd = ["sbatch", "--parsable", *self.sbatch_args, script]
        proc = _slurm(cmd, timeout=60, check=False)
        if proc.returncode != 0:
            raise SlurmSubmitError(
                f"sbatch refused the job (exit code {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()}; job script: {script}")
        job_id = proc.stdout.strip().split(";")[0].strip()
        if not job_id.isdigit():
            raise SlurmSubmitError(f"sbatch gave no job id: {proc.stdout!r} "
                                   f"{proc.stderr!r}; job script: {script}")
        return job_id

    # ------------------------------------------------------------ running
    def run(self, context: WorkerContext, tasks: list[CallTask],
            timeout: Optional[float] = None) -> Iterator[CallOutcome]:
        if not tasks:
            return
        plan = self._plan(context, tasks)
        folder, temporary = self._job_folder(context)
        self.job_dir = folder
        self._on_disk = not temporary
        success = False
        try:
            script = self._write_job(folder, context, tasks, plan, timeout)
            job_id = self._submit(script, folder)
            self.job_id = job_id
            _live_jobs.add(job_id)
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

    @staticmethod
    def _job_error(job_id, state, exit_code, log_path, missing, n_calls, error_text,
                   on_disk=True):
        shown = ", ".join(map(str, missing[:20])) + (", ..." if len(missing) > 20 else "")
        why = {"CANCELLED": "was cancelled", "TIMEOUT": "hit its time limit",
               "FAILED": "failed", "OUT_OF_MEMORY": "ran out of memory",
               "NODE_FAIL": "lost a node", "PREEMPTED": "was preempted",
               "BOOT_FAIL": "could not boot its node"}.get(state, "ended")
        message = (f"SLURM job {job_id} {why} (JobState={state}, ExitCode={exit_code}) "
                   f"before {len(missing)} of {n_calls} calls had a result (calls {shown}). "
                   + ("Results already written stay on disk. " if on_disk else "")
                   + f"SLURM output log: {log_path}")
        if error_text:
            message += "\nThe job's rank 0 reported:\n" + error_text.rstrip()
        else:
            tail = _log_tail(log_path)
            if tail:
                message += "\nLast lines of the log:\n" + tail
        return SlurmJobError(message, job_id, state, log_path, missing, exit_code)

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


def _has_cloudpickle() -> bool:
    try:
        import cloudpickle  # noqa: F401
        return True
    except ImportError:
        return False


def _main_script_for_workers(func) -> str:
    """Without cloudpickle a ``__main__`` function travels by reference: the job loads
    the script (without running its main block) on every rank."""
    from acme.mpi_run import has_main_guard
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    name = getattr(func, "__name__", func)
    if not path or not os.path.isfile(path):
        raise TypeError(
            f"The function {name!r} was defined in an interactive session, so the SLURM "
            "job cannot import it. Install cloudpickle (pip install cloudpickle) to send "
            "it by value, or define it in a module.")
    path = os.path.abspath(path)
    if not has_main_guard(path):
        raise TypeError(
            f"The function {name!r} is defined in {path}, which has no `if __name__ == "
            "\"__main__\":` block, so the SLURM job cannot load it without running the "
            "whole script again. Add that block, move the function into a module, or "
            "install cloudpickle (pip install cloudpickle).")
    return path


def _python_path() -> str:
    """This process's import path minus the interpreter's own folders, for the job."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix,
                                              sys.exec_prefix)}
    entries = []
    for entry in sys.path:
        path = os.path.realpath(entry or os.getcwd())
        if not os.path.isdir(path) or any(path == p or path.startswith(p + os.sep)
                                          for p in prefixes):
            continue
        if path not in entries:
            entries.append(path)
    existing = os.environ.get("PYTHONPATH")
    return os.pathsep.join(entries + ([existing] if existing else []))


def _sbatch_quote(value: str) -> str:
    value = str(value)
    return f'"{value}"' if re.search(r"\s", value) else value


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
