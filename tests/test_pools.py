"""Worker pools that outlive one map (issue 9): ``acme.local_cluster_setup`` and
``acme.slurm_cluster_setup`` / ``cluster_cleanup``, ``stop_client`` with pools the user
started and pools a map started itself, dead and stopped pools, and the seed's
``ParallelMap`` attributes.

The SLURM tests run on the one-node test cluster (``bash scripts/slurm_cluster.sh
start``): they start a real worker pool (one long-running ``sbatch`` job) and send maps
to it. Each test stops the pools it started (by the pool's job id / worker PIDs), and
cancels, by job id, any job still listed by ``squeue`` whose working folder is its own.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import acme
from acme import ParallelMap, clusters
from conftest import TESTS_DIR, run_script
from mpi_helpers import require_slurm

sys.path.insert(0, str(TESTS_DIR / "mpi_scripts"))

import modes  # noqa: E402
from test_slurm import (Background, compare_with_local, job_listed,  # noqa: E402
                        job_state, slurm_env, squeue_ids, wait_until)


# ------------------------------------------------------------------ functions
def square(x):
    return x * x


def whoami(x):
    """The PID of the process that ran the call."""
    return os.getpid()


def add(x, y, z=3):
    return x + y + z


# ------------------------------------------------------------------ helpers
def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] not in ("Z", "X")


def pool_pids(pool) -> set:
    return {w.process.pid for w in pool.workers}


def wait_dead(pids, seconds: float = 5.0) -> bool:
    return wait_until(lambda: not any(alive(p) for p in pids), seconds, step=0.05)


@pytest.fixture(autouse=True)
def stop_pools_left_over():
    """Stop every pool a test left registered (local workers by PID, SLURM jobs by id)."""
    yield
    for pool in list(clusters._pools):
        pool.close()
    clusters._pools.clear()


# ================================================================ local pools
@pytest.mark.timeout(120)
def test_several_maps_on_one_pool_pay_the_start_up_once(monkeypatch):
    """N maps on one pool vs N maps that each start their own workers. The spawn start
    method makes a worker's start-up (a fresh interpreter importing numpy, h5py and
    acme, ≈ 0.5 s) stand out from the calls' time."""
    monkeypatch.setenv("ACME_START_METHOD", "spawn")
    n_maps, xs = 4, list(range(40))

    start = time.perf_counter()
    for _ in range(n_maps):
        with ParallelMap(whoami, xs, write_worker_results=False, n_workers=2,
                         backend="local", verbose=False) as pmap:
            pmap.compute()
    without_pool = time.perf_counter() - start

    start = time.perf_counter()
    pool = acme.local_cluster_setup(n_workers=2, interactive=False)
    setup = time.perf_counter() - start
    pids = pool_pids(pool)
    seen, started = [], []
    start = time.perf_counter()
    for _ in range(n_maps):
        with ParallelMap(whoami, xs, write_worker_results=False, verbose=False) as pmap:
            seen.append(set(pmap.compute()))
            started.append(pmap.stats["workers_started"])
    on_pool = time.perf_counter() - start
    print(f"{n_maps} maps without a pool: {without_pool:.3f} s; pool start-up "
          f"{setup:.3f} s, then {n_maps} maps on it: {on_pool:.3f} s")

    assert pool_pids(pool) == pids and all(alive(p) for p in pids)
    assert all(s <= pids for s in seen), (seen, pids)  # every call ran on the pool
    assert started == [2] * n_maps  # no worker was started for a map
    # the start-up is paid once: a map on the pool costs a fraction of a map that
    # starts its workers, and one start-up plus N maps less than N start-ups
    assert on_pool < without_pool / 3, (on_pool, without_pool)
    assert setup + on_pool < without_pool / 2, (setup, on_pool, without_pool)
    acme.cluster_cleanup(pool)
    assert wait_dead(pids)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stop_client", ["auto", False, True])
