"""Never lose work (issue 6): a crashing call, a hanging call, SIGINT/SIGTERM sent to a
running script, and resuming, each checked for real -- worker processes really die,
signals are really sent to a script running in its own session, and what is left on
disk is read back with plain h5py.

The measured numbers (how long a stop took, how many calls re-ran on resume) are
printed with the prefix ``MEASURED`` (visible with ``pytest -s``) and appear in the
assertion messages.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import acme
from acme import CallTimeout, ParallelMap, ParallelMapError, WorkerDied

from conftest import TESTS_DIR, run_script
from disk_helpers import assert_no_tmp

pytestmark = pytest.mark.timeout(120)

N_CRASH = 50
CULPRIT = 23


# ------------------------------------------------------------------ the functions
def crash_at(x, culprit, how):
    """Call ``culprit`` ends its own worker process without a Python exception."""
    if x == culprit:
        if how == "os._exit":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)
    return np.array([x, x * x], dtype=float)


def hang_at(x, hanger):
    if x == hanger:
        time.sleep(600)
    return np.array([x, -x], dtype=float)


def counted(x, scale, markers, failing=(), flag=None):
    """Leaves a marker file per call (so a test can count the calls that ran); fails
    for ``x in failing`` while the file ``flag`` exists."""
    Path(markers, f"{os.getpid()}_{x}_{time.monotonic_ns()}").touch()
    if flag is not None and x in failing and os.path.exists(flag):
        raise ValueError(f"call {x} fails while {flag} exists")
    return np.arange(3, dtype=float) * scale + x


def marker_calls(markers) -> list:
    """Indices of the calls that left a marker, one entry per call that ran."""
    return sorted(int(p.name.split("_")[1]) for p in Path(markers).iterdir())


# ------------------------------------------------------------------ disk checks
def payload_indices(payload_dir: Path, stem: str, running: bool = False) -> set:
    """Indices of the payload files present; any other file there is an error
    (``running``: a run is still going on, its temporary files are skipped)."""
    found = set()
    if not payload_dir.is_dir():
        return found
    for p in payload_dir.iterdir():
        if running and p.name.endswith(".tmp"):
            continue
        m = re.fullmatch(rf"{re.escape(stem)}_(\d+)\.h5", p.name)
        assert m, f"unexpected file in {payload_dir}: {p.name}"
        found.add(int(m.group(1)))
    return found


def recorded_calls(out: Path) -> set:
    """The calls the run's journal (``.acme/done``) records as finished."""
    from acme.state import RunState
    return set(RunState(str(out)).recorded_results())


def check_output(out: Path, stem: str, n: int, expected, container_required=True) -> set:
    """Every payload that exists opens and holds ``expected(i)``; the run's journal
    records only calls whose payload exists (a payload written just as the run was
    stopped may be on disk unrecorded: it is no result, and a resume recomputes it);
    the container (if any, required unless told otherwise) opens and links exactly
    the recorded calls; nothing half-written is left. Returns the recorded calls."""
    on_disk = payload_indices(out / f"{stem}_payload", stem)
    for i in sorted(on_disk):
        with h5py.File(out / f"{stem}_payload" / f"{stem}_{i}.h5", "r") as h5f:
            np.testing.assert_array_equal(h5f["result_0"][()], expected(i),
                                          err_msg=f"payload of call {i}")
    done = recorded_calls(out)
    assert done <= on_disk, f"calls {sorted(done - on_disk)} are recorded without a payload"
    container = out / f"{stem}.h5"
    if container_required or container.exists():
        assert container.is_file(), f"no container {container}"
        with h5py.File(container, "r") as h5f:
            linked = resolving_links(h5f)
            assert linked == done, (f"the container links calls {sorted(linked ^ done)} "
                                    "differently from the run's journal")
            # esi-acme's layout: every call has its comp_i, dangling without a result
            assert {k for k in h5f if k.startswith("comp_")} == {f"comp_{i}" for i in range(n)}
            for i in sorted(linked):
                np.testing.assert_array_equal(h5f[f"comp_{i}/result_0"][()], expected(i))
            missing = sorted(int(i) for i in h5f.attrs["acme_missing_calls"])
            assert missing == sorted(set(range(n)) - done)
    assert_no_tmp(out)
    return done


