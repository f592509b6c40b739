"""Workers that can be trusted (issue 13, items 1, 9, 13, 14, 15 and "a pool started
from a thread"): a reused pool runs each map's own function; a call that forks, a
worker killed from outside, a helper process holding a worker's pipe, a result the
main process cannot receive: each fails at most its own call, never the run, and never
gives a wrong value. Real processes and real SIGKILLs throughout; nothing is mocked.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import threading
import time

import h5py
import numpy as np
import psutil
import pytest

import acme
from acme import ParallelMap, ParallelMapError
from acme.clusters import current_pool
from acme.errors import WorkerDied
from mpi_helpers import run_mpi

pytestmark = pytest.mark.timeout(300)

#: Maps run on one pool (item 1): more than 20, each with its own function.
N_MAPS = 22

# Top-level functions that differ only in their body, so each map has its own
# function object (pickled by reference; forked workers know every one of them).
for _k in range(N_MAPS):
    exec(f"def reuse_{_k}(x, c):\n    return x * {_k + 1} + c\n", globals())


def _reference(k: int, xs: list, c: int) -> list:
    """The sequential reference: the map's function called here, in order."""
    func = globals()[f"reuse_{k}"]
    return [func(x, c) for x in xs]


def _read_files(paths: list) -> list:
    values = []
    for path in paths:
        with h5py.File(path, "r") as fh:
            values.append(int(np.asarray(fh["result_0"][()]).ravel()[0]))
    return values


def _run_reuse_maps(tmp_path, backend, **extra) -> None:
    """N_MAPS maps with different functions, constants and output folders (the first
    half in memory, the second on disk); every value compared with the reference."""
    wrong = []
    for k in range(N_MAPS):
        xs = list(range(k % 5 + 4))
        const = 1000 * k + 7
        on_disk = k >= N_MAPS // 2
        options = dict(write_worker_results=on_disk, verbose=False, backend=backend,
                       **extra)
        if on_disk:
            options["output_dir"] = str(tmp_path / f"map_{k}")
        with ParallelMap(globals()[f"reuse_{k}"], xs, const, **options) as pmap:
            got = pmap.compute()
        if on_disk:
            assert all(str(p).startswith(str(tmp_path / f"map_{k}")) for p in got), got
            got = _read_files(got)
        if got != _reference(k, xs, const):
            wrong.append((k, got))
    assert not wrong, f"{len(wrong)} of {N_MAPS} maps returned another map's values: {wrong}"


def test_reused_local_pool_runs_each_maps_own_function(tmp_path, no_leftover_processes):
    pool = acme.local_cluster_setup(n_workers=2, interactive=False)
    try:
        _run_reuse_maps(tmp_path, pool)
    finally:
        acme.cluster_cleanup(pool)


def test_stop_client_false_pool_runs_each_maps_own_function(tmp_path,
                                                            no_leftover_processes):
    """The first map (backend "auto", local here) starts a pool and leaves it up; the
    next maps run on it."""
    assert current_pool() is None
    try:
        _run_reuse_maps(tmp_path, "auto", stop_client=False, n_workers=2)
        pool = current_pool()
        assert pool is not None and pool.started == 2  # one pool served every map
    finally:
        while current_pool() is not None:
            acme.cluster_cleanup()


# ---------------------------------------------------------------- item 9: fork
def fork_child_returns(x):
    """Forks; the child returns a wrong value (and would carry on in the worker)."""
    pid = os.fork()
    if pid == 0:
        return -1000 - x
    os.waitpid(pid, 0)  # a child that carried on serving would hang us here
    return x * 3


def fork_child_raises(x):
    """Forks; the child raises (and would report a failure for a good call)."""
    pid = os.fork()
    if pid == 0:
        raise RuntimeError("raised in the forked child")
    os.waitpid(pid, 0)
    return x * 3


def fork_child_unwaited(x):
    """Forks; nobody waits for the child, which returns None."""
    if os.fork() == 0:
        return None
    return x * 3


