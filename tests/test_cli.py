"""The command line (issue 8): ``python -m acme status|errors|show DIR`` and the
``acme`` console script, on output folders written by real runs: complete, with
failures (an exception and a worker that died), interrupted, with a deleted payload,
and folders that are not acme runs. Output and exit codes (0 done, 1 failed or
missing, 2 usage / not an acme folder)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest

from acme import ParallelMap, ParallelMapError

pytestmark = pytest.mark.timeout(60)

ACME_SCRIPT = shutil.which("acme")


# ------------------------------------------------------------------ the functions
def square_row(x):
    return np.array([x, x * x, -x], dtype=float)


def flaky(x):
    if x == 2:
        raise ValueError(f"bad value {x}")  # the source line the tracebacks show
    if x == 4:
        os._exit(3)
    return np.array([x, x * x, -x], dtype=float)


def interrupted_at_7(x):
    if x == 2:
        raise ValueError(f"bad value {x}")
    if x == 7:
        raise KeyboardInterrupt  # what Ctrl-C does to a sequential run
    return np.array([x, x * x, -x], dtype=float)


def one_value(x):
    return float(x)


# ------------------------------------------------------------------ real runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Output folders of real runs (made once for the module; tests that change a
    folder work on a copy)."""
    base = tmp_path_factory.mktemp("cli_runs")
    folders = {}

    folders["complete"] = base / "complete"
    with ParallelMap(square_row, list(range(6)), output_dir=str(folders["complete"]),
                     result_shape=(None, 3), n_workers=2, backend="local",
                     verbose=False) as pmap:
        pmap.compute()

    folders["failures"] = base / "failures"
    with pytest.raises(ParallelMapError):
        with ParallelMap(flaky, list(range(8)), output_dir=str(folders["failures"]),
                         n_workers=2, backend="local", verbose=False) as pmap:
            pmap.compute()

    folders["interrupted"] = base / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        with ParallelMap(interrupted_at_7, list(range(12)),
                         output_dir=str(folders["interrupted"]), backend="sequential",
                         verbose=False) as pmap:
            pmap.compute()
    # and a payload lost afterwards (deleted by hand, disk trouble, ...)
    (folders["interrupted"] / "interrupted_at_7_payload" / "interrupted_at_7_4.h5").unlink()

    # without result_shape: one comp_i link per call (in acme's and esi-acme's layout)
    folders["rows"] = base / "rows"
    with ParallelMap(square_row, list(range(6)), output_dir=str(folders["rows"]),
                     n_workers=2, backend="local", verbose=False) as pmap:
        pmap.compute()

    folders["many"] = base / "many"
    with ParallelMap(one_value, list(range(1500)), output_dir=str(folders["many"]),
                     backend="sequential", verbose=False) as pmap:
        pmap.compute()

    folders["not_acme"] = base / "not_acme"
    folders["not_acme"].mkdir()
    (folders["not_acme"] / "notes.txt").write_text("not a run\n")
    folders["a_file"] = base / "a_file.txt"
    folders["a_file"].write_text("just a file\n")
    folders["nowhere"] = base / "does_not_exist"
    return folders


@dataclass
class Out:
    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit code {self.code}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