def test_stop_client_with_a_pool_the_user_started(stop_client):
    pool = acme.local_cluster_setup(n_workers=2, interactive=False)
    pids = pool_pids(pool)
    with ParallelMap(whoami, list(range(6)), write_worker_results=False,
                     stop_client=stop_client) as pmap:
        assert set(pmap.compute()) <= pids
    if stop_client is True:  # stopped: every worker process is gone
        assert pool.closed and wait_dead(pids)
        assert clusters.current_pool() is None
    else:  # "auto" and False leave the user's pool running
        assert not pool.closed and all(alive(p) for p in pids)
        assert clusters.current_pool() is pool
        with ParallelMap(whoami, list(range(6)), write_worker_results=False) as pmap:
            assert set(pmap.compute()) <= pids  # and the next map uses it
        acme.cluster_cleanup()
        assert pool.closed and wait_dead(pids)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stop_client", ["auto", True])
def test_stop_client_stops_the_maps_own_workers(stop_client, no_leftover_processes):
    assert clusters.current_pool() is None
    with ParallelMap(whoami, list(range(8)), write_worker_results=False, n_workers=2,
                     stop_client=stop_client) as pmap:
        pids = set(pmap.compute())
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids
    assert wait_dead(pids), [p for p in pids if alive(p)]
    assert clusters.current_pool() is None


@pytest.mark.timeout(60)
def test_stop_client_false_keeps_the_maps_own_workers_as_current_pool():
    assert clusters.current_pool() is None
    with ParallelMap(whoami, list(range(8)), write_worker_results=False, n_workers=2,
                     stop_client=False) as pmap:
        pids = set(pmap.compute())
    assert all(alive(p) for p in pids)
    pool = clusters.current_pool()
    assert pool is not None and pool.backend_name == "local" and not pool.closed
    assert pids <= pool_pids(pool)
    with ParallelMap(whoami, list(range(8)), write_worker_results=False) as pmap:
        assert set(pmap.compute()) <= pool_pids(pool)  # the next map runs on it
    all_pids = pool_pids(pool)
    acme.cluster_cleanup()
    assert pool.closed and wait_dead(all_pids)
    assert clusters.current_pool() is None


@pytest.mark.timeout(60)
def test_a_pool_whose_workers_all_died_is_a_clear_error_before_the_map():
    pool = acme.local_cluster_setup(n_workers=2, interactive=False)
    pids = pool_pids(pool)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert wait_dead(pids)
    started = pool.started
    pmap = ParallelMap(square, [1, 2, 3], write_worker_results=False)
    with pytest.raises(RuntimeError, match="no live workers") as info:
        pmap.compute()
    assert "cluster_cleanup" in str(info.value)
    assert pool.started == started  # nothing was started, nothing was sent
    pmap.cleanup()
    acme.cluster_cleanup(pool)


@pytest.mark.timeout(60)
def test_a_pool_with_some_dead_workers_replaces_them():
    pool = acme.local_cluster_setup(n_workers=2, interactive=False)
    victim, survivor = sorted(pool_pids(pool))
    os.kill(victim, signal.SIGKILL)
    assert wait_dead([victim])
    with ParallelMap(whoami, list(range(10)), write_worker_results=False) as pmap:
        ran_on = set(pmap.compute())
    assert victim not in ran_on and ran_on <= pool_pids(pool)
    assert survivor in pool_pids(pool) and len(pool_pids(pool)) == 2
    assert pool.started == 3  # one replacement
    acme.cluster_cleanup(pool)


@pytest.mark.timeout(60)
def test_a_stopped_pool_is_a_clear_error():
    pool = acme.local_cluster_setup(n_workers=1, interactive=False)
    acme.cluster_cleanup(pool)
    assert pool.closed and clusters.current_pool() is None
    with pytest.raises(RuntimeError, match="was stopped"):
        with ParallelMap(square, [1, 2], write_worker_results=False,
                         backend=pool) as pmap:
            pmap.compute()