@pytest.mark.parametrize("func", [fork_child_returns, fork_child_raises,
                                  fork_child_unwaited])
@pytest.mark.parametrize("on_disk", [False, True])
def test_call_that_forks_without_exiting(tmp_path, func, on_disk, no_leftover_processes):
    xs = list(range(40))
    options = dict(write_worker_results=on_disk, verbose=False, backend="local",
                   n_workers=2)
    if on_disk:
        options["output_dir"] = str(tmp_path / "out")
    with ParallelMap(func, xs, **options) as pmap:
        got = pmap.compute()
    if on_disk:
        got = _read_files(got)
    assert got == [x * 3 for x in xs]


def test_call_that_forks_on_the_sequential_backend(tmp_path):
    """In the user's own process, a forked child returning from the function must not
    carry on with the user's script (run in a subprocess, so a stray copy cannot
    carry on with pytest)."""
    from conftest import run_script
    code = (
        "import os\n"
        "from acme import ParallelMap\n"
        "def f(x):\n"
        "    if os.fork() == 0:\n"
        "        return -1\n"
        "    os.wait()\n"
        "    return x + 1\n"
        "if __name__ == '__main__':\n"
        "    with ParallelMap(f, [1, 2, 3], write_worker_results=False,\n"
        "                     backend='sequential', verbose=False) as pmap:\n"
        "        print('RESULT', pmap.compute(), flush=True)\n")
    script = tmp_path / "forks.py"
    script.write_text(code)
    result = run_script(script, timeout=60)
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == ["RESULT [2, 3, 4]"], result
    assert not result.leftovers, result


def test_call_that_forks_under_mpi(tmp_path):
    result = run_mpi("trust_fork.py", 3, timeout=60, cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("FORK ")]
    assert lines == ["FORK " + json.dumps([x * 3 for x in range(30)])], (
        result.stdout + result.stderr)


# ------------------------------------------------- item 13: workers killed from outside
def short_call(x):
    time.sleep(0.0005)
    return x * 2 + 1


def _killer(pool, rng, stop, kills: list) -> None:
    """SIGKILL a random worker of ``pool`` (by PID) every few tens of milliseconds."""
    while not stop.wait(rng.uniform(0.02, 0.12)):
        workers = [w for w in list(pool.workers) if w.process.pid]
        if not workers:
            continue
        pid = rng.choice(workers).process.pid
        try:
            os.kill(pid, signal.SIGKILL)
            kills.append(pid)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("seed", range(6))
def test_random_worker_kills_never_abort_the_run(seed, no_leftover_processes):
    rng = random.Random(seed)
    xs = list(range(3000))
    pool = acme.local_cluster_setup(n_workers=2, interactive=False)
    stop, kills = threading.Event(), []
    killer = threading.Thread(target=_killer, args=(pool, rng, stop, kills), daemon=True)
    try:
        with ParallelMap(short_call, xs, write_worker_results=False, verbose=False,
                         backend=pool) as pmap:
            killer.start()
            try:
                got = pmap.compute()
                failed, errors = [], {}
            except ParallelMapError as exc:  # only calls whose worker was killed
                got, failed, errors = exc.results, exc.failed, exc.errors
            finally:
                stop.set()
                killer.join()
    finally:
        acme.cluster_cleanup(pool)
    assert kills, "the test killed no worker"
    for index, failure in errors.items():
        assert isinstance(failure.exception, WorkerDied), failure.summary
        assert f"call {index}:" in str(failure.exception), failure.summary
    assert len(failed) <= len(kills)
    for index, x in enumerate(xs):
        if index not in errors:
            assert got[index] == short_call(x), (index, got[index])
    print(f"seed {seed}: {len(kills)} kills, {len(failed)} calls failed")


