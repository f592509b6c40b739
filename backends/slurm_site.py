"""The SLURM site as acme sees it: the client commands (``sinfo``, ``scontrol``,
``squeue``, ``sbatch``, ``scancel``), the partitions and their limits, choosing a
partition, a memory size and a number of workers for a job, the job script, and the
jobs this process has submitted (cancelled when it ends).

Used by the ``slurm`` backend (:mod:`acme.backends.slurm`: one job per run) and by
SLURM worker pools (:mod:`acme.backends.slurm_pool`: one job serving many runs).
Nothing here knows about calls or results (the memory dry run that measures what a
call needs is the backend's; what travels to the ranks, and whether the ranks' Python
can load it, is :mod:`acme.backends.slurm_work`'s).
"""
from __future__ import annotations

import atexit
import logging
import math
import os
import re
import shutil
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

log = logging.getLogger(__name__)

__all__ = ["SlurmSubmitError", "SlurmJobError", "SlurmSetupTimeout",
           "SlurmUnavailableError", "PartitionInfo",
           "read_partitions", "choose_partition", "slurm_usable", "slurm_unusable_reason",
           "in_slurm_allocation",
           "plan_job", "write_job_script", "submit", "job_error",
           "ACTIVE_STATES", "WAITING_STATES"]

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


class SlurmUnavailableError(OSError, RuntimeError):
    """SLURM cannot take jobs from here (its commands are missing or fail). An
    OSError, as esi-acme's IOError, and a RuntimeError, as acme raised before."""


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


_unusable: Optional[tuple] = None  # (reason or None,), once per process


def slurm_unusable_reason(refresh: bool = False) -> Optional[str]:
    """Why SLURM cannot take jobs from here (None: it can): the client commands are
    on PATH and slurmctld answers (checked once per process unless ``refresh``)."""
    global _unusable
    if _unusable is None or refresh:
        missing = [c for c in ("sbatch", "sinfo", "scontrol") if not shutil.which(c)]
        reason = f"{', '.join(missing)} not on PATH" if missing else None
        # `scontrol ping` says in milliseconds whether slurmctld is down; `sinfo`
        # alone would retry for ≈ 10 s first
        for cmd in (["scontrol", "ping"], ["sinfo", "-h", "-o", "%P"]):
            if reason:
                break
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10,
                                      stdin=subprocess.DEVNULL)
                if proc.returncode != 0 or not proc.stdout.strip():
                    reason = f"`{' '.join(cmd)}` failed (slurmctld not reachable?)"
            except (OSError, subprocess.TimeoutExpired) as exc:
                reason = f"`{' '.join(cmd)}` failed: {exc}"
        _unusable = (reason,)
    return _unusable[0]


def slurm_usable(refresh: bool = False) -> bool:
    """Whether SLURM can take jobs from here: ``sbatch`` is on PATH and ``sinfo``
    answers (checked once per process unless ``refresh``)."""
    return slurm_unusable_reason(refresh) is None


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



def job_error(job_id, state, exit_code, log_path, missing, n_calls, error_text,
              on_disk=True) -> SlurmJobError:
    """The error for a job that ended (JobState ``state``) before every call had a
    result: its id, state, exit code, the calls without a result and its log."""
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


# ------------------------------------------------------------ planning a job
def _partition_named(partitions: dict, partition: str, only: Optional[set],
                     excluded: set) -> PartitionInfo:
    """The partition asked for by name, refused when it is not one acme may use."""
    if partition in excluded:
        raise ValueError(f"`partition` {partition!r} is not for acme workers (it is in "
                         f"invalid_partitions {sorted(excluded)}); choose one of "
                         f"{sorted(set(partitions) - excluded)}")
    if only is not None and partition not in only:
        raise ValueError(f"`partition` {partition!r} is not in avail_partitions "
                         f"{sorted(only)}")
    info = partitions.get(partition)
    if info is None:
        raise ValueError(f"`partition` {partition!r} is not a SLURM partition "
                         f"here; sinfo lists {sorted(partitions)}")
    return info


def _auto_partition(partitions: dict, need_mb: Optional[float],
                    measure: Optional[Callable[[], float]], time_min: Optional[float],
                    cpus: int, cushion: float) -> tuple:
    """partition="auto": the only one, or the one that fits a worker's need best;
    ``(info, need_mb)`` with the need it was chosen for (None: not known)."""
    if len(partitions) == 1:
        info, reason = next(iter(partitions.values())), "it is the only partition"
    else:
        if need_mb is not None:
            basis = "asked for (mem_per_worker)"
        elif measure is not None:
            need_mb, basis = measure(), "measured"
        else:
            need_mb = float(WORKER_BASE_MB)
            basis = "no function to measure yet (a worker pool): the base"
        info, reason = choose_partition(partitions, (need_mb + cushion) / cpus, time_min)
        reason = f"{basis} need {need_mb:.0f} MB per worker: {reason}"
    log.info("SLURM partition %r chosen: %s", info.name, reason)
    return info, need_mb