@pytest.mark.timeout(60)
def test_the_seeds_attributes_prepare_input_and_cleanup(no_leftover_processes):
    pmap = ParallelMap(add, [2, 4, 6, 8], 4, z=np.arange(4), write_worker_results=False)
    assert pmap.func is add
    assert pmap.n_inputs == 4
    assert pmap.argv == [[2, 4, 6, 8], [4]]
    assert list(pmap.kwargv) == ["z"] and list(pmap.kwargv["z"]) == [0, 1, 2, 3]
    assert pmap.objName == "<ParallelMap>"
    assert pmap.compute() == [6, 9, 12, 15]

    pmap.prepare_input(square, "auto", (1, 2, 3))  # the seed's method: new calls
    assert pmap.func is square and pmap.n_inputs == 3
    assert pmap.argv == [[1, 2, 3]] and pmap.kwargv == {}
    assert pmap.compute() == [1, 4, 9]
    with pytest.raises(ValueError):
        pmap.prepare_input(add, "auto", [1, 2, 3], [1, 2])  # lengths 3 and 2
    pmap.cleanup()
    pmap.cleanup()  # twice is harmless

    pool = acme.local_cluster_setup(n_workers=1, interactive=False)
    pids = pool_pids(pool)
    pmap = ParallelMap(square, [5], write_worker_results=False, stop_client=True)
    assert pmap.compute() == [25] and not pool.closed
    pmap.cleanup()  # stop_client=True: cleanup() stops the user's pool too
    assert pool.closed and wait_dead(pids)


# ================================================================ SLURM pools
@pytest.fixture
def slurm(tmp_path):
    """Require SLURM; afterwards stop the test's pools and cancel, by job id, every job
    still listed whose working folder is the test's (showing its log)."""
    require_slurm()
    yield
    for pool in list(clusters._pools):
        pool.close()
    clusters._pools.clear()
    left = squeue_ids(tmp_path)
    for job_id in left:
        subprocess.run(["scancel", job_id], capture_output=True)
    if left:
        wait_until(lambda: not any(job_listed(j) for j in left), 30)
        for job_id in left:
            for log in tmp_path.rglob(f"slurm-{job_id}.out"):
                print(f"--- {log} (job {job_id} was still running) ---\n{log.read_text()}")


def start_slurm_pool(**options):
    options = {"partition": "small", "n_workers": 2, "timeout": 60,
               "interactive": False, **options}
    return acme.slurm_cluster_setup(**options)


@pytest.mark.timeout(240)
def test_slurm_pool_runs_many_maps_in_one_job_like_local(tmp_path, slurm):
    start = time.perf_counter()
    pool = start_slurm_pool()
    setup = time.perf_counter() - start
    assert pool.backend_name == "slurm" and pool.n_workers == 2 and not pool.closed
    assert re.fullmatch(r"\d+", pool.job_id)
    assert clusters.current_pool() is pool
    assert squeue_ids(tmp_path) == [pool.job_id]
    pool.check()

    times = []
    for _ in range(2):  # two maps, one job
        start = time.perf_counter()
        with ParallelMap(square, list(range(10)), write_worker_results=False) as pmap:
            assert pmap.compute() == [x * x for x in range(10)]
        times.append(time.perf_counter() - start)
        assert pmap.stats["job_id"] == pool.job_id
        assert squeue_ids(tmp_path) == [pool.job_id]  # still one job: no new sbatch

    for mode in sorted(modes.MODES):  # every result mode, compared with a local run
        folder = tmp_path / mode
        folder.mkdir()
        summary = folder / "remote.pkl"
        start = time.perf_counter()
        modes.main(mode, str(folder / "remote"), str(summary), "auto")
        times.append(time.perf_counter() - start)
        ranks = compare_with_local(mode, folder, summary)
        assert all(r >= 1 for r in ranks), (mode, ranks)  # ran on worker ranks
        assert squeue_ids(tmp_path) == [pool.job_id]
    assert pool.maps_sent == 2 + len(modes.MODES)
    assert not [n for n in os.listdir(pool.folder) if n.startswith(("map_", ".map"))]
    print(f"SLURM pool up after {setup:.2f} s; maps on it took "
          + ", ".join(f"{t:.2f}" for t in times) + " s")

    job_id = pool.job_id
    acme.cluster_cleanup()
    assert pool.closed and clusters.current_pool() is None
    assert wait_until(lambda: not squeue_ids(tmp_path), 5), squeue_ids(tmp_path)
    assert job_state(job_id) == "COMPLETED"  # it ended by itself on the stop file
    with pytest.raises(RuntimeError, match="was stopped"):
        pool.check()