def test_worker_killed_between_maps_is_replaced(no_leftover_processes):
    """A worker killed while the pool is idle: the next map's first send to it must
    not abort the map."""
    pool = acme.local_cluster_setup(n_workers=2, interactive=False)
    try:
        for round_ in range(5):
            victim = pool.workers[round_ % len(pool.workers)]
            os.kill(victim.process.pid, signal.SIGKILL)
            with ParallelMap(short_call, list(range(50)), write_worker_results=False,
                             verbose=False, backend=pool) as pmap:
                assert pmap.compute() == [short_call(x) for x in range(50)]
    finally:
        acme.cluster_cleanup(pool)


# -------------------------------- item 15: a helper process holding the worker's pipe
def _sleep_forever():
    time.sleep(120)


def start_helper_then_crash(x, kind, pid_file):
    """Call 0 starts a helper process that inherits the worker's descriptors (and
    records its PID); call 2 kills its own worker."""
    if x == 0:
        if kind == "daemon":
            helper = multiprocessing.get_context("fork").Process(target=_sleep_forever,
                                                                 daemon=True)
            helper.start()
            pid = helper.pid
        else:  # a plain fork that stays
            pid = os.fork()
            if pid == 0:
                try:
                    time.sleep(120)
                finally:
                    os._exit(0)
        with open(pid_file, "w") as fh:
            fh.write(str(pid))
        time.sleep(0.2)
    if x == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return x + 100


