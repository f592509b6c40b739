"""Issue 13, results on disk that must be trusted (items 2, 3, 4, 7, 16 and the
resume parts of the "damaged records" items):

* two maps (or two resumes) started at once on one output folder: one is refused,
  naming the folder and the other run; nothing is mixed (real concurrent processes);
* a full disk (a real small tmpfs) in every disk mode, on the sequential and the
  local backend: no partial file counts as done, the failed calls name ENOSPC, the
  process survives; with space again a resume gives exactly the reference results;
* kill -9 of the scheduler during the single-file merge: the status is truthful and
  a resume completes the run correctly;
* truncated, empty, planted and never-journaled result files are not results;
* links planted in the output folder never send a write elsewhere.

Every result is read back with plain h5py/pickle from the documented layout.
"""
from __future__ import annotations

import json
import os
import pickle
import random
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
from acme import ParallelMap
import acme.state as acme_state
from acme.state import RunState, StateError
from acme.layout import OutputLayout
from conftest import require

#: the checkout whose acme the test process imported (scripts import the same one)
ACME_ROOT = Path(acme.__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

SCRIPT = r'''
import json, os, sys, time
import numpy as np
from acme import ParallelMap


def work(x, tag, delay, big, fail_flag):
    if fail_flag and os.path.exists(fail_flag) and x % 2:
        raise RuntimeError(f"call {x} fails while {fail_flag} exists")
    time.sleep(delay)
    return np.full(4, float(x)) + tag, np.full(big, float(x))


if __name__ == "__main__":
    out, opts, start_at = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
    n, tag = opts.pop("n"), opts.pop("tag", 0.0)
    delay, big, flag = opts.pop("delay", 0.0), opts.pop("big", 8), opts.pop("flag", "")
    while time.time() < start_at:
        time.sleep(0.001)
    try:
        with ParallelMap(work, list(range(n)), tag, delay, big, flag, output_dir=out,
                         verbose=False, **opts) as pmap:
            pmap.compute()
        print("RESULT ok", json.dumps(pmap.stats.get("ran")), flush=True)
    except Exception as exc:
        print("RESULT", type(exc).__name__, " ".join(str(exc).split()), flush=True)
'''

MODES = {
    "files": {},
    "files+shape": {"result_shape": [None, 4]},
    "single_file": {"single_file": True},
    "single_file+shape": {"single_file": True, "result_shape": [None, 4]},
    "pickle": {"write_pickle": True},
}


def mode_name(opts: dict) -> str:
    if opts.get("write_pickle"):
        return "pickle"
    return "single_file" if opts.get("single_file") else "files"


def expected(i: int, tag: float = 0.0, big: int = 8) -> tuple:
    return np.full(4, float(i)) + tag, np.full(big, float(i))


def read_call(out: Path, opts: dict, i: int) -> tuple:
    """Call ``i``'s two return values, read with plain h5py/pickle from the layout."""
    if opts.get("write_pickle"):
        with open(out / f"work_{i}.pickle", "rb") as fh:
            return tuple(pickle.load(fh))
    if opts.get("single_file"):
        with h5py.File(out / "work.h5", "r") as h5f:
            if opts.get("result_shape"):
                return h5f["result_0"][i], h5f[f"comp_{i}/result_1"][()]
            return h5f[f"comp_{i}/result_0"][()], h5f[f"comp_{i}/result_1"][()]
    with h5py.File(out / "work_payload" / f"work_{i}.h5", "r") as h5f:
        return h5f["result_0"][()], h5f["result_1"][()]


def assert_all_right(out: Path, opts: dict, n: int, tag: float = 0.0, big: int = 8):
    for i in range(n):
        got = read_call(out, opts, i)
        want = expected(i, tag, big)
        np.testing.assert_array_equal(got[0], want[0], err_msg=f"call {i} result_0")
        np.testing.assert_array_equal(got[1], want[1], err_msg=f"call {i} result_1")


def no_tmp(out: Path) -> list:
    return sorted(str(p) for p in out.rglob("*") if p.name.endswith(".tmp"))


def status(out: Path, opts: dict, n: int) -> tuple:
    state = RunState(str(out), "work")
    spec = None
    if opts.get("result_shape"):
        from acme.result_spec import ResultSpec
        spec = ResultSpec(tuple(opts["result_shape"]), "float")
    return acme_state.verify_results(state, OutputLayout(str(out), "work"),
                                     mode_name(opts), n, spec)


class Proc:
    """A script run in its own process group, killed by its group id at the end."""

    def __init__(self, tmp_path: Path, out: Path, opts: dict, start_at: float = 0.0):
        script = tmp_path / "trust_disk_script.py"
        if not script.exists():
            script.write_text(SCRIPT)
        path = [str(ACME_ROOT), str(TESTS)] + ([os.environ["PYTHONPATH"]]
                                               if os.environ.get("PYTHONPATH") else [])
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(path))
        self.log = open(tmp_path / f"proc_{time.monotonic_ns()}.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(out), json.dumps(opts), str(start_at)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait(self, timeout: float = 60) -> str:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self.kill()
        self.log.seek(0)
        return self.log.read()

    def result(self, timeout: float = 60) -> str:
        text = self.wait(timeout)
        found = re.findall(r"^RESULT (.*)$", text, re.M)
        assert found, f"no RESULT line (exit {self.proc.returncode}):\n{text}"
        return found[-1]

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        else:  # the script ended; workers it left in its group must go too
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def tmpfs(tmp_path):
    """Mount small tmpfs file systems (``mount(size)`` -> path); unmounted after."""
    mounted = []

    def mount(size: str) -> Path:
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(target)], capture_output=True, text=True, timeout=30)
        require(proc.returncode == 0, f"cannot mount a tmpfs ({proc.stderr.strip()}); "
                "these tests need root")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        if subprocess.run(["umount", str(target)], capture_output=True,
                          timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


# ================================================================== item 2
@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", ["sequential", "local"])
def test_two_maps_started_at_once_on_one_new_folder_one_is_refused(tmp_path, backend):
    """Both processes see a new folder at the same instant; exactly one runs, the
    other is told which run has the folder. Several trials."""
    trials = 5 if backend == "sequential" else 3
    for trial in range(trials):
        out = tmp_path / f"out{trial}"
        start_at = time.time() + 5.0  # both are past their imports by then
        opts = {"n": 12, "delay": 0.15, "backend": backend}  # runs overlap for > 1 s
        if backend == "local":
            opts["n_workers"] = 2
        procs = [Proc(tmp_path, out, dict(opts, tag=100.0 * k), start_at) for k in (0, 1)]
        results = [p.result(90) for p in procs]
        winners = [k for k, r in enumerate(results) if r.startswith("ok")]
        assert len(winners) == 1, f"trial {trial}: {results}"
        loser = results[1 - winners[0]]
        assert loser.startswith("OutputDirInUse"), f"trial {trial}: {results}"
        assert str(out) in loser and "pid" in loser and "host" in loser, loser
        assert_all_right(out, {}, 12, tag=100.0 * winners[0])
        assert len(RunState(str(out), "work").recorded_results()) == 12
    print(f"MEASURED {trials} trials of two simultaneous maps ({backend}): one refused each")


def slow_row(x):
    time.sleep(0.1)
    return np.full(2, float(x))


@pytest.mark.timeout(60)
def test_two_maps_of_one_process_on_one_folder_one_is_refused(tmp_path):
    """POSIX locks do not conflict within a process: two threads are caught too."""
    import threading
    out = tmp_path / "out"
    results = []
    barrier = threading.Barrier(2)

    def run():
        barrier.wait()
        try:
            with ParallelMap(slow_row, list(range(10)), output_dir=str(out),
                             backend="sequential", verbose=False) as pmap:
                pmap.compute()
            results.append("ok")
        except Exception as exc:  # noqa: BLE001 - what the test looks at
            results.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(r[:14] for r in results) == ["OutputDirInUse", "ok"], results
    assert "pid" in [r for r in results if r != "ok"][0]


@pytest.mark.timeout(240)
def test_two_resumes_at_once_never_both_run(tmp_path):
    out, flag = tmp_path / "out", tmp_path / "fail.flag"
    flag.touch()
    first = Proc(tmp_path, out, {"n": 12, "delay": 0.1, "backend": "sequential",
                                 "flag": str(flag)})
    assert first.result().startswith("ParallelMapError")
    flag.unlink()
    for trial in range(3):
        start_at = time.time() + 3.0
        opts = {"n": 12, "delay": 0.1, "backend": "sequential", "resume": True,
                "flag": str(flag)}
        procs = [Proc(tmp_path, out, opts, start_at) for _ in range(2)]
        results = sorted(p.result(90) for p in procs)
        ran = [json.loads(r.split()[1]) for r in results if r.startswith("ok")]
        refused = [r for r in results if r.startswith("OutputDirInUse")]
        if trial == 0:
            assert len(refused) == 1 and ran == [6], results
            assert str(out) in refused[0] and "pid" in refused[0], refused
        else:  # the run is complete: a resume runs nothing, or is refused while the
            assert set(ran) <= {0} and len(ran) + len(refused) == 2, results  # other runs
    assert_all_right(out, {}, 12)


@pytest.mark.timeout(120)
def test_a_run_killed_by_sigkill_does_not_block_a_later_resume(tmp_path):
    out = tmp_path / "out"
    proc = Proc(tmp_path, out, {"n": 40, "delay": 0.05, "backend": "local",
                                "n_workers": 2})
    deadline = time.monotonic() + 30
    while len(list((out / "work_payload").glob("work_*.h5"))) < 5:
        assert time.monotonic() < deadline, proc.wait(1)
        time.sleep(0.01)
    os.kill(proc.proc.pid, signal.SIGKILL)
    proc.wait(10)
    second = Proc(tmp_path, out, {"n": 40, "delay": 0.05, "backend": "local",
                                  "n_workers": 2, "resume": True})
    assert second.result().startswith("ok")
    assert_all_right(out, {}, 40)


# ================================================================== item 3
@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["sequential", "local"])
@pytest.mark.parametrize("mode", list(MODES))
def test_a_full_disk_counts_no_partial_file_and_resume_gives_the_reference(
        tmpfs, tmp_path, backend, mode):
    disk = tmpfs("2m")
    out = disk / "out"
    n, big = 30, 20_000  # 30 x 160 kB do not fit into 2 MB
    opts = dict(MODES[mode], backend=backend, n=n, big=big)
    if backend == "local":
        opts["n_workers"] = 2
    first = Proc(tmp_path, out, dict(opts))
    result = first.result(120)
    assert first.proc.returncode == 0, f"the run's process died: {first.wait(1)}"
    assert result.startswith("ParallelMapError"), result
    assert "No space left on device" in result, result
    assert str(out) in result, f"the error names no file: {result}"
    assert not no_tmp(out), no_tmp(out)
    done, damaged = status(out, opts, n)
    assert not damaged, damaged
    assert len(done) < n
    for i in done:  # what the records call done is complete and right
        if mode_name(opts) != "single_file" or done[i].endswith(".pickle"):
            got = read_call(out, opts, i)
            np.testing.assert_array_equal(got[1], expected(i, big=big)[1])

    subprocess.run(["mount", "-o", "remount,size=32m", str(disk)], check=True, timeout=30)
    second = Proc(tmp_path, out, dict(opts, resume=True))
    result = second.result(120)
    assert result == f"ok {n - len(done)}", result
    assert_all_right(out, MODES[mode], n, big=big)
    done, damaged = status(out, opts, n)
    assert sorted(done) == list(range(n)) and not damaged
    assert not no_tmp(out), no_tmp(out)
    assert not (out / ".work_parts").exists()


