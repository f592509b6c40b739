"""The log file, ``verbose`` and ``dryrun`` of runs with results on disk (issue 3).

Console output is checked in a subprocess: under pytest the root logger has pytest's
capture handlers, so acme (rightly) adds no console handler of its own and nothing
would reach stderr in-process whatever ``verbose`` says.
"""
from __future__ import annotations

import builtins
import io
import os
import re
import sys

import numpy as np
import pytest

from acme import ParallelMap, ParallelMapError

from disk_helpers import files_under, log_re, logs_in, run_python

pytestmark = pytest.mark.timeout(60)


def fails_on_3(x):
    if x == 3:
        raise ValueError(f"cannot handle {x}")  # this source line must be in the log
    return np.arange(2) * x


def plain(x):
    return np.arange(2) * x


def probe(x, marker, taskID=None):
    """Record which process ran which call, then return a small array."""
    with open(marker, "a") as fh:
        fh.write(f"{os.getpid()} {taskID}\n")
    return np.arange(3.0) * x


# ------------------------------------------------------------------ logfile
@pytest.mark.parametrize("backend", ["sequential", "local"])
def test_log_records_parameters_backend_failures_timings_and_place(tmp_path, backend):
    out = tmp_path / "out"
    logfile = tmp_path / "logs" / "my.log"
    logfile.parent.mkdir()
    with ParallelMap(fails_on_3, [1, 2, 3, 4], backend=backend, n_workers=2,
                     output_dir=out, logfile=str(logfile), result_dtype="float32") as pmap:
        with pytest.raises(ParallelMapError):
            pmap.compute()
    text = logfile.read_text()
    # the run's parameters
    assert "parameters:" in text
    assert "result_dtype='float32'" in text and "n_workers=2" in text
    # backend and worker count
    if backend == "local":
        assert re.search(r"local backend with 2 worker", text), text
    else:
        assert "sequential backend" in text, text
    # the failed call with its traceback, down to the function's source line
    assert "call 2 of fails_on_3 failed" in text, text
    assert 'raise ValueError(f"cannot handle {x}")' in text
    assert "ValueError: cannot handle 3" in text
    assert "Traceback (most recent call last)" in text
    # timings and where the results are
    assert re.search(r"3 of 4 calls of fails_on_3 done in \d+\.\d+ s \(1 failed\)", text), text
    assert str(out) in text
    assert f"results container: {out / 'fails_on_3.h5'}" in text
    # a given log file replaces the one in the output folder
    assert logs_in(out) == []


def test_logfile_none_with_disk_is_in_the_output_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    with ParallelMap(plain, [1, 2], backend="sequential", output_dir=out) as pmap:
        pmap.compute()
    logs = logs_in(out)
    assert len(logs) == 1 and log_re("plain").match(logs[0]), logs
    assert "done in" in (out / logs[0]).read_text()
    assert logs_in(tmp_path) == []


