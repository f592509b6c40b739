"""Shared helpers of the acme test suite.

* :func:`require` -- skip a test whose infrastructure (MPI, parallel h5py, SLURM) is
  missing; with ``ACME_REQUIRE_INFRA=1`` (set by CI) the skip becomes a failure.
  Use it as a plain function (``from conftest import require``) or as the fixture
  ``require``.
* :func:`run_script` -- run ``python3`` on a script file or on code in a subprocess
  with a time limit; on timeout the whole process group it started is killed (by
  the child's PID, never by name).
* an autouse fixture that runs every test inside its own ``tmp_path`` (results
  default to ``./ACME_*`` folders in the current directory).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import pytest

#: Environment variable that turns "infrastructure missing" skips into failures.
REQUIRE_INFRA_ENV = "ACME_REQUIRE_INFRA"

#: The directory holding the tests (scripts run by tests import helpers from here).
TESTS_DIR = Path(__file__).resolve().parent

# backend="auto" submits SLURM jobs where SLURM is usable (as on a login node), and the
# test cluster runs during the tests: keep "auto" local here and in every script the
# tests start (tests/test_slurm.py asks for SLURM explicitly). Export ACME_AUTO_SLURM=1
# to run the whole suite's "auto" maps through SLURM instead.
os.environ.setdefault("ACME_AUTO_SLURM", "0")


def infra_required() -> bool:
    """True when CI asked that missing infrastructure fails instead of skipping."""
    return os.environ.get(REQUIRE_INFRA_ENV, "").strip() == "1"


def require(condition: bool, reason: str) -> None:
    """Skip the calling test unless ``condition`` holds; fail instead under CI.

    Parameters
    ----------
    condition : bool
        Whether what the test needs (MPI, parallel h5py, SLURM, ...) is present.
    reason : str
        What is missing, shown as the skip (or failure) reason.
    """
    if condition:
        return
    if infra_required():
        pytest.fail(f"{reason} ({REQUIRE_INFRA_ENV}=1: missing infrastructure is a "
                    "failure here)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(name="require")
def require_fixture():
    """The :func:`require` helper as a fixture."""
    return require


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Run each test in its own empty directory (ACME_* result folders land there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _child_pids() -> set:
    """PIDs of this process's live children (zombies excluded)."""
    try:
        import psutil
    except ImportError:  # fall back to what multiprocessing knows about
        import multiprocessing
        return {p.pid for p in multiprocessing.active_children()}
    pids = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                pids.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


@pytest.fixture
def no_leftover_processes():
    """Fail the test if it leaves child processes running (workers must be stopped).

    Leftovers are killed by PID so that later tests are not disturbed.
    """
    before = _child_pids()
    yield
    deadline = time.monotonic() + 3.0
    leftover = _child_pids() - before
    while leftover and time.monotonic() < deadline:
        time.sleep(0.05)
        leftover = _child_pids() - before
    for pid in leftover:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not leftover, f"the test left child processes running: {sorted(leftover)}"


def pytest_configure(config):
    if not config.pluginmanager.hasplugin("timeout"):
        # Keep @pytest.mark.timeout known even where pytest-timeout is missing
        # (it is a test dependency: pip install pytest-timeout).
        config.addinivalue_line("markers", "timeout(seconds): time limit of a test")


# ------------------------------------------------------------------ subprocesses
@dataclass
class ScriptResult:
    """What a script run produced."""

    args: list
    returncode: int
    stdout: str
    stderr: str
    #: processes of the script's process group still alive after it exited
    #: (they were killed by run_script; a clean script leaves none)
    leftovers: bool

    def __str__(self) -> str:
        return (f"command {self.args} exited with {self.returncode}\n"
                f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid`` (Linux: read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # fields after "(comm)": state ppid pgrp ...
        fields = stat[stat.rindex(")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def _group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process is still in process group ``pgid``."""
    if not Path("/proc").is_dir():  # not Linux: ask the kernel (zombies count as alive)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return bool(group_members(pgid))


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_script(code_or_path: Union[str, os.PathLike], timeout: float = 60.0,
               args: Sequence[str] = (), stdin: bool = False,
               env: Optional[dict] = None, cwd: Optional[Union[str, os.PathLike]] = None,
               ) -> ScriptResult:
    """Run ``python3`` on a script file or a piece of code, with a time limit.

    Parameters
    ----------
    code_or_path : str or path
        A path to an existing ``.py`` file (run as ``python3 path``), or Python code
        (run as ``python3 -c code``, or fed to ``python3 -`` on stdin when ``stdin``
        is true, like code typed at a prompt).
    timeout : float
        Seconds the process may run. On timeout its whole process group (the
        script and any workers it started) is killed and the test fails.
    args : sequence of str
        Command-line arguments for the script.
    stdin : bool
        Feed ``code_or_path`` (code) to ``python3 -`` on standard input.
    env : dict, optional
        Extra environment variables (added to the current environment).
    cwd : path, optional
        Working directory (default: the current one, i.e. the test's tmp_path).
    """
    is_path = isinstance(code_or_path, os.PathLike) or (
        not stdin and "\n" not in str(code_or_path) and str(code_or_path).endswith(".py")
        and Path(code_or_path).is_file())
    if is_path:
        cmd = [sys.executable, os.fspath(code_or_path), *args]
        feed = None
    elif stdin:
        cmd = [sys.executable, "-", *args]
        feed = str(code_or_path)
    else:
        cmd = [sys.executable, "-c", str(code_or_path), *args]
        feed = None
    full_env = dict(os.environ)
    full_env["PYTHONUNBUFFERED"] = "1"
    # Scripts run from tmp_path: let them import the acme checkout and these helpers.
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS_DIR.parent), str(TESTS_DIR)] +
        ([full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else []))
    if env:
        full_env.update(env)
    # Output goes to files, not pipes: a worker left behind that still holds the
    # script's stdout must not keep us waiting after the script itself has ended.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE if feed is not None else subprocess.DEVNULL,
            stdout=out, stderr=err, text=True, env=full_env, cwd=cwd,
            start_new_session=True)
        pgid = proc.pid  # start_new_session: the child leads its own process group

        def output() -> tuple:
            out.seek(0)
            err.seek(0)
            return out.read(), err.read()

        try:
            proc.communicate(input=feed, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(pgid)
            proc.wait()
            stdout, stderr = output()
            pytest.fail(f"{cmd[:2]} did not finish within {timeout} s; its process group "
                        f"was killed.\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}")
        except BaseException:
            _kill_group(pgid)
            proc.wait()
            raise
        # Anything of the script's group still running after it exited is a leak.
        leftovers = False
        deadline = time.monotonic() + 2.0
        while _group_alive(pgid):
            if time.monotonic() > deadline:
                leftovers = True
                _kill_group(pgid)
                break
            time.sleep(0.05)
        stdout, stderr = output()
    return ScriptResult(cmd, proc.returncode, stdout, stderr, leftovers)