# ================================================================== item 4
def _wait_for(predicate, seconds: float, proc: Proc) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if proc.proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"never happened; the run:\n{proc.wait(1)}")
        time.sleep(0.0005)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["single_file", "single_file+shape", "files+shape"])
def test_kill_during_the_merge_or_container_build_leaves_a_truthful_resumable_run(
        tmp_path, mode):
    """kill -9 of the scheduler at random moments while f.h5 is being written at the
    end of the run: f.h5 is the old or the new file, never a broken one; every call
    the records call done is right; resume completes exactly the reference."""
    n = 300
    merging_seen = 0
    trials = 6
    rng = random.Random(13)
    for trial in range(trials):
        out = tmp_path / f"out{trial}"
        opts = dict(MODES[mode], backend="sequential", n=n)
        proc = Proc(tmp_path, out, dict(opts))
        parts = out / ".work_parts"

        def end_is_near():  # every call ran: the merge / container build comes next
            return len(RunState(str(out), "work").journal()) >= n - 1 if \
                (out / ".acme" / "done").exists() else False

        _wait_for(end_is_near, 60, proc)
        time.sleep(rng.uniform(0, 0.25))
        merging = any(p.name.startswith(".work.h5.") for p in out.iterdir())
        os.killpg(proc.proc.pid, signal.SIGKILL)
        proc.wait(10)
        merging_seen += merging
        if (out / "work.h5").exists():
            with h5py.File(out / "work.h5", "r") as h5f:  # never a corrupt file
                assert int(h5f.attrs["acme_n_calls"]) == n
        done, damaged = status(out, opts, n)
        assert not damaged, (trial, damaged)
        if mode.startswith("single_file"):
            for i, path in done.items():
                if path.endswith(".h5") and "_parts" in path:
                    with h5py.File(path, "r") as h5f:
                        np.testing.assert_array_equal(h5f["result_1"][()],
                                                      expected(i)[1])
                elif path == str(out / "work.h5"):
                    np.testing.assert_array_equal(read_call(out, opts, i)[1],
                                                  expected(i)[1])
        else:
            for i in done:
                np.testing.assert_array_equal(read_call(out, opts, i)[1], expected(i)[1])
        second = Proc(tmp_path, out, dict(opts, resume=True))
        assert second.result(120) == f"ok {n - len(done)}"
        assert_all_right(out, MODES[mode], n)
        assert not no_tmp(out) and not parts.exists()
    print(f"MEASURED {mode}: {trials} kills at the end of the run, {merging_seen} while "
          "f.h5 was being rewritten")