def resolving_links(h5f) -> set:
    """The calls whose ``comp_i`` link reaches a payload (a dangling one does not)."""
    linked = set()
    for key in h5f:
        if key.startswith("comp_"):
            try:
                h5f[key]
            except KeyError:
                continue
            linked.add(int(key.split("_")[1]))
    return linked


def failure_record(out: Path, index: int) -> dict:
    with open(out / ".acme" / "failures" / f"call_{index}.json", encoding="utf-8") as fh:
        return json.load(fh)


# ------------------------------------------------------------------ processes
def _proc_stat(pid: int):
    """(state, pgrp) of a process, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0], int(fields[2])


def live_in_group(pgid: int) -> list:
    """PIDs of live (non-zombie) processes in process group ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _proc_stat(int(entry.name))
            if st and st[1] == pgid and st[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def descendants(pid: int) -> list:
    import psutil
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def wait_until(condition, timeout: float, what: str, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR.parent), str(TESTS_DIR)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


class Script:
    """A Python script started in its own session (its PID is its process group),
    output to files; killed by its group id if the test leaves it running."""

    def __init__(self, path: Path, args, log_dir: Path, tag: str, **env):
        self.out_path = log_dir / f"{tag}.stdout"
        self.err_path = log_dir / f"{tag}.stderr"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, str(path), *map(str, args)],
                                         stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         env=_env(**env), start_new_session=True)
        self.pid = self.proc.pid

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def kill_group(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def __str__(self) -> str:
        return (f"exit code {self.proc.returncode}\n--- stdout ---\n{self.stdout}"
                f"\n--- stderr ---\n{self.stderr}")


# ================================================================== crashing call
@pytest.mark.timeout(60)
@pytest.mark.parametrize("how, detail", [("os._exit", r"exit code 3"),
                                         ("SIGKILL", r"signal 9")])
def test_a_crashing_call_among_50_fails_alone_with_49_results_on_disk(
        how, detail, tmp_path, no_leftover_processes):
    out = tmp_path / "out"
    with pytest.raises(ParallelMapError) as info:
        with ParallelMap(crash_at, list(range(N_CRASH)), CULPRIT, how, output_dir=str(out),
                         n_workers=2, backend="local", verbose=False) as pmap:
            pmap.compute()
    err = info.value
    assert err.failed == [CULPRIT]
    assert f"calls {CULPRIT})" in str(err) and f"call {CULPRIT} " in str(err), str(err)
    assert isinstance(err.__cause__, WorkerDied)
    assert re.search(rf"worker died \({detail}", str(err)), str(err)
    done = check_output(out, "crash_at", N_CRASH, lambda i: [i, i * i])
    assert done == set(range(N_CRASH)) - {CULPRIT}
    assert len(done) == 49
    assert [r is None for r in err.results] == [i == CULPRIT for i in range(N_CRASH)]
    record = failure_record(out, CULPRIT)
    assert record["type"] == "WorkerDied" and re.search(detail, record["message"]), record
    assert sorted(os.listdir(out / ".acme" / "failures")) == [f"call_{CULPRIT}.json"]
    assert pmap.stats["workers_started"] >= 3  # a new worker took the dead one's place


@pytest.mark.timeout(150)
@pytest.mark.parametrize("case", ["crash_exit", "crash_kill"])
def test_a_crashing_call_under_mpi_ends_the_run_naming_it_and_resume_finishes(
        case, tmp_path):
    from mpi_helpers import run_mpi
    out = tmp_path / "out"
    flag = tmp_path / "crash.flag"
    flag.touch()
    start = time.monotonic()
    proc = run_mpi("reliability.py", 3, case, str(out), str(flag), timeout=60)
    seconds = time.monotonic() - start
    assert proc.returncode != 0, f"the run ended normally:\n{proc.stdout}\n{proc.stderr}"
    assert "NOT REACHED" not in proc.stdout
    lost = re.search(r"calls (\[[\d, ]*\]) were running on worker ranks \[[\d, ]*\] and "
                     r"(\d+) calls had not started", proc.stderr)
    assert lost, proc.stderr
    lost_calls, not_started = json.loads(lost.group(1)), int(lost.group(2))
    assert CULPRIT in lost_calls
    # finished payloads are on disk and intact; the container may not have been
    # written (mpiexec ends rank 0 quickly), but if it was, it must be valid
    done = check_output(out, "crash_at", N_CRASH, lambda i: [i, i * i],
                        container_required=False)
    assert CULPRIT not in done
    # every call without a result was named as lost or counted as not started (a
    # named call may still have finished on disk: its note never reached rank 0)
    assert len(set(range(N_CRASH)) - done - set(lost_calls)) == not_started, (
        sorted(done), lost_calls, not_started)
    assert len(done) >= 10, f"only {len(done)} calls finished before the crash"
    print(f"MEASURED mpi {case}: ended after {seconds:.1f} s with {len(done)} of "
          f"{N_CRASH} results on disk")

    # the same script, resumed on this machine without the crash: only the rest runs
    flag.unlink()
    script = TESTS_DIR / "mpi_scripts" / "reliability.py"
    run = run_script(script, timeout=60, args=["resume", str(out), str(flag),
                                               case.split("_")[1]])
    assert run.returncode == 0, str(run)
    ran = json.loads(re.search(r"RESUMED (\{.*\})", run.stdout).group(1))
    assert ran == {"ran": N_CRASH - len(done), "resumed": len(done)}, run.stdout
    print(f"MEASURED mpi {case}: resume re-ran {ran['ran']} calls")
    assert check_output(out, "crash_at", N_CRASH, lambda i: [i, i * i]) == set(range(N_CRASH))


# ================================================================== hanging call
@pytest.mark.timeout(60)
def test_a_hanging_call_with_timeout_fails_alone_and_the_rest_completes(
        tmp_path, no_leftover_processes):
    out = tmp_path / "out"
    start = time.monotonic()
    with pytest.raises(ParallelMapError) as info:
        with ParallelMap(hang_at, list(range(20)), 7, output_dir=str(out), timeout=2,
                         n_workers=2, backend="local", verbose=False) as pmap:
            pmap.compute()
    seconds = time.monotonic() - start
    print(f"MEASURED timeout=2: 20 calls, one sleeping 600 s, ended after {seconds:.2f} s")
    err = info.value
    assert seconds < 20, f"the run took {seconds:.1f} s"
    assert err.failed == [7]
    assert isinstance(err.__cause__, CallTimeout)
    assert "timed out after 2 s" in str(err), str(err)
    done = check_output(out, "hang_at", 20, lambda i: [i, -i])
    assert done == set(range(20)) - {7}
    assert failure_record(out, 7)["type"] == "CallTimeout"


@pytest.mark.timeout(90)
def test_a_hanging_call_with_timeout_under_mpi(tmp_path):
    from mpi_helpers import run_mpi
    out = tmp_path / "out"
    proc = run_mpi("reliability.py", 3, "hang", str(out), "unused", timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(re.search(r"HANG (\{.*\})", proc.stdout).group(1))
    assert result["error"] == "ParallelMapError" and result["failed"] == [7], result
    assert result["cause"] == "CallTimeout", result
    assert result["seconds"] < 20, result
    print(f"MEASURED mpi timeout=2: 20 calls, one sleeping 600 s, ended after "
          f"{result['seconds']:.2f} s")
    done = check_output(out, "hang_at", 20, lambda i: [i, -i])
    assert done == set(range(20)) - {7}
    assert failure_record(out, 7)["rank"] in (1, 2)


# ================================================================== SIGINT / SIGTERM
SIGNAL_SCRIPT = '''
import json, os, sys, time
import numpy as np
from acme import ParallelMap


def slow(x, scale, markers, big):
    """Leaves a marker (run tag, index) and takes a while; call ``big`` returns 200 MB
    (so that its payload takes about half a second to write)."""
    open(os.path.join(markers, os.environ["ACME_TEST_RUN"] + "_" + str(x)), "w").close()
    if x == big:
        return np.full(25_000_000, x * scale)
    time.sleep(0.2)
    return np.arange(4, dtype=float) * scale + x


if __name__ == "__main__":
    out, markers, mode, n, big = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    with ParallelMap(slow, list(range(n)), 2.5, markers, big, output_dir=out, n_workers=2,
                     backend="local", resume=(mode == "resume")) as pmap:
        pmap.compute()
    print("STATS " + json.dumps({"ran": pmap.stats["ran"], "resumed": pmap.stats["resumed"]}))
'''

N_SIG = 30


def slow_expected(i):
    return np.arange(4, dtype=float) * 2.5 + i


def run_markers(markers: Path, tag: str) -> list:
    return sorted(int(p.name.split("_", 1)[1]) for p in markers.iterdir()
                  if p.name.startswith(tag + "_"))


def _stop(script: Script, signum: int) -> float:
    """Send ``signum`` to the script's PID (not its group) and time how long it takes
    to exit; every process of its group must be gone afterwards."""
    children = descendants(script.pid)
    assert children, "the script has no worker processes while it runs"
    start = time.monotonic()
    os.kill(script.pid, signum)
    try:
        script.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the script did not stop within 30 s of "
                             f"{signal.Signals(signum).name}") from None
    seconds = time.monotonic() - start
    # workers may take a moment to be reaped by init after the script is gone
    deadline = time.monotonic() + 2.0
    while (live_in_group(script.pid) or any(map(alive, children))) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    left = sorted(set(live_in_group(script.pid)) | {p for p in children if alive(p)})
    assert not left, f"processes still running after the stop: {left}"
    return seconds


@pytest.mark.timeout(90)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_quickly_and_resume_runs_only_the_rest(signum, tmp_path):
    name = signal.Signals(signum).name
    script_path = tmp_path / "signal_script.py"
    script_path.write_text(SIGNAL_SCRIPT)
    out, markers = tmp_path / "out", tmp_path / "markers"
    markers.mkdir()
    args = [out, markers, "fresh", N_SIG, -1]
    first = Script(script_path, args, tmp_path, "first", ACME_TEST_RUN="first")
    try:
        wait_until(lambda: (out / ".acme" / "done").is_file() and len(recorded_calls(out)) >= 6,
                   30, "the first recorded calls")
        seconds = _stop(first, signum)
    finally:
        first.kill_group()
    print(f"MEASURED {name}: the script stopped {seconds:.2f} s after the signal")
    assert seconds < 5.0, f"{name}: stopping took {seconds:.2f} s\n{first}"
    assert first.proc.returncode != 0, str(first)
    stderr = first.stderr
    assert re.search(r"the run was interrupted after [\d.]+ s: (\d+) calls have results, "
                     r"0 failed, (\d+) were not finished", stderr), stderr
    assert "resume=True" in stderr and str(out) in stderr, stderr

    done = check_output(out, "slow", N_SIG, slow_expected)
    assert 6 <= len(done) < N_SIG, done
    counts = re.search(r"(\d+) calls have results, 0 failed, (\d+) were not finished", stderr)
    assert (int(counts.group(1)), int(counts.group(2))) == (len(done), N_SIG - len(done))
    assert set(run_markers(markers, "first")) >= done

    second = Script(script_path, [out, markers, "resume", N_SIG, -1], tmp_path, "second",
                    ACME_TEST_RUN="second")
    try:
        second.proc.wait(timeout=45)
    finally:
        second.kill_group()
    assert second.proc.returncode == 0, str(second)
    stats = json.loads(re.search(r"STATS (\{.*\})", second.stdout).group(1))
    rerun = run_markers(markers, "second")
    print(f"MEASURED {name}: {len(done)} calls were done before the stop; resume re-ran "
          f"{stats['ran']} of {N_SIG} calls")
    assert stats == {"ran": N_SIG - len(done), "resumed": len(done)}, (
        f"{name}: resume ran {stats['ran']} calls, expected {N_SIG - len(done)}")
    assert rerun == sorted(set(range(N_SIG)) - done), (
        f"{name}: resume re-ran calls {rerun}; {sorted(done)} were done already")
    assert check_output(out, "slow", N_SIG, slow_expected) == set(range(N_SIG))
    assert not os.listdir(out / ".acme" / "failures")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_a_payload_write_leaves_no_partial_file(signum, tmp_path):
    """Stop the run while a worker writes a large payload: that call has no result
    file, nothing half-written (no temporary file) is left, and a resume completes."""
    name = signal.Signals(signum).name
    script_path = tmp_path / "signal_script.py"
    script_path.write_text(SIGNAL_SCRIPT)
    out, markers = tmp_path / "out", tmp_path / "markers"
    markers.mkdir()
    big = 3

    def writing_big():
        return any(p.name.startswith(f".slow_{big}.h5.") and p.name.endswith(".tmp")
                   and p.stat().st_size > 1_000_000
                   for p in (out / "slow_payload").glob(".*.tmp"))

    first = Script(script_path, [out, markers, "fresh", 8, big], tmp_path, "first",
                   ACME_TEST_RUN="first")
    try:
        wait_until(lambda: (out / "slow_payload").is_dir() and writing_big(), 30,
                   "the large payload being written", interval=0.002)
        seconds = _stop(first, signum)
    finally:
        first.kill_group()
    try:
        print(f"MEASURED {name} during a 200 MB payload write: stopped after {seconds:.2f} s")
        assert seconds < 5.0, f"{name}: stopping took {seconds:.2f} s\n{first}"
        assert_no_tmp(out)
        done = payload_indices(out / "slow_payload", "slow")
        assert big not in done, "the payload being written when the run stopped exists"
        check_output(out, "slow", 8, lambda i: np.full(25_000_000, i * 2.5) if i == big
                     else slow_expected(i))

        second = Script(script_path, [out, markers, "resume", 8, big], tmp_path, "second",
                        ACME_TEST_RUN="second")
        try:
            second.proc.wait(timeout=45)
        finally:
            second.kill_group()
        assert second.proc.returncode == 0, str(second)
        assert big in run_markers(markers, "second")
        with h5py.File(out / "slow_payload" / f"slow_{big}.h5", "r") as h5f:
            assert h5f["result_0"].shape == (25_000_000,)
            assert h5f["result_0"][-1] == big * 2.5
        assert_no_tmp(out)
    finally:
        import shutil
        shutil.rmtree(out, ignore_errors=True)  # 200 MB: do not keep it in tmp


@pytest.mark.parametrize("result_shape", [None, (None, 4)])
def test_the_container_links_only_the_calls_that_were_reported(tmp_path, result_shape):
    """A worker may finish writing its payload just as the run is stopped, before the
    scheduler hears of it (seen above about 1 run in 6). Such a file is no result:
    nothing recorded it, so it may as well be a planted or stale file; the container
    links only reported calls (a resume recomputes the others) -- and a stale
    temporary file of a killed writer is removed."""
    from acme.container import build_container
    from acme.layout import OutputLayout
    from acme.result_spec import ResultSpec
    from acme.sinks import PayloadSink
    layout = OutputLayout(str(tmp_path), "slow")
    os.makedirs(layout.payload_dir)
    spec = ResultSpec(result_shape) if result_shape else None
    sink = PayloadSink(layout, spec)
    stored = {i: sink.store(i, slow_expected(i)) for i in range(6)}
    reported = {i: s for i, s in stored.items() if i not in (2, 5)}
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = Path(layout.payload_dir, f".slow_6.h5.{dead.pid}.tmp")
    stale.write_bytes(b"half a file")
    build_container(layout, 8, spec, reported)
    assert not stale.exists()
    with h5py.File(layout.container, "r") as h5f:
        if result_shape:  # one return value: no comp_i, only the stacked result_0
            assert not [k for k in h5f if k.startswith("comp_")]
        else:
            assert resolving_links(h5f) == {0, 1, 3, 4}
            for i in (0, 1, 3, 4):
                np.testing.assert_array_equal(h5f[f"comp_{i}/result_0"][()],
                                              slow_expected(i))
        assert sorted(int(i) for i in h5f.attrs["acme_missing_calls"]) == [2, 5, 6, 7]
        if result_shape:
            data = h5f["result_0"][()]
    if result_shape:
        for i in (0, 1, 3, 4):
            np.testing.assert_array_equal(data[i], slow_expected(i))
        assert np.isnan(data[[2, 5, 6, 7]]).all()


# ================================================================== resume refused
@pytest.mark.timeout(60)
def test_resume_is_refused_for_a_changed_argument_or_number_of_calls(tmp_path):
    out, markers = tmp_path / "out", tmp_path / "markers"
    markers.mkdir()
    with ParallelMap(counted, list(range(10)), 2.0, str(markers), output_dir=str(out),
                     backend="sequential", verbose=False) as pmap:
        pmap.compute()
    assert len(marker_calls(markers)) == 10
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    def refused(*args, **kwargs) -> str:
        with pytest.raises(ValueError, match="resume=True refused") as info:
            with ParallelMap(counted, *args, output_dir=str(out), resume=True,
                             backend="sequential", verbose=False, **kwargs) as p:
                p.compute()
        return str(info.value)

    message = refused(list(range(10)), 3.0, str(markers))
    assert re.search(r"positional argument 1\b|\bscale\b", message), message
    assert "positional argument 0" not in message, message
    message = refused(list(range(10)), 2.0, markers=str(markers))
    assert "'markers'" in message and "added" in message, message
    message = refused(list(range(10)), 2.0, str(markers), failing=frozenset({1, 2}))
    assert "keyword argument 'failing'" in message, message
    message = refused(list(range(12)), 2.0, str(markers))
    assert "number of calls was 10, now 12" in message, message
    message = refused(list(range(10)), 2.0, str(markers), result_shape=(None, 3))
    assert "result_shape" in message, message

    assert len(marker_calls(markers)) == 10, "a refused resume ran calls"
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before, "a refused resume changed the output folder"

    # the same run resumes, and with nothing left to do runs nothing
    with ParallelMap(counted, list(range(10)), 2.0, str(markers), output_dir=str(out),
                     resume=True, backend="sequential", verbose=False) as pmap:
        files = pmap.compute()
    assert pmap.stats["ran"] == 0 and len(marker_calls(markers)) == 10
    assert files == [str(out / "counted_payload" / f"counted_{i}.h5") for i in range(10)]


# ================================================================== single_file resume
@pytest.mark.timeout(60)
def test_resume_of_a_single_file_run_with_result_shape(tmp_path, no_leftover_processes):
    out, markers, flag = tmp_path / "out", tmp_path / "markers", tmp_path / "fail.flag"
    markers.mkdir()
    flag.touch()
    n, failing = 12, frozenset({4, 9})

    def make(resume):
        return ParallelMap(counted, list(range(n)), 2.0, str(markers), failing=failing,
                           flag=str(flag), output_dir=str(out), single_file=True,
                           result_shape=(None, 3), n_workers=2, backend="local",
                           resume=resume, verbose=False)

    with pytest.raises(ParallelMapError) as info:
        with make(False) as pmap:
            pmap.compute()
    assert info.value.failed == sorted(failing)
    with h5py.File(out / "counted.h5", "r") as h5f:
        data = h5f["result_0"][()]
        assert sorted(h5f.attrs["acme_missing_calls"]) == sorted(failing)
    for i in range(n):
        if i in failing:
            assert np.isnan(data[i]).all()
        else:
            np.testing.assert_array_equal(data[i], np.arange(3) * 2.0 + i)
    assert len(marker_calls(markers)) == n

    flag.unlink()
    with make(True) as pmap:
        result = pmap.compute()
    rerun = marker_calls(markers)[:]
    print(f"MEASURED single_file resume re-ran {pmap.stats['ran']} of {n} calls")
    assert pmap.stats["ran"] == len(failing), pmap.stats
    assert sorted(rerun) == sorted(list(range(n)) + list(failing))
    assert result == [str(out / "counted.h5")]
    with h5py.File(out / "counted.h5", "r") as h5f:
        np.testing.assert_array_equal(h5f["result_0"][()],
                                      np.arange(3)[None, :] * 2.0 + np.arange(n)[:, None])
        assert list(h5f.attrs["acme_missing_calls"]) == []
        assert not h5f["result_0"].is_virtual
    assert not os.listdir(out / ".acme" / "failures")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("ACME_")) == \
        [".acme", "counted.h5"]
    assert_no_tmp(out)
    assert np.array_equal(acme.load_stacked(str(out)),
                          np.arange(3)[None, :] * 2.0 + np.arange(n)[:, None])