def _worker_memory(info: PartitionInfo, mem_per_worker_mb: Optional[float],
                   need_mb: Optional[float], cpus: int,
                   cushion: Optional[float]) -> Optional[float]:
    """Memory (MB) of one worker rank of ``cpus`` CPUs in partition ``info``.

    ``cushion`` (esi-acme's ``mem_cushion``) is kept clear of the partition's limit:
    a request above the limit minus the cushion is capped there, with a warning."""
    per_cpu_limit = info.mem_per_cpu_limit
    limit = per_cpu_limit * cpus if per_cpu_limit is not None else None
    if limit is not None and cushion:
        limit = max(limit - cushion, 1.0)
    if mem_per_worker_mb is not None:
        if limit is not None and mem_per_worker_mb > limit and cushion is not None:
            log.warning("mem_per_worker %.0f MB is more than partition %s allows per "
                        "worker (%.0f MB after mem_cushion=%g MB): asking for %.0f MB",
                        mem_per_worker_mb, info.name, limit, cushion, limit)
            return limit
        if limit is not None and mem_per_worker_mb > limit:
            log.warning("mem_per_worker %.0f MB is more than partition %s allows per "
                        "CPU (%.0f MB): SLURM gives each task more CPUs instead "
                        "(or refuses the job)", mem_per_worker_mb, info.name, limit)
        return mem_per_worker_mb
    # the partition's default, or more when the dry run measured more
    known = [m for m in (info.def_mem_per_cpu and info.def_mem_per_cpu * cpus, need_mb)
             if m]
    mem = max(known) if known else None
    return min(mem, limit) if mem is not None and limit is not None else mem


def plan_job(partition: str, mem_per_worker_mb: Optional[float],
             requested_workers: Optional[int], time_limit: Optional[str],
             n_calls: Optional[int], measure: Optional[Callable[[], float]] = None,
             cpus_per_worker: int = 1, mem_cushion_mb: Optional[float] = None,
             only: Optional[set] = None, excluded: Optional[set] = None) -> dict:
    """Partition, memory, CPUs, worker ranks and tasks of a job.

    ``partition="auto"`` picks the partition (:func:`choose_partition`) for what a
    worker needs: ``mem_per_worker_mb`` when given, else ``measure()`` (the dry run of
    a call), else (a worker pool, no function yet) the base need of a worker rank;
    only among ``only`` (when given) and never one of ``excluded``. Each rank gets
    ``cpus_per_worker`` CPUs. ``n_calls`` None (a worker pool): the number of workers
    is not capped by calls. Returns ``{"partition", "mem_mb" (per CPU), "cpus_per_task",
    "n_workers", "ntasks", "overcommit", "time"}``.
    """
    partitions = read_partitions()
    if not partitions:
        raise RuntimeError("sinfo lists no SLURM partition")
    excluded = set(excluded or ())
    time_min = _parse_minutes(time_limit) if time_limit else None
    cpus = max(1, int(cpus_per_worker))
    if partition == "auto":
        usable = {n: p for n, p in partitions.items()
                  if n not in excluded and (only is None or n in only)}
        if not usable:
            raise ValueError(f"no SLURM partition is left to choose from: sinfo lists "
                             f"{sorted(partitions)}, avail_partitions "
                             f"{sorted(only) if only is not None else 'all'}, "
                             f"invalid_partitions {sorted(excluded)}")
        info, need_mb = _auto_partition(usable, mem_per_worker_mb, measure, time_min,
                                        cpus, mem_cushion_mb or 0.0)
    else:
        info = _partition_named(partitions, partition, only, excluded)
        need_mb = mem_per_worker_mb
    mem = _worker_memory(info, mem_per_worker_mb, need_mb, cpus, mem_cushion_mb)
    n_workers = _plan_workers(info, requested_workers, n_calls, mem, cpus)
    ntasks = n_workers + 1
    overcommit = bool(info.total_cpus) and ntasks * cpus > info.total_cpus
    if overcommit:
        log.warning("%d tasks (n_workers + 1) of %d CPU(s) are more than the %d CPUs of "
                    "partition %s: submitting with --overcommit, so several ranks share "
                    "a CPU", ntasks, cpus, info.total_cpus, info.name)
    return {"partition": info.name, "mem_mb": mem / cpus if mem else None,
            "cpus_per_task": cpus, "n_workers": n_workers, "ntasks": ntasks,
            "overcommit": overcommit, "time": time_limit}