# ================================================================== item 7 / 17
def run_here(out, n=8, resume=False, **opts):
    with ParallelMap(work, list(range(n)), 0.0, 0.0, 8, "", output_dir=str(out),
                     backend="sequential", verbose=False, resume=resume, **opts) as pmap:
        pmap.compute()
    return pmap


def work(x, tag, delay, big, fail_flag):
    if fail_flag and os.path.exists(fail_flag) and x % 2:
        raise RuntimeError(f"call {x} fails")
    return np.full(4, float(x)) + tag, np.full(big, float(x))


def _stem_files(out: Path, opts: dict, i: int) -> Path:
    if opts.get("write_pickle"):
        return out / f"work_{i}.pickle"
    return out / "work_payload" / f"work_{i}.h5"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["files", "files+shape", "pickle"])
def test_a_truncated_or_empty_result_file_is_not_done_and_is_recomputed(tmp_path, mode):
    out = tmp_path / "out"
    opts = {k: (tuple(v) if isinstance(v, list) else v) for k, v in MODES[mode].items()}
    run_here(out, **opts)
    three, five = _stem_files(out, opts, 3), _stem_files(out, opts, 5)
    with open(three, "r+b") as fh:
        fh.truncate(three.stat().st_size // 2)
    five.write_bytes(b"")
    state = RunState(str(out), "work")
    spec = None
    if opts.get("result_shape"):
        from acme.result_spec import ResultSpec
        spec = ResultSpec(opts["result_shape"], "float")
    done, damaged = acme_state.verify_results(state, OutputLayout(str(out), "work"),
                                   mode_name(opts), 8, spec)
    assert sorted(damaged) == [3, 5], damaged
    assert "truncated" in damaged[3] and str(three) in damaged[3], damaged[3]
    assert "truncated" in damaged[5] or "empty" in damaged[5], damaged[5]
    assert sorted(done) == [0, 1, 2, 4, 6, 7]
    pmap = run_here(out, resume=True, **opts)
    assert pmap.stats["ran"] == 2 and pmap.stats["resumed"] == 6
    for i in range(8):
        if opts.get("write_pickle"):
            with open(_stem_files(out, opts, i), "rb") as fh:
                value = pickle.load(fh)
        else:
            with h5py.File(_stem_files(out, opts, i), "r") as h5f:
                value = (h5f["result_0"][()], h5f["result_1"][()])
        np.testing.assert_array_equal(value[1], np.full(8, float(i)))


@pytest.mark.timeout(120)
def test_a_damaged_single_file_is_set_aside_and_its_calls_recomputed(tmp_path):
    out = tmp_path / "out"
    run_here(out, single_file=True, result_shape=(None, 4))
    container = out / "work.h5"
    with open(container, "r+b") as fh:
        fh.truncate(600)
    done, damaged = acme_state.verify_results(RunState(str(out), "work"),
                                   OutputLayout(str(out), "work"), "single_file", 8)
    assert not done and sorted(damaged) == list(range(8)), damaged
    pmap = run_here(out, resume=True, single_file=True, result_shape=(None, 4))
    assert pmap.stats["ran"] == 8
    with h5py.File(container, "r") as h5f:
        np.testing.assert_array_equal(h5f["result_0"][()],
                                      np.arange(8.0)[:, None] + np.zeros(4))


@pytest.mark.timeout(120)
def test_files_never_journaled_or_planted_are_not_results(tmp_path):
    out, flag = tmp_path / "out", tmp_path / "flag"
    flag.touch()
    with pytest.raises(acme.ParallelMapError):
        with ParallelMap(work, list(range(6)), 0.0, 0.0, 8, str(flag),
                         output_dir=str(out), backend="sequential", verbose=False) as p:
            p.compute()
    flag.unlink()
    # planted: a valid HDF5 file and a pickle where failed calls 1 and 3 would write
    with h5py.File(out / "work_payload" / "work_1.h5", "w") as h5f:
        h5f["result_0"] = np.full(4, -1.0)
        h5f["result_1"] = np.full(8, -1.0)
    with open(out / "work_payload" / "work_3.pickle", "wb") as fh:
        pickle.dump((np.full(4, -3.0), np.full(8, -3.0)), fh)
    with ParallelMap(work, list(range(6)), 0.0, 0.0, 8, str(flag), output_dir=str(out),
                     backend="sequential", verbose=False, resume=True) as pmap:
        pmap.compute()
    assert pmap.stats["ran"] == 3  # calls 1, 3, 5 are computed, the planted files ignored
    for i in range(6):
        with h5py.File(out / "work.h5", "r") as h5f:
            np.testing.assert_array_equal(h5f[f"comp_{i}/result_1"][()], np.full(8, float(i)))
    assert not (out / "work_payload" / "work_3.pickle").exists() or \
        3 not in {i for i, p in RunState(str(out)).recorded_results().items()
                  if p.endswith(".pickle")}


# ================================================================== records
@pytest.mark.timeout(60)
def test_damaged_records_make_resume_a_state_error_naming_the_file(tmp_path):
    out = tmp_path / "out"
    run_here(out)
    journal = out / ".acme" / "done"
    text = journal.read_text()
    # a torn last line (the scheduler killed while appending) is ignored
    journal.write_text(text + "7 work_pay")
    assert len(RunState(str(out)).recorded_results()) == 8
    # any other unparsable line is an error naming the file and the line
    lines = text.splitlines()
    journal.write_text("\n".join(lines[:2] + ["x garbage"] + lines[2:]) + "\n")
    with pytest.raises(StateError, match=r"done is damaged: line 3"):
        run_here(out, resume=True)
    journal.write_text(text + "2 ../../etc/passwd 10\n")
    with pytest.raises(StateError, match="not a path inside the output folder"):
        run_here(out, resume=True)
    journal.write_text(text)
    (out / ".acme" / "run.json").write_text("{not json")
    with pytest.raises(StateError, match=re.escape(str(out / ".acme" / "run.json"))):
        run_here(out, resume=True)


# ================================================================== item 16
@pytest.mark.timeout(120)
def test_links_planted_in_the_output_folder_never_send_a_write_elsewhere(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    before = {p.name: p.read_bytes() for p in victim.iterdir()}
    flag = tmp_path / "flag"

    def fresh(name, **opts):
        out = tmp_path / name
        flag.touch()
        with pytest.raises(acme.ParallelMapError):
            with ParallelMap(work, list(range(6)), 0.0, 0.0, 8, str(flag),
                             output_dir=str(out), backend="sequential", verbose=False,
                             **opts) as p:
                p.compute()
        flag.unlink()
        return out

    def resume(out, **opts):
        with ParallelMap(work, list(range(6)), 0.0, 0.0, 8, str(flag), output_dir=str(out),
                         backend="sequential", verbose=False, resume=True, **opts) as p:
            p.compute()
        return p

    # the payload folder replaced by a link to another folder: refused
    out = fresh("a")
    os.rename(out / "work_payload", tmp_path / "moved")
    os.symlink(victim, out / "work_payload")
    with pytest.raises(OSError, match="work_payload"):
        resume(out)
    # links at the final names of the calls still to run, and at the journal
    out = fresh("b")
    for i in (1, 3, 5):
        os.symlink(victim / "precious.txt", out / "work_payload" / f"work_{i}.h5")
    p = resume(out)
    assert p.stats["ran"] == 3
    assert all(not (out / "work_payload" / f"work_{i}.h5").is_symlink() for i in (1, 3, 5))
    out = fresh("c")
    os.replace(out / ".acme" / "done", tmp_path / "journal")
    os.symlink(victim / "precious.txt", out / ".acme" / "done")
    with pytest.raises(StateError, match="symbolic link"):
        resume(out)
    # the single file replaced by a link out of the folder: refused
    out = fresh("d", single_file=True, result_shape=(None, 4))
    os.replace(out / "work.h5", tmp_path / "old.h5")
    os.symlink(victim / "precious.txt", out / "work.h5")
    with pytest.raises(StateError, match="leads out of the output folder"):
        resume(out, single_file=True, result_shape=(None, 4))
    # the part-file folder and the failure records replaced by links: refused
    out = fresh("e", single_file=True)
    os.symlink(victim, out / ".work_parts")
    with pytest.raises(OSError, match="work_parts"):
        resume(out, single_file=True)
    out = fresh("f")
    os.rename(out / ".acme" / "failures", tmp_path / "failures")
    os.symlink(victim, out / ".acme" / "failures")
    with pytest.raises(StateError, match="failures"):
        resume(out)
    # the log file: links at the names the next seconds' log would get
    out = fresh("g")
    time.sleep(1.1)  # past the second whose name the first run's log has
    now = time.time()
    for k in range(0, 8):
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now + k))
        if not (out / f"ACME_work_{stamp}.log").exists():  # the first run's log
            os.symlink(victim / "precious.txt", out / f"ACME_work_{stamp}.log")
    with pytest.raises(OSError, match="symbolic link"):
        resume(out)
    assert {p.name: p.read_bytes() for p in victim.iterdir()} == before


