"""Progress while compute() runs: shown on a terminal only, never in logs or CI."""
from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import pytest

from conftest import run_script

pytestmark = pytest.mark.timeout(60)

SCRIPT = """
import time
from acme import ParallelMap

def f(x):
    time.sleep(0.01)
    if x % 10 == 3:
        raise ValueError(x)
    return x

if __name__ == "__main__":
    try:
        with ParallelMap(f, list(range(60)), write_worker_results=False,
                         backend="local", n_workers=2, verbose=VERBOSE) as pmap:
            pmap.compute()
    except Exception as exc:
        print("FAILED", exc.failed)
"""


def run_on_terminal(path, env_extra=None, timeout=30.0) -> str:
    """Run ``python path`` with stderr on a pseudo-terminal; return what it showed."""
    master, slave = os.openpty()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("CI", None)  # the test runs under CI=true itself
    env.update(env_extra or {})
    proc = subprocess.Popen([sys.executable, str(path)], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        else:
            os.killpg(proc.pid, 9)
            pytest.fail(f"did not finish in {timeout} s:\n{out.decode(errors='replace')}")
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
        os.close(master)
    return out.decode(errors="replace")


def write(tmp_path, verbose):
    path = tmp_path / "progress_script.py"
    path.write_text(SCRIPT.replace("VERBOSE", verbose))
    return path


def test_progress_is_shown_on_a_terminal_with_done_failed_rate_and_time_left(tmp_path):
    shown = run_on_terminal(write(tmp_path, "None"), {"ACME_AUTO_SLURM": "0"})
    assert "FAILED [3, 13, 23, 33, 43, 53]" in shown
    final = [line for line in shown.replace("\r", "\n").splitlines()
             if "60/60" in line]
    assert final, shown
    assert "6 failed" in final[-1] or "failed=6" in final[-1], final[-1]
    assert "calls/s" in final[-1] or "call/s" in final[-1]
    assert "left" in final[-1] or "<" in final[-1]


def test_no_progress_with_verbose_false_or_in_ci_or_without_a_terminal(tmp_path):
    quiet = run_on_terminal(write(tmp_path, "False"), {"ACME_AUTO_SLURM": "0"})
    assert "60/60" not in quiet and "FAILED" in quiet
    in_ci = run_on_terminal(write(tmp_path, "None"), {"CI": "true", "ACME_AUTO_SLURM": "0"})
    assert "60/60" not in in_ci and "FAILED" in in_ci
    piped = run_script(write(tmp_path, "None"))
    assert "60/60" not in piped.stderr and "FAILED" in piped.stdout
