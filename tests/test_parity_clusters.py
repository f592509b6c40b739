"""The cluster setup functions against esi-acme 2026.6.2 (issue 14, "API gaps").

Signatures and the behaviour off a cluster are compared with the real esi-acme, run in
its own venv (scripts/esi_acme_env.sh) from a folder outside this checkout, with
failing stubs of the SLURM commands first on PATH (esi-acme takes any host where
`sinfo` runs for a SLURM cluster). Our side runs the same script under the same stubs:
real commands that fail, not a mock. The SLURM tests run on the one-node test cluster
and stop their pools by job id; local pools are stopped by their worker PIDs.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import acme
from acme import ParallelMap, ParallelMapError, clusters
from conftest import TESTS_DIR, require
from mpi_helpers import require_slurm
from test_slurm import job_listed, slurm_env, squeue_ids, wait_until

ESI_VERSION = "2026.6.2"
VENV = Path(os.environ.get("ACME_ESI_VENV", Path.home() / ".cache/acme-test/esi-acme"))
SLURM_COMMANDS = ("sinfo", "squeue", "srun", "sbatch", "scancel", "scontrol", "sacct",
                  "salloc")
SETUPS = ("esi_cluster_setup", "bic_cluster_setup", "slurm_cluster_setup",
          "local_cluster_setup", "cluster_cleanup")

# The same script for both packages: signatures, exception types and what esi/bic
# cluster setup does where SLURM is not usable. It prints one JSON line.
FACTS = r'''
import inspect, json, os
import acme

def setup_function(name):
    """From the package (the export itself is checked apart), else acme.clusters."""
    if hasattr(acme, name):
        return getattr(acme, name)
    import importlib
    return getattr(importlib.import_module("acme.clusters"), name, None)

def signature(name):
    if setup_function(name) is None:
        return None
    out = []
    for p in inspect.signature(setup_function(name)).parameters.values():
        default = None if p.default is inspect.Parameter.empty else repr(p.default)
        out.append([p.name, p.kind.name, default])
    return out

def raised(call):
    try:
        call()
    except Exception as exc:
        return [c.__name__ for c in type(exc).__mro__]
    return None

def workers(handle):
    if hasattr(handle, "scheduler_info"):  # esi-acme: a dask Client
        return len(handle.scheduler_info()["workers"])
    return len(handle.workers)

if __name__ == "__main__":
    facts = {"signatures": {n: signature(n) for n in %r},
             "exported": [n for n in %r if n in acme.__all__],
             "slurm_cluster_setup()": raised(lambda: acme.slurm_cluster_setup()),
             "cluster_cleanup(3)": raised(lambda: acme.cluster_cleanup(3)),
             "cores": len(os.sched_getaffinity(0))}
    for name in ("esi_cluster_setup", "bic_cluster_setup"):
        setup = setup_function(name)
        try:
            first = setup("8GBXS", n_workers=3, interactive=False)
            again = setup("8GBXS", n_workers=3, interactive=False)
        except Exception as exc:
            facts[name] = {"raised": repr(exc)}
            continue
        facts[name] = {"type": type(first).__name__, "workers": workers(first),
                       "again_same": again is first}
        acme.cluster_cleanup(first)
    print("FACTS", json.dumps(facts), flush=True)
''' % (SETUPS, SETUPS)


def _stubs(folder: Path) -> Path:
    """Failing stubs (exit 127) of the SLURM commands: the venv's, else made here."""
    if all((VENV / "nosl" / name).exists() for name in SLURM_COMMANDS):
        return VENV / "nosl"
    folder.mkdir(exist_ok=True)
    for name in SLURM_COMMANDS:
        stub = folder / name
        stub.write_text("#!/bin/sh\nexit 127\n")
        stub.chmod(0o755)
    return folder


