"""The test helpers themselves: ``require`` (skip, or fail under CI) and
``run_script`` (time limit, process-group cleanup)."""
from __future__ import annotations

import os
import time

import pytest

from conftest import REQUIRE_INFRA_ENV, require, run_script

pytestmark = pytest.mark.timeout(60)


def test_require_passes_when_condition_holds(monkeypatch):
    monkeypatch.setenv(REQUIRE_INFRA_ENV, "1")
    require(True, "never shown")


def test_require_skips_normally(monkeypatch):
    monkeypatch.delenv(REQUIRE_INFRA_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no MPI here"):
        require(False, "no MPI here")


def test_require_fails_under_ci(monkeypatch):
    monkeypatch.setenv(REQUIRE_INFRA_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="no MPI here"):
        require(False, "no MPI here")


def test_require_fixture(require):
    with pytest.raises((pytest.skip.Exception, pytest.fail.Exception), match="absent"):
        require(False, "absent")


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False


def _wait_dead(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


START_CHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open("child.pid", "w").write(str(child.pid))
print("started", flush=True)
{rest}
"""


def test_run_script_returns_output_and_code():
    run = run_script("import sys; print('hello'); sys.stderr.write('oops'); sys.exit(3)")
    assert (run.returncode, run.stdout.strip(), run.stderr) == (3, "hello", "oops")
    assert not run.leftovers


def test_run_script_reads_code_from_stdin():
    run = run_script("import sys; print(sys.argv[0])", stdin=True)
    assert run.stdout.strip() == "-"


def test_run_script_timeout_kills_the_whole_group(tmp_path):
    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc to look at processes")
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="did not finish within 1"):
        run_script(START_CHILD.format(rest="time.sleep(120)"), timeout=1)
    assert time.monotonic() - start < 10
    child = int((tmp_path / "child.pid").read_text())
    assert _wait_dead(child), "the script's child survived the timeout"


def test_run_script_reports_and_kills_leftovers(tmp_path):
    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc to look at processes")
    run = run_script(START_CHILD.format(rest=""), timeout=30)
    assert run.returncode == 0
    assert run.leftovers
    child = int((tmp_path / "child.pid").read_text())
    assert _wait_dead(child)
