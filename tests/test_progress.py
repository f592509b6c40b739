"""Progress while compute() runs: a bar on a terminal, log lines when nobody watches
(stderr redirected, CI), nothing with verbose=False or ACME_NO_PROGRESS=1."""
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
        with ParallelMap(f, list(range(60)), WHERE,
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


def write(tmp_path, verbose, where="write_worker_results=False"):
    path = tmp_path / "progress_script.py"
    path.write_text(SCRIPT.replace("VERBOSE", verbose).replace("WHERE", where))
    return path


def progress_lines(text: str) -> list:
    return [line for line in text.splitlines() if "progress: f: " in line]


def test_progress_is_shown_on_a_terminal_with_done_failed_rate_and_time_left(tmp_path):
    shown = run_on_terminal(write(tmp_path, "None"), {"ACME_AUTO_SLURM": "0"})
    assert "FAILED [3, 13, 23, 33, 43, 53]" in shown
    final = [line for line in shown.replace("\r", "\n").splitlines()
             if "60/60" in line]
    assert final, shown
    assert "6 failed" in final[-1] or "failed=6" in final[-1], final[-1]
    assert "calls/s" in final[-1] or "call/s" in final[-1]
    assert "left" in final[-1] or "<" in final[-1]


def test_no_progress_with_verbose_false_or_acme_no_progress(tmp_path):
    quiet = run_on_terminal(write(tmp_path, "False"), {"ACME_AUTO_SLURM": "0"})
    assert "60/60" not in quiet and "FAILED" in quiet
    for value in ("1", "yes", " TRUE "):
        hidden = run_on_terminal(write(tmp_path, "None"), {"ACME_NO_PROGRESS": value})
        assert "60/60" not in hidden and "FAILED" in hidden, value
    piped = run_script(write(tmp_path, "False"))
    assert "60/60" not in piped.stderr and "FAILED" in piped.stdout


def test_acme_no_progress_reads_booleans_like_every_acme_variable(tmp_path):
    """0/no/false/off mean "not set", as for ACME_AUTO_SLURM; an unknown word is
    taken as set, with a warning that names the words."""
    for value in ("0", "off", "no", ""):
        shown = run_on_terminal(write(tmp_path, "None"), {"ACME_NO_PROGRESS": value})
        assert "60/60" in shown, (value, shown)
    odd = run_script(write(tmp_path, "None"), env={"ACME_NO_PROGRESS": "maybe"})
    assert "60/60" not in odd.stderr, odd
    assert odd.stderr.count("ACME_NO_PROGRESS='maybe' is not one of 1/true/yes/on") == 1
    assert "FAILED" in odd.stdout


def test_redirected_stderr_gets_a_log_line_per_tenth_and_a_summary(tmp_path):
    """esi-acme writes its tqdm bar into a redirected stderr; acme writes a few log
    lines instead (a batch log stays readable): one per tenth of the calls at most."""
    piped = run_script(write(tmp_path, "None"))
    lines = progress_lines(piped.stderr)
    assert 2 <= len(lines) <= 11, piped.stderr
    assert "\r" not in piped.stderr
    assert lines[-1].endswith("60/60 calls, 6 failed, in " + lines[-1].split(" in ")[-1])
    assert "calls/s" in lines[0] and "left" in lines[0], lines[0]
    counts = [int(line.split("progress: f: ")[1].split("/")[0]) for line in lines]
    assert counts == sorted(counts) and counts[-1] == 60, lines


def test_progress_lines_go_to_the_run_log_file_too(tmp_path):
    """On a terminal the bar is drawn and the log file gets the lines; with stderr in
    a file both get them."""
    shown = run_on_terminal(write(tmp_path, "None", "output_dir='on_tty'"))
    assert "60/60" in shown and "progress: f: " not in shown, shown
    log_files = list((tmp_path / "on_tty").glob("*.log"))
    assert log_files, list((tmp_path / "on_tty").iterdir())
    logged = progress_lines(log_files[0].read_text())
    assert logged and "60/60 calls, 6 failed" in logged[-1], logged
    piped = run_script(write(tmp_path, "None", "output_dir='piped'"))
    assert progress_lines(piped.stderr)
    assert progress_lines(next((tmp_path / "piped").glob("*.log")).read_text())


def test_ci_on_a_terminal_gets_log_lines_not_a_bar(tmp_path):
    in_ci = run_on_terminal(write(tmp_path, "None"), {"CI": "true", "ACME_AUTO_SLURM": "0"})
    in_ci = in_ci.replace("\r\n", "\n")  # the terminal's own line ends
    assert "FAILED" in in_ci and "\r" not in in_ci, in_ci
    assert progress_lines(in_ci), in_ci


def test_log_lines_never_flood(caplog, monkeypatch):
    """10 000 results one by one, stderr not a terminal: one line per tenth (9) and the
    summary; with the minute between lines made 0 s, one line per result."""
    import logging

    from acme import progress
    monkeypatch.delenv("ACME_NO_PROGRESS", raising=False)
    with caplog.at_level(logging.INFO, logger="acme"):
        bar = progress.Progress(10_000, "f", None)
        assert bar.mode == "log"
        for i in range(10_000):
            failed = int(i % 1000 == 0)
            bar.update(1 - failed, failed=failed)
        bar.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "acme.progress"]
    assert len(lines) == 10, lines
    assert lines[0].startswith("progress: f: 1000/10000 calls (10%), 1 failed, ")
    assert lines[-1].startswith("progress: f: 10000/10000 calls, 10 failed, in ")
    caplog.clear()
    monkeypatch.setattr(progress, "LOG_EVERY_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="acme"):
        bar = progress.Progress(50, "g", None)
        for _ in range(50):
            bar.update(1)
        bar.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "acme.progress"]
    assert len(lines) == 50, lines  # 49 updates (the 50th is the summary's) + summary