@pytest.mark.timeout(60)
def test_temporary_names_are_unpredictable_and_never_opened_through_a_link(
        tmp_path, monkeypatch):
    from acme import sinks
    from acme.container import remove_stale_temporaries
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    folder = tmp_path / "payload"
    folder.mkdir()
    names = {os.path.basename(sinks._temporary_name(str(folder / "f_1.h5")))
             for _ in range(50)}
    assert len(names) == 50  # no two alike: nothing to plant in advance
    # even a guessed name is never followed (the guess is forced here: the one
    # thing a test cannot do is guess a random name)
    monkeypatch.setattr(sinks.secrets, "token_hex", lambda n: "0" * (2 * n))
    guessed = folder / f".f_1.h5.{os.getpid()}.{'0' * 16}.tmp"
    os.symlink(victim, guessed)
    with pytest.raises(FileExistsError):
        sinks.write_h5_atomic(str(folder / "f_1.h5"), [np.arange(3)])
    assert victim.read_text() == "keep me" and not (folder / "f_1.h5").exists()
    monkeypatch.undo()
    os.remove(guessed)
    # stale temporaries: only those of writers that are gone are removed
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = folder / f".f_2.h5.{gone.pid}.{'a' * 16}.tmp"
    live = folder / f".f_3.h5.{os.getpid()}.{'b' * 16}.tmp"
    old_style = folder / f".f_4.h5.{gone.pid}.tmp"
    for p in (stale, live, old_style):
        p.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(str(folder))) == sorted([str(stale),
                                                                    str(old_style)])
    assert live.exists()