@pytest.mark.timeout(90)
def test_slurm_pool_whose_job_was_cancelled_is_a_clear_error_before_the_map(
        tmp_path, slurm):
    pool = start_slurm_pool(n_workers=1)
    subprocess.run(["scancel", pool.job_id], check=True)
    assert wait_until(lambda: not job_listed(pool.job_id), 30)
    with pytest.raises(RuntimeError, match="no active workers") as info:
        with ParallelMap(square, [1, 2, 3], write_worker_results=False) as pmap:
            pmap.compute()
    text = str(info.value)
    assert f"job {pool.job_id}" in text and "CANCELLED" in text, text
    assert "cluster_cleanup" in text and f"slurm-{pool.job_id}.out" in text
    assert pool.maps_sent == 0  # nothing was sent
    assert not [n for n in os.listdir(pool.folder) if n.startswith(("map_", ".map"))]
    acme.cluster_cleanup(pool)
    assert pool.closed and not squeue_ids(tmp_path)


@pytest.mark.timeout(90)
def test_slurm_pool_stop_client_true_releases_the_allocation(tmp_path, slurm):
    # esi-acme's name and keywords; partition "auto" without a function to measure:
    # the partition that fits a worker's base need with the least waste
    pool = acme.esi_cluster_setup(n_workers=1, interactive=False, mem_per_job="2GB",
                                  n_workers_startup=1)
    assert pool.partition == "small" and pool.n_workers == 1
    with ParallelMap(square, [1, 2], write_worker_results=False) as pmap:
        assert pmap.compute() == [1, 4]
    assert not pool.closed and job_listed(pool.job_id)  # "auto": the user's pool stays
    with ParallelMap(square, [3], write_worker_results=False, stop_client=True) as pmap:
        assert pmap.compute() == [9]
    assert pool.closed
    assert wait_until(lambda: not job_listed(pool.job_id), 5)


@pytest.mark.timeout(90)
def test_slurm_pool_survives_a_map_whose_function_cannot_be_loaded(tmp_path, slurm):
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "vanishing.py").write_text("def f(x):\n    return x\n")
    sys.path.insert(0, str(tmp_path / "gone"))
    try:
        from vanishing import f
        pool = start_slurm_pool(n_workers=1)
        (tmp_path / "gone" / "vanishing.py").unlink()  # the job's ranks cannot import it
        from acme.backends.slurm import SlurmJobError
        with pytest.raises(SlurmJobError, match="could not start") as info:
            with ParallelMap(f, [1, 2], write_worker_results=False) as pmap:
                pmap.compute()
        assert "ModuleNotFoundError" in str(info.value)
        pool.check()  # still running
        with ParallelMap(square, [4, 5], write_worker_results=False) as pmap:
            assert pmap.compute() == [16, 25]
        assert pmap.stats["job_id"] == pool.job_id and pool.maps_sent == 2
    finally:
        sys.path.remove(str(tmp_path / "gone"))
        sys.modules.pop("vanishing", None)


@pytest.mark.timeout(60)
def test_slurm_pool_that_cannot_start_is_cancelled_after_timeout(tmp_path, slurm):
    from acme.backends.slurm import SlurmSetupTimeout
    with pytest.raises(SlurmSetupTimeout, match="still PENDING") as info:
        start_slurm_pool(n_workers=1, timeout=2, sbatch_args=["--begin=now+3600"])
    job_id = info.value.job_id
    assert "timeout=2" in str(info.value) and f"slurm-{job_id}.out" in str(info.value)
    assert not job_listed(job_id) and not squeue_ids(tmp_path)
    assert clusters.current_pool() is None


