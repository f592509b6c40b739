"""Shared helpers of the conformance suite (tests/test_conformance.py) and the fault
suite (tests/test_faults.py).

* the model and the checkers (tests/conformance_scripts/confcheck.py, re-exported);
* the fault scenarios' checks: ``acme status`` truthful, readers, the call log;
* the test profile switch (``ACME_CONFORMANCE_PROFILE=ci|thorough``);
* process helpers: live PIDs, killing by PID.

The functions the maps call live in tests/conformance_scripts/confmodel.py, which
every worker (local, MPI rank, SLURM job) can import.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional


TESTS_DIR = Path(__file__).resolve().parent
SCRIPTS_DIR = TESTS_DIR / "conformance_scripts"
if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))

from conftest import group_members  # noqa: E402,F401
from confcheck import (check_disk, check_outcome, check_readers,  # noqa: E402,F401
                       check_status, difference, model_calls, reference,
                       split_arguments)

#: environment variable choosing the profile: "ci" (default) or "thorough"
PROFILE_ENV = "ACME_CONFORMANCE_PROFILE"


def profile() -> str:
    name = os.environ.get(PROFILE_ENV, "ci").strip() or "ci"
    if name not in ("ci", "thorough"):
        raise ValueError(f"{PROFILE_ENV} has to be 'ci' or 'thorough', not {name!r}")
    return name


def scaled(ci: int, thorough: int) -> int:
    """A count for the current profile."""
    return thorough if profile() == "thorough" else ci


def record(line: str) -> None:
    """Print a count/measure line (visible with -s) and keep it in the report file
    named by ACME_CONFORMANCE_REPORT, if set."""
    print(f"MEASURED {line}", flush=True)
    path = os.environ.get("ACME_CONFORMANCE_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


# ================================================================== processes
def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (non-zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    import psutil
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_pids(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def wait_gone(pids, seconds: float) -> list[int]:
    """The PIDs still alive after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    left = [p for p in pids if pid_alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if pid_alive(p)]
    return left


def child_env(**extra) -> dict:
    """The environment for scripts, mpiexec and SLURM jobs the suites start: the
    caller's PYTHONPATH first (so a snapshot of acme under test wins), then this
    checkout, tests/ and tests/conformance_scripts/; Open MPI allowed as root."""
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", PYTHONUNBUFFERED="1",
               OMPI_MCA_odls_base_sigkill_timeout="3", ACME_AUTO_SLURM="0")
    parts = [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
    env["PYTHONPATH"] = os.pathsep.join(parts + [str(TESTS_DIR.parent), str(TESTS_DIR),
                                                 str(SCRIPTS_DIR)])
    env.update(extra)
    return env


def run_group(cmd: list, timeout: float, cwd=None, env=None):
    """Run ``cmd`` in its own session; on timeout (or after it ends) every process of
    its group still alive is killed by the group id. Returns (returncode or None on
    timeout, stdout, stderr, leftover PIDs that were still alive after it ended)."""
    import subprocess
    import tempfile
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                cwd=cwd, env=env or child_env(), start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        left = group_members(proc.pid)
        if code is not None:
            left = wait_group_gone(proc.pid, 3.0)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        out.seek(0)
        err.seek(0)
        return code, out.read(), err.read(), left


def wait_group_gone(pgid: int, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    left = group_members(pgid)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = group_members(pgid)
    return left


# ================================================================== fault scenarios
def logged_calls(path) -> list[int]:
    """The call indices a map's log holds, one entry per call that ran (confmodel
    appends each call's index with O_APPEND)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [int(line) for line in text.split("\n") if line.strip()]


def acme_status(output_dir: str) -> tuple[int, Optional[dict], str]:
    """``acme status --json`` as a real command: (exit code, parsed JSON or None, text)."""
    import json
    import subprocess
    proc = subprocess.run([sys.executable, "-m", "acme", "status", "--json", output_dir],
                          capture_output=True, text=True, timeout=60, env=child_env())
    try:
        return proc.returncode, json.loads(proc.stdout), proc.stdout + proc.stderr
    except ValueError:
        return proc.returncode, None, proc.stdout + proc.stderr


def check_truthful(desc: dict, mode: str, output_dir: str, ref: list,
                   allowed_failures=("ValueError",)) -> tuple[list[str], list[int]]:
    """After a fault: `acme status` names every call once (done/failed/missing), exits
    0 only when all are done; every call it says is done reads back as its reference
    value; every other call reads as MissingResultError. Returns (problems, done)."""
    code, status, text = acme_status(output_dir)
    if status is None:
        return [f"acme status failed (exit {code}): {text[-2000:]}"], []
    n = len(ref)
    done = list(status["done"])
    failed = sorted(int(i) for i in status["failed"])
    missing = list(status["missing"])
    problems = []
    if sorted(done + failed + missing) != list(range(n)):
        problems.append(f"acme status: done {done}, failed {failed}, missing {missing} "
                        f"do not name each of the {n} calls once")
    want_code = 0 if len(done) == n else 1
    if code != want_code:
        problems.append(f"acme status exited {code} with {len(done)} of {n} done "
                        f"(expected {want_code})")
    for i in done:
        if ref[i][0] != "ok":
            problems.append(f"acme status says call {i} is done, but it raises")
    for i, record in status["failed"].items():
        kind = record.split(":")[0]
        if ref[int(i)][0] == "raise" and kind != "ValueError":
            problems.append(f"call {i} failed as {record!r}")
        elif ref[int(i)][0] == "ok" and kind in allowed_failures:
            problems.append(f"call {i} returns a value but is recorded failed: {record!r}")
    seen = [ref[i] if i in done else None for i in range(n)]
    problems += [f"acme status lists it done, but {p}" for p in
                 check_readers(desc, mode, output_dir, seen, calls=done, stacked=False)]
    problems += check_readers(desc, mode, output_dir, seen,
                              calls=[i for i in range(n) if i not in done])
    return problems, done


class Proc:
    """A command started in its own session (its PID is its process group), output
    to files; ``kill_group`` ends whatever is left of it, by the group id."""

    def __init__(self, cmd: list, log_dir: Path, tag: str, cwd=None, env=None):
        import subprocess
        self.out_path = Path(log_dir) / f"{tag}.out"
        self.err_path = Path(log_dir) / f"{tag}.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, cwd=cwd,
                                         env=env or child_env(), start_new_session=True)
        self.pid = self.proc.pid

    def output(self) -> str:
        return (f"--- stdout ---\n{self.out_path.read_text()[-3000:]}\n--- stderr ---\n"
                f"{self.err_path.read_text()[-5000:]}")

    def wait(self, timeout: float) -> Optional[int]:
        import subprocess
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill_group(self) -> list[int]:
        """Kill the group; return the PIDs that were still alive in it."""
        left = group_members(self.pid)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.wait(10)
        return left


def wait_for(condition, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True