@pytest.mark.timeout(180)
def test_a_killed_single_file_run_whose_file_is_damaged_has_no_done_rows(tmp_path):
    """Rows are written into f.h5 directly; a part file holds only the other values:
    with f.h5 damaged, a call whose part is intact is still not done (even for a
    reader that does not know the run's result_shape, like ``acme status``)."""
    out = tmp_path / "out"
    opts = dict(MODES["single_file+shape"], backend="sequential", n=300, delay=0.002)
    proc = Proc(tmp_path, out, dict(opts))
    _wait_for(lambda: (out / ".acme" / "done").exists() and
              len(RunState(str(out), "work").journal()) >= 50, 60, proc)
    os.killpg(proc.proc.pid, signal.SIGKILL)
    proc.wait(10)
    journaled = RunState(str(out), "work").journal()
    assert all(".work_parts/" in rel for rel, _ in journaled.values())
    with open(out / "work.h5", "r+b") as fh:
        fh.truncate(1000)
    for spec in (None, "given"):
        state = RunState(str(out), "work")
        layout = OutputLayout(str(out), "work")
        if spec is None:
            done, damaged = acme_state.verify_results(state, layout, "single_file", 300)
        else:
            done, damaged = status(out, opts, 300)
        assert not done and sorted(damaged) == sorted(journaled), (spec, done)
    second = Proc(tmp_path, out, dict(opts, resume=True))
    assert second.result(120) == "ok 300"
    assert_all_right(out, MODES["single_file+shape"], 300)