@pytest.mark.timeout(90)
def test_slurm_pool_late_on_a_terminal_asks_whether_to_keep_waiting(tmp_path, slurm):
    """interactive=True on a terminal: "w" waits another timeout, "g" gives up."""
    code = ("import acme\n"
            "try:\n"
            "    acme.slurm_cluster_setup(partition='small', n_workers=1, timeout=2,\n"
            "                             sbatch_args=['--begin=now+3600'])\n"
            "except Exception as exc:\n"
            "    print('ERROR', type(exc).__name__, exc, flush=True)\n")
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=slave, stdout=slave,
                            stderr=slave, cwd=tmp_path, start_new_session=True,
                            env=slurm_env())
    os.close(slave)
    seen = b""

    def read_until(pattern: bytes, count: int, seconds: float) -> bool:
        nonlocal seen
        import select
        deadline = time.monotonic() + seconds
        while seen.count(pattern) < count and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(master, 4096)
                except OSError:  # the process ended
                    break
        return seen.count(pattern) >= count

    try:
        assert read_until(b"give up [g]?", 1, 40), seen.decode(errors="replace")
        os.write(master, b"w\n")
        assert read_until(b"give up [g]?", 2, 20), seen.decode(errors="replace")
        os.write(master, b"g\n")
        assert proc.wait(timeout=30) == 0, seen.decode(errors="replace")
        read_until(b"\n", 10 ** 6, 1)  # the rest of the output, until the pty closes
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
    text = seen.decode(errors="replace")
    job_id = re.search(r"SLURM job (\d+) \(the worker pool\) is still PENDING", text)
    assert job_id, text
    assert "ERROR SlurmSetupTimeout" in text, text
    assert not job_listed(job_id.group(1))


OWNER = """
import sys, time
import acme
from acme import ParallelMap

def nap(x):
    time.sleep(x)
    return x

if __name__ == "__main__":
    what, orphan = sys.argv[1], float(sys.argv[2])
    pool = acme.slurm_cluster_setup(partition="small", n_workers=1, timeout=60,
                                    interactive=False, orphan_timeout=orphan)
    print("POOL", pool.job_id, flush=True)
    if what == "hang":
        time.sleep(300)
    elif what == "map":
        with ParallelMap(nap, [3.0] * 4, write_worker_results=False) as pmap:
            pmap.compute()
    # "exit": end without cluster_cleanup()
"""


def start_owner(tmp_path, what: str, orphan: float = 600) -> tuple:
    """A python process that starts a SLURM pool (and then does ``what``)."""
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    bg = Background([script, what, orphan], tmp_path, slurm_env())
    found = []
    wait_until(lambda: found.append(re.search(r"POOL (\d+)", bg.stdout)) or found[-1], 60)
    assert found and found[-1], f"no pool:\n{bg.stdout}\n{bg.stderr}"
    return bg, found[-1].group(1)


@pytest.mark.timeout(90)
def test_slurm_pool_left_running_is_stopped_when_python_ends(tmp_path, slurm):
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    result = run_script(script, timeout=60, args=["exit", "600"], env=slurm_env())
    assert result.returncode == 0, str(result)
    job_id = re.search(r"POOL (\d+)", result.stdout).group(1)
    assert f"stopping the SLURM worker pool (job {job_id}): this process ends" \
        in result.stderr, str(result)
    assert not job_listed(job_id)  # stopped before the process ended
    assert job_state(job_id) == "COMPLETED"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".acme-slurm-pool")]


@pytest.mark.timeout(90)
def test_slurm_pool_ends_by_itself_when_its_python_is_killed(tmp_path, slurm):
    """SIGKILL leaves no chance to cancel the job: rank 0 ends it when the pool folder's
    heartbeat file is older than orphan_timeout (here 3 s; touched every 0.75 s)."""
    bg, job_id = start_owner(tmp_path, "hang", orphan=3)
    try:
        time.sleep(5)
        assert job_listed(job_id)  # the heartbeat keeps it alive while its owner lives
        assert job_state(job_id) == "RUNNING"
    finally:
        bg.kill()  # SIGKILL, by the owner's process group id
    assert wait_until(lambda: not job_listed(job_id), 20), "the orphaned pool still runs"
    assert job_state(job_id) == "COMPLETED"