def _plan_workers(info: PartitionInfo, requested: Optional[int], n_calls: Optional[int],
                  mem: Optional[float], cpus: int) -> int:
    """Worker ranks: as asked (at most one per call), or "auto"."""
    calls_cap = n_calls if n_calls is not None else MAX_AUTO_WORKERS
    if requested:
        return max(1, min(requested, calls_cap) if n_calls is not None else requested)
    # one worker per CPU that is idle now (so the job can start at once), or per CPU
    # of the partition when (almost) none is; rank 0 takes one worker's share
    slots = info.total_cpus or 2
    if info.idle_cpus is not None and info.idle_cpus >= 2:
        slots = min(slots, info.idle_cpus)
    if mem and info.total_mem_mb:
        slots = min(slots, int(info.total_mem_mb // (mem / cpus)))
    n_workers = max(1, min(calls_cap, slots // cpus - 1, MAX_AUTO_WORKERS))
    log.info("n_workers='auto': %d worker rank(s) for %s (partition %s: %d CPUs, %s "
             "idle)", n_workers,
             f"{n_calls} calls" if n_calls is not None else "a worker pool",
             info.name, info.total_cpus, "?" if info.idle_cpus is None else info.idle_cpus)
    return n_workers


# ------------------------------------------------------------ job script, sbatch
def write_job_script(folder: str, plan: dict, name: str, comment: list,
                     job_args: list) -> str:
    """``folder/job.sh``: the #SBATCH header for ``plan``, the submitting process's
    import path, and ``srun python -m acme.slurm_job <job_args>``."""
    lines = ["#!/bin/bash", *(f"# {line}" for line in comment),
             f"#SBATCH --job-name={_sbatch_quote(name)}",
             f"#SBATCH --partition={_sbatch_quote(plan['partition'])}",
             f"#SBATCH --ntasks={plan['ntasks']}",
             f"#SBATCH --output={_sbatch_quote(os.path.join(folder, 'slurm-%j.out'))}",
             f"#SBATCH --chdir={_sbatch_quote(os.getcwd())}"]
    cpus = plan.get("cpus_per_task", 1)
    if cpus > 1:
        lines.append(f"#SBATCH --cpus-per-task={cpus}")
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
              # srun does not take --cpus-per-task over from sbatch (SLURM >= 22.05)
              "srun " + (f"--cpus-per-task={cpus} " if cpus > 1 else "")
              + f"{shlex.quote(sys.executable)} -m acme.slurm_job "
              + " ".join(shlex.quote(str(a)) for a in job_args), ""]
    script = os.path.join(folder, "job.sh")
    with open(script, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    os.chmod(script, 0o755)
    return script


def submit(script: str, sbatch_args: list, keep_script: bool = True) -> str:
    """``sbatch --parsable [sbatch_args] script``; the job id, or SlurmSubmitError
    naming what the job asked for (and the script, unless ``not keep_script``: the
    caller removes it)."""
    cmd = ["sbatch", "--parsable", *sbatch_args, script]
    proc = _slurm(cmd, timeout=60, check=False)
    where = f"job script: {script}" if keep_script else \
        "its temporary job folder was removed"
    if proc.returncode != 0:
        raise SlurmSubmitError(
            f"sbatch refused the job (exit code {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()}; it asked for "
            f"{_asked_for(script, sbatch_args)}; {where}")
    job_id = proc.stdout.strip().split(";")[0].strip()
    if not job_id.isdigit():
        raise SlurmSubmitError(f"sbatch gave no job id: {proc.stdout!r} "
                               f"{proc.stderr!r}; {where}")
    return job_id


def _asked_for(script: str, sbatch_args: list) -> str:
    """The ``#SBATCH`` options of ``script`` and the extra sbatch arguments."""
    try:
        with open(script, encoding="utf-8") as fh:
            options = [line.split(None, 1)[1].strip() for line in fh
                       if line.startswith("#SBATCH ")]
    except OSError:
        options = []
    return " ".join(o for o in options + list(sbatch_args)
                    if not o.startswith(("--output", "--chdir", "--job-name"))) or "?"


def time_text(value) -> Optional[str]:
    """``time_limit`` as ``sbatch --time`` takes it (minutes, or a SLURM time)."""
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