def _facts(python: str, work: Path, stubs: Path, pythonpath: str = "") -> tuple:
    """Run FACTS with ``python`` in ``work`` under the stubs; (facts, stderr)."""
    script = work / "facts.py"
    script.write_text(FACTS)
    env = dict(os.environ, PATH=f"{stubs}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=pythonpath, PYTHONUNBUFFERED="1")
    env.pop("SLURM_CONF", None)
    proc = subprocess.Popen([python, str(script)], cwd=work, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{python} facts.py did not finish in 240 s:\n{out}\n{err[-3000:]}")
    line = [ln for ln in out.splitlines() if ln.startswith("FACTS ")]
    assert proc.returncode == 0 and line, f"{python}:\n{out}\n{err[-3000:]}"
    return json.loads(line[-1][6:]), err


@pytest.fixture(scope="module")
def facts(tmp_path_factory) -> dict:
    """FACTS of esi-acme (its venv) and of this checkout, both under failing stubs."""
    python = VENV / "bin" / "python"
    require(python.exists(), f"no esi-acme venv at {VENV} (run scripts/esi_acme_env.sh)")
    work = tmp_path_factory.mktemp("cluster_facts")  # outside this checkout
    stubs = _stubs(work / "nosl")
    (work / "theirs").mkdir()
    (work / "ours").mkdir()
    theirs, _ = _facts(str(python), work / "theirs", stubs)
    ours, our_log = _facts(sys.executable, work / "ours", stubs,
                           str(TESTS_DIR.parent))
    return {"theirs": theirs, "ours": ours, "our_log": our_log}


# ------------------------------------------------------------------ signatures
#: Defaults that differ on purpose (parameter -> reason). Names, order and kinds of
#: esi-acme's parameters are never allowed to differ.
DEFAULTS_DIFFER = {
    ("esi_cluster_setup", "partition"): "esi-acme requires it; 'auto' picks one",
    ("bic_cluster_setup", "partition"): "esi-acme requires it; 'auto' picks one",
    ("slurm_cluster_setup", "partition"): "esi-acme's placeholder 'partition_name' fails",
    ("slurm_cluster_setup", "n_workers"): "'auto': the idle CPUs (esi-acme: 1)",
    ("slurm_cluster_setup", "mem_per_worker"): "'auto': the partition's default",
}
MUTABLE_DEFAULTS = ("job_extra", "avail_partitions", "invalid_partitions")  # [] -> None


def test_setup_signatures_match_esi_acme(facts):
    """Every parameter of esi-acme's setup functions, in its order and kind; ours may
    only add keyword-only parameters (before **kwargs)."""
    for name in SETUPS:
        theirs = facts["theirs"]["signatures"][name]
        ours = facts["ours"]["signatures"][name]
        assert ours is not None, f"acme has no {name}"
        extra = [p for p in ours if p[0] not in {t[0] for t in theirs}]
        assert all(p[1] == "KEYWORD_ONLY" for p in extra), (name, extra)
        ours = [p for p in ours if p not in extra]
        assert [p[:2] for p in ours] == [p[:2] for p in theirs], name
        for (param, _, mine), (_, _, esi) in zip(ours, theirs):
            if DEFAULTS_DIFFER.get((name, param)):
                continue
            if param in MUTABLE_DEFAULTS:  # a list default would be shared by calls
                assert (esi, mine) == ("[]", "None"), (name, param)
            else:
                assert mine == esi, (name, param, mine, esi)


def test_bic_cluster_setup_is_exported_like_esi_acme(facts):
    assert facts["theirs"]["exported"] == list(SETUPS)
    assert facts["ours"]["exported"] == list(SETUPS)
    assert acme.bic_cluster_setup is clusters.bic_cluster_setup


# ------------------------------------------------------------------ off a cluster
def test_exception_types_without_slurm_match_esi_acme(facts):
    theirs, ours = facts["theirs"], facts["ours"]
    assert "OSError" in theirs["slurm_cluster_setup()"]
    assert "OSError" in ours["slurm_cluster_setup()"]
    assert "RuntimeError" in ours["slurm_cluster_setup()"]  # what acme raised before
    assert theirs["cluster_cleanup(3)"][0] == ours["cluster_cleanup(3)"][0] == "TypeError"


@pytest.mark.parametrize("name", ["esi_cluster_setup", "bic_cluster_setup"])
def test_site_setup_off_cluster_falls_back_to_local_workers_like_esi_acme(facts, name):
    """Without SLURM esi-acme starts a local cluster, one worker per core whatever
    n_workers says; a second call returns the running one. Ours: the same, and a
    warning in the log says so."""
    theirs, ours = facts["theirs"][name], facts["ours"][name]
    cores = facts["ours"]["cores"]
    assert theirs["type"] == "Client" and theirs["again_same"], theirs
    assert ours == {"type": "LocalPool", "workers": cores, "again_same": True}, ours
    if cores <= 4:  # Dask's LocalCluster: one single-threaded worker per core up to 4
        assert theirs["workers"] == cores
    line = [ln for ln in facts["our_log"].splitlines()
            if name in ln and "SLURM is not usable" in ln]
    assert line and "starting local worker processes instead" in line[0], \
        facts["our_log"][-2000:]


def test_site_setup_off_cluster_on_a_terminal_asks_first(tmp_path):
    """interactive=True on a terminal: esi-acme asks whether to start local workers
    (default no); "n" is an OSError, "y" starts them."""
    stubs = _stubs(tmp_path / "nosl")
    code = ("import acme\n"
            "for answer in ('n', 'y'):\n"
            "    try:\n"
            "        pool = acme.esi_cluster_setup('8GBXS')\n"
            "        print('POOL', type(pool).__name__, len(pool.workers), flush=True)\n"
            "        acme.cluster_cleanup(pool)\n"
            "    except Exception as exc:\n"
            "        print('ERROR', isinstance(exc, OSError), exc, flush=True)\n")
    env = dict(os.environ, PATH=f"{stubs}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(TESTS_DIR.parent), PYTHONUNBUFFERED="1")
    seen = b""
    with _on_a_terminal(code, tmp_path, env) as (proc, master):
        for answer in (b"n\n", b"y\n"):
            seen = _read_until(master, seen, b"instead? [y/N]",
                               seen.count(b"instead? [y/N]") + 1, 60)
            os.write(master, answer)
        assert proc.wait(timeout=60) == 0, seen.decode(errors="replace")
        seen = _read_until(master, seen, b"\n", 10 ** 6, 1)
    text = seen.decode(errors="replace")
    assert re.search(r"ERROR True esi_cluster_setup: SLURM is not usable .* no local "
                     r"workers started, as asked", text), text
    assert re.search(r"POOL LocalPool [1-9]", text), text


@contextlib.contextmanager
def _on_a_terminal(code: str, cwd: Path, env: dict):
    """``python -c code`` with a pseudo-terminal as stdin, stdout and stderr: yields
    (process, master fd); afterwards a process still running is killed (its group,
    by PID) and the terminal closed."""
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=slave, stdout=slave,
                            stderr=slave, cwd=cwd, env=env, start_new_session=True)
    os.close(slave)
    try:
        yield proc, master
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)


def _read_until(master: int, seen: bytes, pattern: bytes, count: int,
                seconds: float) -> bytes:
    import select
    deadline = time.monotonic() + seconds
    while seen.count(pattern) < count and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                seen += os.read(master, 4096)
            except OSError:  # the process ended
                break
    return seen


# ------------------------------------------------------------------ local pools
@pytest.fixture
def pools():
    """Stop every pool a test left registered (local workers by PID, jobs by id)."""
    yield
    for pool in list(clusters._pools):
        pool.close()
    clusters._pools.clear()


def grab(mb):
    """Hold ``mb`` MB for a second."""
    import numpy as np
    block = np.ones(int(mb * 2 ** 20 / 8))
    time.sleep(1.0)
    return int(block.size > 0) * mb


@pytest.mark.timeout(120)
def test_local_cluster_setup_takes_esi_acmes_positional_mem_per_worker(pools):
    """local_cluster_setup(n_workers, mem_per_worker, interactive) as in esi-acme: a
    worker whose memory grows past mem_per_worker is stopped (its call fails, as a
    Dask worker past its memory_limit), the other calls and the pool go on."""
    pool = acme.local_cluster_setup(2, "300MB", False)
    assert len(pool.workers) == 2 and pool.mem_per_worker_mb == 300
    with pytest.raises(ParallelMapError) as info:
        with ParallelMap(grab, [10, 600, 20], write_worker_results=False,
                         backend=pool) as pmap:
            pmap.compute()
    assert info.value.failed == [1]
    assert info.value.results[0] == 10 and info.value.results[2] == 20
    assert "WorkerDied" in repr(info.value.errors[1]) or "died" in str(info.value)
    with ParallelMap(grab, [5, 5], write_worker_results=False, backend=pool) as pmap:
        assert pmap.compute() == [5, 5]  # the pool took a new worker
    acme.cluster_cleanup(client=pool)
    assert pool.closed


@pytest.mark.timeout(60)
def test_local_cluster_setup_without_a_cap_and_bad_caps(pools):
    pool = acme.local_cluster_setup(n_workers=1, interactive=False)
    assert pool.mem_per_worker_mb is None
    with ParallelMap(grab, [400], write_worker_results=False, backend=pool) as pmap:
        assert pmap.compute() == [400]
    acme.cluster_cleanup()
    with pytest.raises(TypeError, match="mem_per_worker"):
        acme.local_cluster_setup(1, 300)
    with pytest.raises(ValueError, match="mem_per_worker"):
        acme.local_cluster_setup(1, "lots")
    assert clusters.current_pool() is None


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("kwargs, error, pattern", [
    ({"worker_extra_args": ["--nthreads=2"]}, ValueError, "Dask's worker.*job_extra"),
    ({"scheduler_options": {"port": 8786}}, ValueError, "Dask's scheduler"),
    ({"job_extra": "--exclusive"}, TypeError, "job_extra.*list"),
    ({"job_extra": [3]}, TypeError, "job_extra"),
    ({"job_extra": ["exclusive"]}, ValueError, "start with -"),
    ({"job_extra": ["-o", "/tmp/x.out"]}, ValueError, "--output=PATH"),
    ({"job_extra": ["--output=/no/such/folder/x.out"]}, ValueError, "has to exist"),
    ({"n_cores": 0}, ValueError, "n_cores"),
    ({"n_cores": 1.5}, TypeError, "n_cores"),
    ({"processes_per_worker": 0}, ValueError, "processes_per_worker"),
    ({"n_workers_startup": -1}, ValueError, "n_workers_startup"),
    ({"interactive_wait": -1}, ValueError, "interactive_wait"),
    ({"start_client": "yes"}, TypeError, "start_client"),
    ({"mem_cushion": "100MB"}, TypeError, "mem_cushion.*number of MB"),
    ({"avail_partitions": "small"}, TypeError, "avail_partitions"),
])
def test_slurm_cluster_setup_refuses_bad_esi_acme_keywords(kwargs, error, pattern):
    """Refused before SLURM is asked anything, with what was expected."""
    with pytest.raises(error, match=pattern):
        acme.slurm_cluster_setup(**{"partition": "small", "n_workers": 1,
                                    "interactive": False, **kwargs})
    assert clusters.current_pool() is None


# ------------------------------------------------------------------ on SLURM
@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """Require SLURM; run in tmp_path; afterwards stop the test's pools and cancel, by
    job id, every job still listed whose working folder is the test's."""
    require_slurm()
    monkeypatch.chdir(tmp_path)
    yield
    for pool in list(clusters._pools):
        pool.close()
    clusters._pools.clear()
    left = squeue_ids(tmp_path)
    for job_id in left:
        subprocess.run(["scancel", job_id], capture_output=True)
    if left:
        wait_until(lambda: not any(job_listed(j) for j in left), 30)


def job_record(job_id: str) -> dict:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                         text=True).stdout
    return dict(t.partition("=")[::2] for t in out.split() if "=" in t)