def cli(*args, console: bool = False, timeout: float = 30, cwd=None) -> Out:
    """``python -m acme ARGS`` (or the ``acme`` console script), killed by its
    process group if it does not end in time."""
    if console:
        assert ACME_SCRIPT, "the `acme` console script is not on PATH"
        cmd = [ACME_SCRIPT]
    else:
        cmd = [sys.executable, "-m", "acme"]
    proc = subprocess.Popen(cmd + [str(a) for a in args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{cmd + list(args)} did not end within {timeout} s")
    return Out(proc.returncode, out, err)


# ------------------------------------------------------------------ status
def test_status_of_a_complete_run(runs):
    r = cli("status", runs["complete"])
    assert r.code == 0, str(r)
    first = r.stdout.splitlines()[0]
    assert first.startswith(f"{runs['complete']}: ") and "square_row" in first, first
    assert "6 calls" in first and "(files)" in first, first
    assert re.search(r"^\s+done:\s+6$", r.stdout, re.M), r.stdout
    assert re.search(r"^\s+failed:\s+0$", r.stdout, re.M), r.stdout
    assert re.search(r"^\s+missing:\s+0$", r.stdout, re.M), r.stdout
    assert "resume" not in r.stdout and r.stderr == "", str(r)


def test_status_of_a_run_with_failures(runs):
    r = cli("status", runs["failures"])
    assert r.code == 1, str(r)
    assert re.search(r"^\s+done:\s+6$", r.stdout, re.M), r.stdout
    assert re.search(r"^\s+failed:\s+2\s+\(calls 2, 4\)$", r.stdout, re.M), r.stdout
    assert re.search(r"^\s+missing:\s+0$", r.stdout, re.M), r.stdout
    # each failure's first line, with its type and where it ran
    assert re.search(r"^\s+call 2: ValueError: bad value 2\s+\[\S+, pid \d+\]$",
                     r.stdout, re.M), r.stdout
    assert re.search(r"^\s+call 4: WorkerDied: call 4: worker died \(exit code 3\)",
                     r.stdout, re.M), r.stdout
    assert f"output_dir={str(runs['failures'])!r}, resume=True" in r.stdout, r.stdout


def test_status_of_an_interrupted_run_lists_missing_calls_as_ranges(runs):
    r = cli("status", runs["interrupted"])
    assert r.code == 1, str(r)
    assert re.search(r"^\s+done:\s+5$", r.stdout, re.M), r.stdout  # 0, 1, 3, 5, 6
    assert re.search(r"^\s+failed:\s+1\s+\(calls 2\)$", r.stdout, re.M), r.stdout
    assert re.search(r"^\s+missing:\s+6\s+\(calls 4, 7-11\)$", r.stdout, re.M), r.stdout
    assert "call 2: ValueError: bad value 2" in r.stdout
    assert "resume=True" in r.stdout


def test_status_json(runs):
    r = cli("status", runs["interrupted"], "--json")
    assert r.code == 1, str(r)
    data = json.loads(r.stdout)
    assert data["n_calls"] == 12 and data["mode"] == "files"
    assert data["function"].endswith("interrupted_at_7")
    assert data["done"] == [0, 1, 3, 5, 6]
    assert data["missing"] == [4, 7, 8, 9, 10, 11]
    assert data["failed"] == {"2": "ValueError: bad value 2"}
    assert os.path.samefile(data["folder"], runs["interrupted"])

    r = cli("status", "--json", runs["complete"])
    assert r.code == 0, str(r)
    data = json.loads(r.stdout)
    assert (data["done"], data["failed"], data["missing"]) == ([0, 1, 2, 3, 4, 5], {}, [])


@pytest.mark.parametrize("command", ["status", "errors", "show"])
@pytest.mark.parametrize("what", ["not_acme", "a_file", "nowhere"])
def test_a_folder_that_is_not_an_acme_run_is_exit_code_2(runs, command, what):
    r = cli(command, runs[what])
    assert r.code == 2, str(r)
    assert r.stdout == "", str(r)
    assert r.stderr.startswith(f"acme {command}: "), str(r)
    assert "Traceback" not in r.stderr, str(r)
    if command != "show":
        expected = "no such folder" if what != "not_acme" else "not an acme output folder"
        assert expected in r.stderr, str(r)


@pytest.mark.parametrize("args", [[], ["bogus"], ["status"], ["show", "--limit", "x", "."],
                                  ["status", "--bogus", "."]])
def test_usage_errors_are_exit_code_2(args):
    r = cli(*args)
    assert r.code == 2, str(r)
    assert "usage: acme" in r.stdout + r.stderr, str(r)
    assert "Traceback" not in r.stderr, str(r)


# ------------------------------------------------------------------ errors
def test_errors_shows_full_tracebacks_with_the_source_line(runs):
    r = cli("errors", runs["failures"])
    assert r.code == 1, str(r)
    blocks = re.split(r"^=== ", r.stdout, flags=re.M)[1:]
    assert [b.split()[1] for b in blocks] == ["2", "4"], r.stdout
    head, _, body = blocks[0].partition("\n")
    assert re.match(r"call 2 \(host \S+, pid \d+, after [\d.]+ s, [\d\-T:]+\) ===$", head), head
    assert "Traceback (most recent call last):" in body
    assert re.search(rf'File "{re.escape(__file__)}", line \d+, in flaky', body), body
    assert 'raise ValueError(f"bad value {x}")  # the source line' in body, body
    assert body.rstrip().endswith("ValueError: bad value 2"), body
    # a worker that died has no Python traceback: its type and message instead
    assert "WorkerDied: call 4: worker died (exit code 3)" in blocks[1], blocks[1]


def test_errors_of_a_run_without_failures(runs):
    r = cli("errors", runs["complete"])
    assert r.code == 0, str(r)
    assert r.stdout.strip() == f"no failed calls in {runs['complete']}"


# ------------------------------------------------------------------ show
def test_show_lists_the_stacked_dataset_and_every_call(runs):
    r = cli("show", runs["complete"])
    assert r.code == 0, str(r)
    lines = r.stdout.splitlines()
    assert lines[0] == str(runs["complete"] / "square_row.h5")
    assert "  result_0: shape (6, 3), dtype float64 (virtual)" in lines
    assert "  @acme_n_calls = 6" in lines
    assert "MISSING" not in r.stdout
    r = cli("show", runs["rows"])
    assert r.code == 0, str(r)
    lines = r.stdout.splitlines()
    comps = [line.split()[0] for line in lines if line.startswith("  comp_")]
    assert comps == [f"comp_{i}" for i in range(6)], r.stdout
    for i in range(6):
        k = lines.index(f"  comp_{i} -> square_row_payload/square_row_{i}.h5")
        assert lines[k + 1] == "      result_0: shape (3,), dtype float64", r.stdout
    assert "MISSING" not in r.stdout


def test_show_reports_a_deleted_payload_as_missing(runs, tmp_path):
    copy = tmp_path / "moved"
    shutil.copytree(runs["rows"], copy)  # the links are relative: the copy works
    (copy / "square_row_payload" / "square_row_4.h5").unlink()
    r = cli("show", copy)
    assert r.code == 1, str(r)
    assert re.search(r"^  comp_4 -> square_row_payload/square_row_4\.h5: MISSING",
                     r.stdout, re.M), r.stdout
    assert "  comp_3 -> square_row_payload/square_row_3.h5" in r.stdout.splitlines()
    assert "Traceback" not in r.stderr
    # and status counts it as missing
    r = cli("status", copy)
    assert r.code == 1, str(r)
    assert re.search(r"^\s+done:\s+5$", r.stdout, re.M), r.stdout
    assert re.search(r"^\s+missing:\s+1\s+\(calls 4\)$", r.stdout, re.M), r.stdout
    # a stacked run: the call is named as one without a result
    copy = tmp_path / "stacked"
    shutil.copytree(runs["complete"], copy)
    (copy / "square_row_payload" / "square_row_4.h5").unlink()
    r = cli("show", copy)
    assert r.code == 1 and "  calls without a result: 4" in r.stdout.splitlines(), str(r)


def test_show_limits_the_calls_shown(runs):
    r = cli("show", runs["rows"], "--limit", "2")
    assert r.code == 0, str(r)
    comps = [line.split()[0] for line in r.stdout.splitlines() if line.startswith("  comp_")]
    assert comps == ["comp_0", "comp_1"], r.stdout
    assert "... and 4 more calls (--limit to show more)" in r.stdout


def test_show_piped_into_head_does_not_print_a_traceback(runs):
    """``acme show DIR --limit 2000 | head -1``: the reader goes away early."""
    proc = subprocess.Popen([sys.executable, "-m", "acme", "show", str(runs["many"]),
                             "--limit", "2000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        first = proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read().decode()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert first.decode().strip().endswith("one_value.h5")
    assert "Traceback" not in err, err


# ------------------------------------------------------------------ help, console script
@pytest.mark.parametrize("args", [["--help"], ["-h"], ["status", "--help"],
                                  ["errors", "--help"], ["show", "--help"]])
def test_help_everywhere(args):
    r = cli(*args)
    assert r.code == 0, str(r)
    assert r.stdout.startswith("usage: acme"), r.stdout
    if len(args) == 1:
        for command in ("status", "errors", "show"):
            assert command in r.stdout
        assert "Exit codes" in r.stdout
    else:
        assert f"usage: acme {args[0]}" in r.stdout and "folder" in r.stdout


@pytest.mark.parametrize("args", [["status", "failures"], ["status", "interrupted", "--json"],
                                  ["errors", "failures"], ["show", "complete"],
                                  ["status", "not_acme"], ["--help"]])
def test_the_console_script_works_like_python_m_acme(runs, args):
    args = [runs[a] if a in runs else a for a in args]
    module = cli(*args)
    script = cli(*args, console=True)
    assert (script.code, script.stdout, script.stderr) == \
        (module.code, module.stdout, module.stderr), f"{script}\n\nvs python -m acme:\n{module}"


# ------------------------------------------------------------------ pickled calls
def dict_at_2(x):
    if x == 2:
        return {"not": "HDF5"}  # HDF5 cannot hold it: pickled
    return x * 2


ESI_VENV = os.environ.get("ACME_ESI_VENV",
                          os.path.expanduser("~/.cache/acme-test/esi-acme"))

ESI_SCRIPT = """
from acme import ParallelMap
def dict_at_2(x):
    if x == 2:
        return {"not": "HDF5"}
    return x * 2
if __name__ == "__main__":
    with ParallelMap(dict_at_2, [1, 2, 3], output_dir=OUT, n_workers=2,
                     setup_interactive=False) as pmap:
        pmap.compute()
"""


@pytest.mark.parametrize("options", [{}, {"single_file": True}, {"write_pickle": True}],
                         ids=["files", "single_file", "write_pickle"])
def test_show_counts_pickled_calls_as_results(tmp_path, options):
    """A call whose value was pickled has a result; `acme show` says where it is."""
    out = tmp_path / "out"
    with ParallelMap(dict_at_2, [1, 2, 3], output_dir=str(out), backend="local",
                     n_workers=2, verbose=False, **options) as pmap:
        pmap.compute()
    r = cli("show", out)
    assert r.code == 0, str(r)
    assert "calls without a result: 1" not in r.stdout, r.stdout
    assert re.search(r"^  call 1: \S*dict_at_2_1\.pickle \(pickle, \d+ bytes", r.stdout,
                     re.M), r.stdout
    if not options.get("write_pickle"):  # a copy without acme's records: the same
        copy = tmp_path / "copy"
        shutil.copytree(out, copy)
        shutil.rmtree(copy / ".acme")
        r = cli("show", copy)
        assert r.code == 0 and "without a result: 1" not in r.stdout, str(r)
        assert re.search(r"^  call 1: (dict_at_2_payload/)?dict_at_2_1\.pickle ", r.stdout,
                         re.M), r.stdout


def test_show_reads_esi_acme_folder_with_a_pickled_call(tmp_path, require):
    """esi-acme 2026.6.2 removes the container when a call's value was pickled and
    leaves f_0.h5, f_1.pickle, f_2.h5: show lists them (it refused the folder)."""
    python = os.path.join(ESI_VENV, "bin", "python")
    require(os.path.exists(python), f"no esi-acme venv at {ESI_VENV} "
                                    "(scripts/esi_acme_env.sh)")
    stubs = tmp_path / "nosl"  # esi-acme takes any host with `sinfo` for a cluster
    stubs.mkdir()
    for name in ("sinfo", "squeue", "srun", "sbatch", "scancel", "scontrol", "sacct"):
        (stubs / name).write_text("#!/bin/sh\nexit 127\n")
        (stubs / name).chmod(0o755)
    out = tmp_path / "esi_out"
    script = tmp_path / "esi_script.py"
    script.write_text(ESI_SCRIPT.replace("OUT", repr(str(out))))
    env = dict(os.environ, PATH=f"{stubs}:{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)  # it could lead esi-acme's python to our `acme`
    proc = subprocess.run([python, str(script)], cwd=tmp_path, env=env, timeout=240,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in out.iterdir() if not p.name.endswith(".log"))
    assert names == ["dict_at_2_0.h5", "dict_at_2_1.pickle", "dict_at_2_2.h5"], names
    r = cli("show", out)
    assert r.code == 0, str(r)
    lines = r.stdout.splitlines()
    assert "  calls with a result: 0-2" in lines and "  calls without a result: none" \
        in lines, r.stdout
    assert re.search(r"^  call 1: dict_at_2_1\.pickle \(pickle, \d+ bytes\)$", r.stdout,
                     re.M), r.stdout
    k = lines.index("  call 0: dict_at_2_0.h5")
    assert lines[k + 1].startswith("      result_0: shape "), r.stdout
    (out / "dict_at_2_0.h5").unlink()  # a lost file is a call without a result
    r = cli("show", out)
    assert r.code == 1 and "  calls without a result: 0" in r.stdout.splitlines(), str(r)


# ------------------------------------------------------------------ status --watch
WATCHED = """
import sys, time
from acme import ParallelMap, ParallelMapError

def slow(x):
    time.sleep(DELAY)
    if x == 5:
        raise ValueError("five")
    return x

if __name__ == "__main__":
    try:
        with ParallelMap(slow, list(range(N)), output_dir=sys.argv[1], verbose=False,
                         BACKEND) as pmap:
            pmap.compute()
    except ParallelMapError as exc:
        print("FAILED", exc.failed)
"""

BACKENDS = {"local": "backend='local', n_workers=2",
            "mpi": "n_workers=2",  # under mpiexec: the MPI backend
            # (a test cluster busy with other tests' jobs may keep it pending a while)
            "slurm": "backend='slurm', partition='small', n_workers=2, "
                     "setup_timeout=240"}


def start_watched_run(tmp_path, kind: str, n: int = 30, delay: float = 0.2):
    """Start a map of ``n`` calls (call 5 fails) in its own process group; return the
    process and its output folder once the run holds the folder."""
    from acme.__main__ import lock_holder_pid
    script = tmp_path / f"watched_{kind}.py"
    script.write_text(WATCHED.replace("BACKEND", BACKENDS[kind]).replace("N", str(n))
                      .replace("DELAY", str(delay)))
    out = tmp_path / f"out_{kind}"
    env = dict(os.environ, ACME_AUTO_SLURM="0", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(script), str(out)]
    if kind == "mpi":
        from mpi_helpers import mpi_env, require_mpi
        require_mpi()
        env = mpi_env()
        cmd = ["mpiexec", "-n", "3", sys.executable, "-m", "acme.mpi_run", str(script),
               str(out)]
    if kind == "slurm":
        from mpi_helpers import require_slurm
        require_slurm()
        for key in ("SLURM_JOB_ID", "SLURM_JOBID"):  # submit as from a login node
            env.pop(key, None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 60
    while lock_holder_pid(str(out)) is None or not (out / ".acme" / "run.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail(f"the {kind} run did not start: {proc.communicate()}")
        time.sleep(0.05)
    return proc, out


def stop(proc) -> None:
    """End the run's process group (and, for mpiexec, the ranks below it) by PID."""
    if proc.poll() is None:
        from mpi_helpers import _kill_launch
        _kill_launch(proc.pid)
    proc.wait(timeout=30)


def counts_seen(text: str) -> list:
    return [int(m.group(1)) for m in re.finditer(r"^  (\d+)/30 done, ", text, re.M)]


@pytest.mark.timeout(420)
@pytest.mark.parametrize("kind", ["local", "mpi", "slurm"])
def test_watch_follows_a_live_run_until_it_ends(tmp_path, kind):
    proc, out = start_watched_run(tmp_path, kind)
    try:
        r = cli("status", "--watch", out, "--interval", "0.2", timeout=360)
        run_out, run_err = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert proc.returncode == 0 and "FAILED [5]" in run_out, (run_out, run_err)
    assert r.code == 1, str(r)  # call 5 failed
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"watching {out}: __main__.slow, 30 calls"), r.stdout
    seen = counts_seen(r.stdout)
    assert seen == sorted(seen) and len(seen) >= 2, r.stdout
    assert seen[0] < 29, f"the watch saw no call finish while the run was live: {seen}"
    assert "the run has ended; its status:" in lines, r.stdout
    assert re.search(r"^  done:    29$", r.stdout, re.M), r.stdout
    assert re.search(r"^  failed:  1  \(calls 5\)$", r.stdout, re.M), r.stdout


@pytest.mark.timeout(120)
def test_watch_ends_at_its_timeout_and_at_ctrl_c_and_the_run_goes_on(tmp_path):
    proc, out = start_watched_run(tmp_path, "local", delay=0.5)
    try:
        r = cli("status", "--watch", out, "--timeout", "1", "--interval", "0.2")
        assert r.code == 3, str(r)
        assert r.stdout.splitlines()[-1] == "still running after 1 s (stopped watching)"
        watcher = subprocess.Popen([sys.executable, "-m", "acme", "status", "--watch",
                                    str(out)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        try:
            header = watcher.stdout.readline()
            assert header.startswith("watching "), header
            watcher.send_signal(signal.SIGINT)
            w_out, w_err = watcher.communicate(timeout=30)
        finally:
            if watcher.poll() is None:
                os.killpg(watcher.pid, signal.SIGKILL)
                watcher.wait()
        assert watcher.returncode == 130, (w_out, w_err)
        assert w_out.splitlines()[-1] == "stopped watching (the run goes on)", w_out
        assert "Traceback" not in w_err, w_err
        run_out, _ = proc.communicate(timeout=90)
    finally:
        stop(proc)
    assert proc.returncode == 0 and "FAILED [5]" in run_out
    r = cli("status", "--watch", out)  # the run is over: its status, at once
    assert r.code == 1 and "no run is using this folder now" in r.stdout, str(r)
    assert re.search(r"^  done:    29$", r.stdout, re.M), r.stdout


@pytest.mark.parametrize("args", [["--interval", "0"], ["--timeout", "-1"],
                                  ["--interval", "soon"], ["--json"]])
def test_watch_refuses_bad_options(runs, args):
    r = cli("status", "--watch", runs["complete"], *args)
    assert r.code == 2, str(r)
    assert "Traceback" not in r.stderr
    assert ("expected a number of seconds > 0" in r.stderr
            or "--watch and --json do not go together" in r.stderr), r.stderr


# ------------------------------------------------------------------ show --plot
def grows(x):
    block = np.ones(x * 1_000_000)  # 8 MB more per call index
    time.sleep(0.01)
    if x % 5 == 3:
        raise ValueError(f"bad {x}")
    return float(block.sum())


def red_pixels(png) -> int:
    from matplotlib.image import imread
    image = imread(str(png))
    red = (image[..., 0] > 0.8) & (image[..., 1] < 0.2) & (image[..., 2] < 0.2)
    return int(red.sum())


@pytest.mark.timeout(120)
def test_show_plot_draws_durations_memory_and_failures_of_a_local_run(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "grows_run"
    with pytest.raises(ParallelMapError):
        with ParallelMap(grows, list(range(16)), output_dir=str(out), backend="local",
                         n_workers=2, verbose=False) as pmap:
            pmap.compute()
    timeline = [line.split("\t") for line in
                (out / ".acme" / "calls.tsv").read_text().splitlines()]
    assert sorted(int(f[0]) for f in timeline) == list(range(16))
    by_index = {int(f[0]): f for f in timeline}
    assert {i for i, f in by_index.items() if f[3] == "0"} == {3, 8, 13}
    # each call's peak is its own: call 15 holds 120 MB more than call 0 did
    assert float(by_index[15][5]) - float(by_index[0][5]) > 100, by_index
    png = tmp_path / "grows.png"
    r = cli("show", out, "--plot", "--plot-file", png, "--limit", "0")
    assert r.code == 1, str(r)  # calls 3, 8 and 13 failed
    assert f"plot of 16 calls: {png} (from {out}/.acme/calls.tsv)" in r.stdout, r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert red_pixels(png) > 50  # the failures are drawn (red crosses and line)
    # the default file is in the current folder, named after the run's folder
    r = cli("show", out, "--plot", "--limit", "0", cwd=tmp_path)
    assert (tmp_path / "grows_run_calls.png").exists(), str(r)


@pytest.mark.timeout(60)
def test_show_plot_without_a_timeline_says_what_is_not_recorded(runs, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "interrupted.png"  # a sequential run: no timeline
    r = cli("show", runs["interrupted"], "--plot", "--plot-file", png)
    assert r.code == 1, str(r)
    assert "(from the times of the result files and failure records)" in r.stdout, r.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_show_plot_without_matplotlib_or_acme_records_is_a_clear_error(runs, tmp_path):
    # matplotlib is installed here; a None entry in sys.modules is what an
    # uninstalled package looks like to `import`
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from acme.__main__ import main\n"
            f"sys.exit(main(['show', {str(runs['complete'])!r}, '--plot']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc
    assert "drawing needs matplotlib, which is not installed here: pip install " \
        "matplotlib" in proc.stderr, proc.stderr
    esi_like = tmp_path / "no_records"
    shutil.copytree(runs["complete"], esi_like)
    shutil.rmtree(esi_like / ".acme")
    r = cli("show", esi_like, "--plot")
    assert r.code == 2 and "--plot needs the records of an acme run" in r.stderr, str(r)