def test_logfile_false_writes_no_log(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    with ParallelMap(plain, [1, 2], backend="sequential", output_dir=out,
                     logfile=False) as pmap:
        pmap.compute()
    assert [p for p in files_under(tmp_path) if p.endswith(".log")] == []
    assert "plain_payload/plain_1.h5" in files_under(out)


def test_logfile_true_in_memory_goes_to_the_cwd(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with ParallelMap(plain, [1, 2], backend="sequential", write_worker_results=False,
                     logfile=True) as pmap:
        values = pmap.compute()
    np.testing.assert_array_equal(values[1], [0, 2])
    logs = logs_in(cwd)
    assert len(logs) == 1 and log_re("plain").match(logs[0]), logs
    assert files_under(cwd) == set(logs)  # nothing else written
    assert "2 of 2 calls of plain done in" in (cwd / logs[0]).read_text()


def test_logfile_none_in_memory_writes_no_log(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with ParallelMap(plain, [1, 2], backend="sequential",
                     write_worker_results=False) as pmap:
        pmap.compute()
    assert files_under(tmp_path) == set()


# ------------------------------------------------------------------ verbose
VERBOSE_SCRIPT = '''
import logging, sys
import numpy as np
from acme import ParallelMap

def g(x):
    logging.getLogger("acme").debug("debug-marker %d", x)
    return {"a": x} if x == 1 else np.arange(2) * x  # call 1: pickled, with a warning

if __name__ == "__main__":
    verbose = {"None": None, "True": True, "False": False}[sys.argv[1]]
    with ParallelMap(g, [0, 1, 2], backend="sequential", verbose=verbose,
                     output_dir="out", logfile=False) as pmap:
        pmap.compute()
    print("FINISHED")
'''


@pytest.mark.parametrize("verbose", ["None", "False", "True"])
def test_verbose_controls_console_output(tmp_path, verbose):
    script = tmp_path / "verbose_script.py"
    script.write_text(VERBOSE_SCRIPT)
    result = run_python(script, [verbose], cwd=tmp_path, timeout=45)
    assert result.returncode == 0, result
    text = result.output
    assert "FINISHED" in text
    info = [line for line in text.splitlines() if re.search(r"\bINFO\b", line)]
    # warnings are shown whatever verbose says: the log line and the UserWarning
    assert re.search(r"WARNING.*pickled", text), result
    assert "UserWarning" in text, result
    if verbose == "False":
        assert info == [], result
    else:
        assert any("done in" in line for line in info), result
    if verbose == "True":
        assert "debug-marker 0" in text, result
    else:
        assert "debug-marker" not in text, result


# ------------------------------------------------------------------ dry run
MODES = {
    "default": dict(),
    "single_file": dict(single_file=True, result_shape=(None, 3)),
    "write_pickle": dict(write_pickle=True),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_dryrun_without_terminal_measures_one_call_then_runs_all(tmp_path, monkeypatch,
                                                                  mode):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal

    def no_prompt(*args):
        raise AssertionError("asked a question without a terminal")
    monkeypatch.setattr(builtins, "input", no_prompt)
    out = tmp_path / "out"
    marker = tmp_path / "calls.txt"
    logfile = tmp_path / "run.log"
    n = 4
    with ParallelMap(probe, [1, 2, 3, 4], str(marker), backend="sequential",
                     output_dir=out, dryrun=True, logfile=str(logfile),
                     **MODES[mode]) as pmap:
        results = pmap.compute()
    assert results is not None and len(results) == (1 if mode == "single_file" else n)

    calls = [tuple(map(int, line.split())) for line in marker.read_text().splitlines()]
    dry = [task for pid, task in calls if pid != os.getpid()]
    here = sorted(task for pid, task in calls if pid == os.getpid())
    assert len(dry) == 1 and dry[0] in range(n), calls  # one call, another process
    assert here == list(range(n))                         # then every call

    text = logfile.read_text()
    match = re.search(r"dry run of call (\d+): (\d+\.\d+) s, peak memory (\d+\.\d+) MB",
                      text)
    assert match, text
    assert int(match.group(1)) == dry[0]
    assert float(match.group(3)) > 0

    # the dry run left no result file of its own
    files = {p for p in files_under(out) if not p.endswith(".log")}
    expected = {
        "default": {f"probe_payload/probe_{i}.h5" for i in range(n)} | {"probe.h5"},
        "single_file": {"probe.h5"},
        "write_pickle": {f"probe_{i}.pickle" for i in range(n)},
    }[mode]
    assert files == expected


TERMINAL_SCRIPT = '''
import sys
import numpy as np
from acme import ParallelMap

def g(x):
    return np.arange(3) * x

if __name__ == "__main__":
    print("STDIN IS A TTY:", sys.stdin.isatty(), flush=True)
    with ParallelMap(g, [1, 2, 3], dryrun=True, output_dir=sys.argv[1],
                     backend=sys.argv[2], n_workers=2,
                     setup_interactive=sys.argv[3] == "interactive") as pmap:
        results = pmap.compute()
    print("RESULTS:", results if results is None else len(results), flush=True)
'''


@pytest.mark.parametrize("answer, backend, interactive", [
    ("n", "sequential", "interactive"),
    ("y", "local", "interactive"),
    ("", "sequential", "not-interactive"),  # setup_interactive=False: never asks
])
def test_dryrun_on_a_terminal_asks_before_running(tmp_path, answer, backend, interactive):
    script = tmp_path / "terminal_script.py"
    script.write_text(TERMINAL_SCRIPT)
    out = tmp_path / "out"
    result = run_python(script, [out, backend, interactive], cwd=tmp_path, timeout=45,
                        terminal_answer=answer)
    assert result.returncode == 0, result
    text = result.output
    assert "STDIN IS A TTY: True" in text, result
    assert "dry run of call" in text, result
    assert ("[Y/n]" in text) is (interactive == "interactive"), result
    payloads = {p for p in files_under(out) if p.startswith("g_payload/")}
    if answer == "n":
        assert "RESULTS: None" in text, result
        assert payloads == set()
        assert "g.h5" not in files_under(out)
    else:
        assert "RESULTS: 3" in text, result
        assert payloads == {f"g_payload/g_{i}.h5" for i in range(3)}