def cpus_per_task(x):
    return x, os.environ.get("SLURM_CPUS_PER_TASK"), os.environ.get("SLURM_PROCID")


@pytest.mark.timeout(120)
def test_slurm_pool_takes_esi_acmes_positional_keywords(tmp_path, slurm, caplog):
    """slurm_cluster_setup(partition, n_cores, n_workers, processes_per_worker,
    mem_per_worker, n_workers_startup, timeout, interactive, interactive_wait,
    start_client, job_extra, ...): n_cores CPUs per worker rank, mem_per_worker
    capped at the partition's limit less mem_cushion, the log where --output says."""
    (tmp_path / "logs").mkdir()
    output = str(tmp_path / "logs" / "slurm-%j.out")
    with caplog.at_level("WARNING", logger="acme"):
        pool = acme.slurm_cluster_setup("small", 2, 1, 1, "4GB", 1, 60, False, 10, True,
                                        [f"--output={output}"], mem_cushion=100)
    assert pool.cpus_per_worker == 2 and pool.n_workers == 1
    # small allows 1000 MB per CPU: 2 CPUs minus the 100 MB cushion
    assert pool.mem_per_worker_mb == pytest.approx(1900)
    assert any("mem_cushion=100" in r.getMessage() for r in caplog.records)
    record = job_record(pool.job_id)
    assert record["NumTasks"] == "2" and record["NumCPUs"] == "4", record
    assert record["MinMemoryCPU"] == "950M", record
    assert pool.log_path == output.replace("%j", pool.job_id) == record["StdOut"]
    with ParallelMap(cpus_per_task, [1, 2], write_worker_results=False) as pmap:
        assert [r[:2] for r in pmap.compute()] == [(1, "2"), (2, "2")]
    acme.cluster_cleanup(client=pool)
    assert wait_until(lambda: not job_listed(pool.job_id), 30)
    assert os.path.isfile(pool.log_path)