@pytest.mark.parametrize("kind", ["daemon", "fork"])
def test_worker_crash_seen_while_a_helper_holds_its_pipe(tmp_path, kind):
    pid_file = str(tmp_path / "helper.pid")
    helper_pid = None
    watchdog = None
    try:
        with ParallelMap(start_helper_then_crash, list(range(6)), kind, pid_file,
                         write_worker_results=False, verbose=False, backend="local",
                         n_workers=1) as pmap:
            def kill_helper_late():  # only so that a hang ends: the test then fails
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not done.is_set():
                    time.sleep(0.1)
                if not done.is_set() and os.path.exists(pid_file):
                    fired.append(True)
                    os.kill(int(open(pid_file).read()), signal.SIGKILL)
            done, fired = threading.Event(), []
            watchdog = threading.Thread(target=kill_helper_late, daemon=True)
            watchdog.start()
            with pytest.raises(ParallelMapError) as info:
                pmap.compute()
            done.set()
        helper_pid = int(open(pid_file).read())
        # the helper still runs: the crash was seen without waiting for its end
        assert not fired, "the worker's crash was seen only after its helper was killed"
        assert psutil.Process(helper_pid).status() != psutil.STATUS_ZOMBIE
        assert info.value.failed == [2]
        failure = info.value.errors[2]
        assert isinstance(failure.exception, WorkerDied)
        assert "signal 9" in str(failure.exception), failure.summary
        assert info.value.results[:2] == [100, 101]
        assert info.value.results[3:] == [103, 104, 105]
    finally:
        if watchdog is not None:
            done.set()
            watchdog.join()
        if helper_pid is None and os.path.exists(pid_file):
            helper_pid = int(open(pid_file).read())
        if helper_pid is not None:
            try:
                os.kill(helper_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ------------------------------------- item 14: results the main process cannot take
class StrRaises(Exception):
    """An exception whose message cannot be made."""

    def __str__(self):
        raise ValueError("no message for you")


class NeedsTwoArguments(Exception):
    """An exception that pickles but cannot be rebuilt (its constructor needs two
    arguments, pickle passes one)."""

    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def _fail_on_load():
    raise RuntimeError("this value refuses to be unpickled")


def _memory_error_on_load():
    # Simulates the main process running out of memory while it unpickles one
    # result (a real MemoryError of that size cannot be provoked safely here).
    raise MemoryError("simulated: no memory to rebuild this value")


class NoLoad:
    """A value that pickles but fails when it is unpickled."""

    def __reduce__(self):
        return (_fail_on_load, ())


class NoMemory:
    """A value whose unpickling raises MemoryError (see _memory_error_on_load)."""

    def __reduce__(self):
        return (_memory_error_on_load, ())


BAD_CALLS = {50: "str", 53: "args", 57: "noload", 61: "nomemory"}


def bad_results(x):
    kind = BAD_CALLS.get(x)
    if kind == "str":
        raise StrRaises()
    if kind == "args":
        raise NeedsTwoArguments("left", "right")
    if kind == "noload":
        return NoLoad()
    if kind == "nomemory":
        return NoMemory()
    return x * 5


@pytest.mark.parametrize("backend", ["local", "sequential"])
def test_unreceivable_results_fail_only_their_call(backend, no_leftover_processes):
    xs = list(range(200))
    with ParallelMap(bad_results, xs, write_worker_results=False, verbose=False,
                     backend=backend, n_workers=2) as pmap:
        with pytest.raises(ParallelMapError) as info:
            pmap.compute()
    error = info.value
    str(error)  # the report itself can be made
    if backend == "local":  # the bad calls travelled in batches with good ones
        assert pmap.stats["messages_to_workers"] < len(xs) / 4, pmap.stats
    expected_failed = [50, 53] if backend == "sequential" else sorted(BAD_CALLS)
    assert error.failed == expected_failed
    for index, x in enumerate(xs):
        if index not in BAD_CALLS:
            assert error.results[index] == x * 5
    summaries = {i: error.errors[i].summary for i in error.failed}
    assert "StrRaises" in summaries[50] and "str() failed" in summaries[50], summaries
    assert "left/right" in summaries[53], summaries
    if backend == "local":
        assert "could not be received" in summaries[57], summaries
        assert "refuses to be unpickled" in summaries[57], summaries
        assert "MemoryError" in summaries[61], summaries
    for failure in error.errors.values():
        assert failure.index in BAD_CALLS


def test_unreceivable_results_under_mpi(tmp_path):
    result = run_mpi("trust_results.py", 3, timeout=120, cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("TRUST ")]
    assert len(lines) == 1, result.stdout + result.stderr
    report = json.loads(lines[0][len("TRUST "):])
    assert report["failed"] == sorted(BAD_CALLS)
    assert report["messages"] < 200 / 4, report  # bad calls in batches with good ones
    assert report["wrong"] == []
    summaries = {int(k): v for k, v in report["summaries"].items()}
    assert "StrRaises" in summaries[50] and "str() failed" in summaries[50], summaries
    assert "left/right" in summaries[53], summaries
    assert "could not be received" in summaries[57], summaries
    assert "MemoryError" in summaries[61], summaries
    assert report["second_map"] == [x + 1 for x in range(10)]


# ------------------------------------------------------ a pool started from a thread
def test_pool_started_from_a_thread_outlives_the_thread(no_leftover_processes):
    box = []
    starter = threading.Thread(
        target=lambda: box.append(acme.local_cluster_setup(n_workers=2,
                                                           interactive=False)))
    starter.start()
    starter.join()
    pool = box[0]
    try:
        pids = sorted(w.process.pid for w in pool.workers)
        time.sleep(0.5)  # give a worker killed with its thread time to be gone
        assert len(pool.alive()) == 2, "the workers died with the thread that made them"
        with ParallelMap(short_call, list(range(100)), write_worker_results=False,
                         verbose=False, backend=pool) as pmap:
            assert pmap.compute() == [short_call(x) for x in range(100)]
        assert sorted(w.process.pid for w in pool.workers) == pids

        # a worker started (as a replacement) by a map that runs in a thread
        os.kill(pool.workers[0].process.pid, signal.SIGKILL)
        runner = threading.Thread(target=lambda: box.append(ParallelMap(
            short_call, list(range(20)), write_worker_results=False, verbose=False,
            backend=pool).compute()))
        runner.start()
        runner.join()
        assert box[1] == [short_call(x) for x in range(20)]
        time.sleep(0.5)
        assert len(pool.alive()) == 2, "a replacement died with the map's thread"
        with ParallelMap(short_call, list(range(100)), write_worker_results=False,
                         verbose=False, backend=pool) as pmap:
            assert pmap.compute() == [short_call(x) for x in range(100)]
    finally:
        acme.cluster_cleanup(pool)
