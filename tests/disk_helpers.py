"""Helpers of the results-on-disk tests (issue 3): listing an output folder, reading
HDF5 files back with plain h5py, and running scripts in a subprocess (optionally on a
pseudo-terminal) with a time limit, cleaned up by process-group id.

Nothing here imports acme's own readers: the tests check the files as downstream code
written for esi-acme would see them.
"""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import h5py
import numpy as np

#: The default output folder: ``ACME_YYYYMMDD-hhmmss-ffffff``.
ACME_DIR_RE = re.compile(r"^ACME_(\d{8}-\d{6}-\d{6})$")

#: The repository root (so scripts run in a subprocess import this checkout).
REPO = Path(__file__).resolve().parent.parent


def log_re(stem: str) -> re.Pattern:
    """The log file name ``ACME_<stem>_YYYYMMDD-hhmmss.log``."""
    return re.compile(rf"^ACME_{re.escape(stem)}_\d{{8}}-\d{{6}}\.log$")


#: acme's own record of a run (for resuming; see acme/state.py), not part of the
#: esi-acme layout: left out of the listings below unless asked for.
STATE_DIR = ".acme"


def _listing(folder: Union[str, Path], want_dirs: bool, with_state: bool) -> set:
    folder = Path(folder)
    found = set()
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).as_posix()
        if not with_state and (rel == STATE_DIR or rel.startswith(STATE_DIR + "/")):
            continue
        if p.is_dir() if want_dirs else p.is_file():
            found.add(rel)
    return found


def files_under(folder: Union[str, Path], with_state: bool = False) -> set:
    """Every file below ``folder`` (hidden ones included, acme's ``.acme`` run record
    only with ``with_state``), as '/'-separated relative paths."""
    return _listing(folder, False, with_state)


def dirs_under(folder: Union[str, Path], with_state: bool = False) -> set:
    """Every folder below ``folder``, like :func:`files_under`."""
    return _listing(folder, True, with_state)


def assert_no_tmp(folder: Union[str, Path]) -> None:
    """No half-written (temporary) file remains anywhere below ``folder``."""
    leftovers = sorted(p for p in files_under(folder, with_state=True)
                       if p.endswith(".tmp") or ".tmp" in Path(p).name)
    assert not leftovers, f"temporary files left in {folder}: {leftovers}"


def logs_in(folder: Union[str, Path]) -> list:
    return sorted(p.name for p in Path(folder).glob("*.log"))


def acme_dirs(folder: Union[str, Path]) -> list:
    """Default output folders (``ACME_<time>``) directly in ``folder``."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_dir() and ACME_DIR_RE.match(p.name))


def read_root(path: Union[str, Path]) -> dict:
    """Every dataset at the root of an HDF5 file: name -> numpy value."""
    with h5py.File(path, "r") as h5f:
        return {name: h5f[name][()] for name in h5f}


def decoded(arr) -> list:
    """An HDF5 string dataset's values (h5py gives bytes) as str."""
    return [v.decode() if isinstance(v, bytes) else v for v in np.asarray(arr).ravel()]


# ------------------------------------------------------------------ subprocesses
@dataclass
class Run:
    returncode: int
    output: str

    def __str__(self) -> str:
        return f"exit code {self.returncode}\n--- output ---\n{self.output}"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the process group the child leads (started with start_new_session)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait(timeout=10)


def run_python(script: Union[str, Path], args: Sequence[str] = (), timeout: float = 30,
               cwd: Optional[Union[str, Path]] = None,
               terminal_answer: Optional[str] = None, prompt: bytes = b"[Y/n]") -> Run:
    """Run ``python script args`` with stdout and stderr merged, within ``timeout`` s.

    With ``terminal_answer``, stdin is the slave side of a pseudo-terminal (so
    ``sys.stdin.isatty()`` is true in the child); once ``prompt`` appears in the output
    the answer is typed on it. Without, stdin is /dev/null (not a terminal).
    On timeout the child's whole process group is killed and TimeoutError raised.
    """
    cmd = [sys.executable, os.fspath(script), *map(str, args)]
    master = slave = None
    if terminal_answer is not None:
        master, slave = os.openpty()
    proc = subprocess.Popen(cmd, stdin=slave if slave is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd,
                            env=_env(), start_new_session=True)
    if slave is not None:
        os.close(slave)
    out = b""
    answered = False
    deadline = time.monotonic() + timeout
    try:
        fd = proc.stdout.fileno()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{cmd} did not finish within {timeout} s; output so "
                                   f"far:\n{out.decode(errors='replace')}")
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out += chunk
            if master is not None and not answered and prompt in out:
                os.write(master, terminal_answer.encode() + b"\n")
                answered = True
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        proc.stdout.close()
        if master is not None:
            os.close(master)
    return Run(proc.returncode, out.decode(errors="replace"))