@pytest.mark.timeout(120)
def test_slurm_pool_processes_per_worker_and_avail_partitions(tmp_path, slurm):
    """processes_per_worker=2: two worker ranks per worker, sharing its cores and
    memory; partition="auto" chooses only among avail_partitions."""
    pool = acme.slurm_cluster_setup(partition="auto", n_cores=2, n_workers=1,
                                    processes_per_worker=2, mem_per_worker="1GB",
                                    interactive=False, avail_partitions=["large"])
    assert pool.partition == "large"  # small would fit 512 MB per rank with less waste
    assert pool.n_workers == 2 and pool.cpus_per_worker == 1
    assert pool.mem_per_worker_mb == pytest.approx(512)
    with ParallelMap(cpus_per_task, [1, 2, 3, 4], write_worker_results=False) as pmap:
        ranks = {r[2] for r in pmap.compute()}
    assert ranks <= {"1", "2"} and ranks, ranks
    with pytest.raises(ValueError, match="invalid_partitions"):
        acme.slurm_cluster_setup(partition="small", n_workers=1, interactive=False,
                                 invalid_partitions=["small"])
    with pytest.raises(ValueError, match="avail_partitions"):
        acme.slurm_cluster_setup(partition="small", n_workers=1, interactive=False,
                                 avail_partitions=["large"])
    assert squeue_ids(tmp_path) == [pool.job_id]  # the refused ones submitted nothing