@pytest.mark.timeout(90)
def test_ctrl_c_during_a_map_cancels_the_slurm_pool(tmp_path, slurm):
    bg, job_id = start_owner(tmp_path, "map")
    try:
        assert wait_until(lambda: "map 1 sent to the SLURM worker pool" in bg.stderr, 30), \
            bg.stderr
        time.sleep(1)
        os.killpg(bg.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert bg.wait(45) != 0
    finally:
        bg.kill()
    assert "KeyboardInterrupt" in bg.stderr, bg.stderr
    assert f"cancelling SLURM job {job_id} (the worker pool): map 1" in bg.stderr
    assert not job_listed(job_id) and not squeue_ids(tmp_path)
    assert job_state(job_id) == "CANCELLED"


@pytest.mark.timeout(90)
def test_script_functions_without_cloudpickle_on_a_job_and_on_a_pool(tmp_path, slurm):
    """Without cloudpickle a function of the ``__main__`` script travels by reference:
    the job's ranks load the script (not its main block). Rank 0 pickles the calls'
    context again for the worker ranks, which used to fail ("import of module
    '__acme_worker__' failed") for a one-run job too."""
    script = tmp_path / "no_cloudpickle.py"
    script.write_text(
        "import sys\n"
        "sys.modules['cloudpickle'] = None\n"
        "import acme\n"
        "from acme import ParallelMap\n"
        "def shifted(x):\n"
        "    return x * x + 1\n"
        "if __name__ == '__main__':\n"
        "    with ParallelMap(shifted, [1, 2, 3], write_worker_results=False,\n"
        "                     backend='slurm', partition='small', n_workers=1) as pmap:\n"
        "        print('JOB', pmap.compute(), flush=True)\n"
        "    pool = acme.slurm_cluster_setup(partition='small', n_workers=1,\n"
        "                                    interactive=False)\n"
        "    print('LOADED', pool.main_script, flush=True)\n"
        "    with ParallelMap(shifted, [4, 5], write_worker_results=False) as pmap:\n"
        "        print('POOL', pmap.compute(), flush=True)\n"
        "    acme.cluster_cleanup()\n")
    result = run_script(script, timeout=75, env=slurm_env())
    assert result.returncode == 0, str(result)
    assert "JOB [2, 5, 10]" in result.stdout, str(result)
    assert f"LOADED {script}" in result.stdout and "POOL [17, 26]" in result.stdout
    assert not squeue_ids(tmp_path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["local_cluster_setup", "stop_client=False"])
def test_a_script_that_leaves_its_pool_running_still_exits(how):
    """Without cluster_cleanup() at the end, the pool is stopped at exit: the script
    must not hang in multiprocessing's exit handler waiting for the workers."""
    start = "acme.local_cluster_setup(n_workers=2, interactive=False)" \
        if how == "local_cluster_setup" else "pass"
    keep = ", stop_client=False" if how == "stop_client=False" else ""
    code = f"""
import acme
from acme import ParallelMap
def twice(x):
    return 2 * x
if __name__ == "__main__":
    {start}
    with ParallelMap(twice, [1, 2, 3], write_worker_results=False, backend="auto"{keep}) as pmap:
        print(pmap.compute())
    print("WORKERS", *sorted(w.process.pid for w in acme.clusters.current_pool().workers))
"""
    result = run_script(code, timeout=30, env={"ACME_AUTO_SLURM": "0"})
    assert result.returncode == 0, result
    assert "[2, 4, 6]" in result.stdout
    pids = [int(p) for p in result.stdout.split("WORKERS", 1)[1].split()]
    assert len(pids) == 2 and wait_dead(pids)


@pytest.mark.timeout(60)
def test_stop_client_false_maps_with_backend_local_share_one_pool():
    """backend="local", stop_client=False: later maps use the workers the first one
    left running, instead of each starting (and leaking) a pool of its own."""
    pools = []
    for _ in range(3):
        with ParallelMap(whoami, list(range(6)), write_worker_results=False,
                         backend="local", n_workers=2, stop_client=False) as pmap:
            pmap.compute()
        pools.append(clusters.current_pool())
    assert pools[0] is pools[1] is pools[2] and not pools[0].closed
    assert len(clusters._pools) == 1
    pids = pool_pids(pools[0])
    acme.cluster_cleanup()
    assert wait_dead(pids)