@pytest.mark.timeout(90)
def test_slurm_pool_interactive_wait_gives_up_without_an_answer(tmp_path, slurm):
    """On a terminal, the question after timeout waits interactive_wait seconds; no
    answer: the job is cancelled and SlurmSetupTimeout says why."""
    code = ("import acme\n"
            "try:\n"
            "    acme.slurm_cluster_setup(partition='small', n_workers=1, timeout=2,\n"
            "                             interactive_wait=2,\n"
            "                             job_extra=['--begin=now+3600'])\n"
            "except Exception as exc:\n"
            "    print('ERROR', type(exc).__name__, exc, flush=True)\n")
    seen = b""
    with _on_a_terminal(code, tmp_path, slurm_env()) as (proc, master):
        seen = _read_until(master, seen, b"give up [g]?", 1, 40)
        assert b"give up [g]?" in seen, seen.decode(errors="replace")
        start = time.monotonic()
        assert proc.wait(timeout=40) == 0, seen.decode(errors="replace")
        waited = time.monotonic() - start
        seen = _read_until(master, seen, b"\n", 10 ** 6, 1)
    text = seen.decode(errors="replace")
    assert "no answer within interactive_wait=2 s" in text, text
    assert "ERROR SlurmSetupTimeout" in text, text
    job_id = re.search(r"SLURM job (\d+) \(the worker pool\)", text).group(1)
    assert not job_listed(job_id)
    print(f"gave up {waited:.1f} s after the question")


@pytest.mark.timeout(120)
def test_esi_cluster_setup_on_slurm_derives_cores_and_reuses_its_pool(tmp_path, slurm,
                                                                      monkeypatch):
    """esi_cluster_setup(partition, n_workers, mem_per_worker) as esi-acme: cores from
    mem_per_worker / DefMemPerCPU; the job log in the site's log folder (here moved
    into tmp_path: /cs/slurm exists only at ESI); a second call returns the running
    pool; partitions of the other architecture are refused before anything is
    submitted."""
    import dataclasses
    import getpass
    import platform
    site = tmp_path / "cs_slurm"
    site.mkdir()
    monkeypatch.setattr(clusters, "_ESI", dataclasses.replace(
        clusters._ESI, marker=str(site), log_root=str(site / "{user}")))
    pool = acme.esi_cluster_setup("large", 1, "4GB", interactive=False)
    assert pool.partition == "large" and pool.n_workers == 1
    assert pool.cpus_per_worker == 2  # 4096 MB / DefMemPerCPU 2000 MB
    user = getpass.getuser()
    assert re.fullmatch(rf"{re.escape(str(site))}/{user}/{user}_\d{{8}}-\d{{6}}/"
                        rf"slurm-{pool.job_id}\.out", pool.log_path), pool.log_path
    assert acme.esi_cluster_setup("large", 1, "4GB", interactive=False) is pool
    assert squeue_ids(tmp_path) == [pool.job_id]
    acme.cluster_cleanup(pool)
    assert wait_until(lambda: not job_listed(pool.job_id), 30)
    assert os.path.isfile(pool.log_path)
    if platform.machine() == "x86_64":
        with pytest.raises(ValueError, match="E880.*x86_64"):
            acme.esi_cluster_setup("E880", interactive=False)
        with pytest.raises(ValueError, match="16GBSppc.*x86_64"):
            clusters.bic_cluster_setup("16GBSppc", interactive=False)
    assert not squeue_ids(tmp_path) and clusters.current_pool() is None
