"""Across hosts: MPI and SLURM on three "nodes" of this machine (``scripts/multinode.sh``).

The nodes are network namespaces node1..node3 with their own addresses (10.77.0.1-3) and
host names; the root namespace (10.77.0.254) is the login node. Open MPI reaches the
nodes through ``scripts/multinode_rsh.sh`` (an ssh stand-in that, like ssh, does not pass
the environment on) and is forced onto TCP between the nodes' addresses, so nothing can
quietly go through shared memory or loopback. SLURM runs one slurmd per node.

The module fixture runs ``multinode.sh up`` once and ``multinode.sh down`` at the end;
the last test checks that ``down`` leaves no namespace, link or daemon behind. Needs root
(namespaces) and Open MPI, mpi4py, SLURM and munge: skipped without them, a failure under
CI (ACME_REQUIRE_INFRA=1).
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import TESTS_DIR, require

sys.path.insert(0, str(TESTS_DIR / "mpi_scripts"))

import modes  # noqa: E402
from modes import assert_same, split_ranks  # noqa: E402

REPO = TESTS_DIR.parent
MULTINODE = REPO / "scripts" / "multinode.sh"
RSH = REPO / "scripts" / "multinode_rsh.sh"
WHERE = TESTS_DIR / "multinode_scripts" / "where.py"
MODES = TESTS_DIR / "mpi_scripts" / "modes.py"
BEHAVIOURS = TESTS_DIR / "mpi_scripts" / "behaviours.py"
MODES_ON_SLURM = TESTS_DIR / "slurm_scripts" / "modes_on_slurm.py"
JOBS = TESTS_DIR / "slurm_scripts" / "jobs.py"

DIR = Path(os.environ.get("ACME_MULTINODE_DIR", "/tmp/acme-multinode"))
SUBNET = "10.77.0.0/24"
NODES = {"node1": "10.77.0.1", "node2": "10.77.0.2", "node3": "10.77.0.3"}
LOGIN = "10.77.0.254"
TOOLS = ("ip", "nsenter", "unshare", "mpiexec", "munged", "slurmctld", "slurmd", "srun",
         "sbatch", "squeue", "scontrol")

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------------------------ the cluster
def require_multinode() -> None:
    require(sys.platform.startswith("linux") and os.geteuid() == 0,
            "multi-node tests need root on Linux (network namespaces, SLURM daemons)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    require(not missing, f"multi-node tests need {', '.join(missing)} "
                         "(bash scripts/install_test_deps.sh; iproute2, util-linux)")
    try:
        import mpi4py  # noqa: F401
        has_mpi4py = True
    except ImportError:
        has_mpi4py = False
    require(has_mpi4py, "multi-node tests need mpi4py (bash scripts/install_test_deps.sh)")


def multinode(action: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, ACME_MULTINODE_DIR=str(DIR))
    start = time.monotonic()
    proc = subprocess.run(["bash", str(MULTINODE), action], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    print(f"multinode.sh {action}: exit {proc.returncode} in "
          f"{time.monotonic() - start:.2f} s\n{proc.stdout}{proc.stderr}")
    return proc


@dataclass
class Cluster:
    conf: Path
    hostfile: Path


@pytest.fixture(scope="module")
def cluster():
    """The three-node cluster, up for this module; torn down afterwards (also after
    failures: the teardown runs whatever happened)."""
    require_multinode()
    proc = multinode("up")
    if proc.returncode != 0:
        multinode("down")
        pytest.fail(f"scripts/multinode.sh up failed:\n{proc.stdout}\n{proc.stderr}",
                    pytrace=False)
    yield Cluster(DIR / "slurm.conf", DIR / "hostfile")
    down = multinode("down")
    assert down.returncode == 0, down.stdout + down.stderr


def base_env() -> dict:
    env = dict(os.environ)
    for key in list(env):  # submit as from a login node, never from inside a job
        if key.startswith("SLURM_"):
            del env[key]
    env.update(PYTHONUNBUFFERED="1", ACME_AUTO_SLURM="0", ACME_NO_PROGRESS="1",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(TESTS_DIR), str(TESTS_DIR / "mpi_scripts")] +
        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def slurm_env(**extra) -> dict:
    """Clients of the multi-node cluster; jobs inherit Open MPI's TCP settings."""
    env = base_env()
    env.update(SLURM_CONF=str(DIR / "slurm.conf"), OMPI_MCA_btl="self,tcp",
               OMPI_MCA_pml="ob1", OMPI_MCA_btl_tcp_if_include=SUBNET,
               OMPI_MCA_oob_tcp_if_include=SUBNET)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(cmd: list, seconds: float, env: dict, cwd=None) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own session; kill its process group if it overruns."""
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{cmd} did not end within {seconds} s (killed)\n"
                    f"--- stdout ---\n{out}\n--- stderr ---\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def mpiexec(ranks: int, script, *args, seconds: float = 40) -> subprocess.CompletedProcess:
    """``mpiexec`` of ``python -m acme.mpi_run`` on the three nodes: ranks placed
    round-robin by node (rank r on node (r % 3) + 1, rank 0 on node1), Open MPI on TCP
    between the nodes' addresses, the variables the ranks need forwarded with ``-x``
    (the rsh agent, like ssh, passes no environment)."""
    cmd = ["mpiexec", "-n", ranks, "--hostfile", DIR / "hostfile", "--map-by", "node",
           "--mca", "plm", "rsh", "--mca", "plm_rsh_agent", RSH,
           "--mca", "btl", "self,tcp", "--mca", "pml", "ob1",
           "--mca", "btl_tcp_if_include", SUBNET, "--mca", "oob_tcp_if_include", SUBNET,
           "-x", "PYTHONPATH", "-x", "PYTHONUNBUFFERED", "-x", "ACME_AUTO_SLURM",
           "-x", "ACME_NO_PROGRESS",
           sys.executable, "-m", "acme.mpi_run", script, *args]
    return run(cmd, seconds, base_env())


def node_of_rank(rank: int) -> str:
    return f"node{rank % 3 + 1}"


def parse(pattern: str, text: str):
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not found in:\n{text}"
    return eval(match.group(1))  # noqa: S307 - our own script's repr output


def check_where(stdout: str) -> list:
    """Every call ran on a node whose name, address and MPI processor name agree, with
    the same acme code as this process; returns the (host, address, rank) triples."""
    import acme
    import acme.backends
    calls = parse(r"WHERE (\[.*\])", stdout)
    for host, address, rank, processor, code in calls:
        assert NODES.get(host) == address, (host, address)
        assert processor in (host, "-"), (host, processor)
        assert code == (acme.__file__, acme.backends.__file__), \
            f"a worker on {host} ran other acme code: {code}"
    return [(host, address, rank) for host, address, rank, _, _ in calls]



def compare_with_local(mode: str, tmp_path: Path, summary: Path) -> list:
    modes.main(mode, str(tmp_path / "local"), str(tmp_path / "local.pkl"), "local")
    with open(summary, "rb") as fh:
        remote, ranks = split_ranks(mode, pickle.load(fh))
    with open(tmp_path / "local.pkl", "rb") as fh:
        local, _ = split_ranks(mode, pickle.load(fh))
    assert_same(remote, local)
    return ranks


def squeue_ids() -> list:
    proc = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                          env=slurm_env(), timeout=20)
    return proc.stdout.split()


def job_record(job_id: str) -> str:
    """``scontrol show job -o ID`` (every job it still knows, one per line, for "")."""
    cmd = ["scontrol", "show", "job", "-o"] + ([job_id] if job_id else [])
    return subprocess.run(cmd, capture_output=True, text=True, env=slurm_env(),
                          timeout=20).stdout


def wait_until(condition, seconds: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


@pytest.fixture
def no_jobs_left(cluster):
    """Afterwards: cancel any job of the multi-node cluster still listed."""
    yield
    left = squeue_ids()
    if left:
        subprocess.run(["scancel", *left], env=slurm_env(), capture_output=True, timeout=20)
        wait_until(lambda: not squeue_ids(), 20)
    assert not left, f"jobs still listed after the test: {left}"


# ------------------------------------------------------------------ the nodes
@pytest.mark.timeout(30)
def test_each_node_has_its_own_address_and_host_name(cluster):
    seen = {}
    for node, address in NODES.items():
        proc = run([RSH, address, "hostname; ip -4 -o addr show dev eth0"], 10, base_env())
        assert proc.returncode == 0, proc.stderr
        name, _, addr_line = proc.stdout.partition("\n")
        seen[node] = (name.strip(), f"{address}/24" in addr_line)
    assert seen == {node: (node, True) for node in NODES}
    assert socket.gethostname() not in NODES  # the login node is not a compute node


# ---------------------------------------------------------------- MPI (mpiexec)
def test_calls_run_on_all_three_nodes(cluster):
    proc = mpiexec(4, WHERE, "24", "0.05")
    assert proc.returncode == 0, proc.stderr
    assert "SCHEDULER node1 10.77.0.1" in proc.stdout, proc.stdout
    calls = check_where(proc.stdout)
    assert {host for host, _, _ in calls} == set(NODES)
    assert {address for _, address, _ in calls} == set(NODES.values())
    for host, _, rank in calls:  # ranks 1, 2, 3 on node2, node3, node1
        assert host == node_of_rank(rank), calls
    stats = parse(r"STATS (\{.*\})", proc.stdout)
    assert stats["worker_hosts"] == {1: "node2", 2: "node3", 3: "node1"}


@pytest.mark.parametrize("mode", sorted(modes.MODES))
def test_every_mode_across_nodes_matches_local(mode, tmp_path, cluster):
    if mode == "single_shape":
        import h5py
        require(h5py.get_config().mpi, "the parallel single-file test needs h5py built "
                                       "against parallel HDF5 (scripts/install_test_deps.sh)")
    summary = tmp_path / "mpi.pkl"
    proc = mpiexec(4, MODES, mode, tmp_path / "mpi", summary)
    assert proc.returncode == 0, proc.stderr
    ranks = compare_with_local(mode, tmp_path, summary)
    if ranks:  # the first calls go one by one to every worker: all three nodes wrote
        assert set(ranks) == {1, 2, 3}, ranks
    if mode == "single_shape":  # one real dataset, opened by ranks on three nodes (mpio)
        import h5py
        with h5py.File(tmp_path / "mpi" / "work.h5", "r") as h5f:
            assert not h5f["result_0"].is_virtual
            np.testing.assert_array_equal(
                h5f["result_0"][()],
                np.stack([np.arange(8.0) * x * 2.0 for x in range(modes.N)], axis=1))
        assert "h5py was built without MPI" not in proc.stderr
        assert not [n for n in os.listdir(tmp_path / "mpi") if n != "work.h5"
                    and not n.startswith(("ACME_", "."))]


def test_a_failing_call_names_the_node_it_ran_on(tmp_path, cluster):
    out = tmp_path / "out"
    proc = mpiexec(4, BEHAVIOURS, "failing_call", out)
    assert proc.returncode == 0, proc.stderr
    assert "ERROR ParallelMapError [3] ValueError" in proc.stdout
    cause = re.search(r"CAUSE (.*)", proc.stdout).group(1)
    where = re.search(r"Call 3 failed on MPI rank (\d), host (\S+), pid \d+", cause)
    assert where, cause
    rank, host = int(where.group(1)), where.group(2).rstrip(",")
    assert host == node_of_rank(rank) and host != socket.gethostname(), cause
    logs = list(out.glob("ACME_fail_at_3_*.log"))
    assert len(logs) == 1, os.listdir(out)
    assert f"call 3 of fail_at_3 failed on MPI rank {rank}, host {host}" in \
        logs[0].read_text()
    assert sorted(os.listdir(out / "fail_at_3_payload")) == \
        sorted(f"fail_at_3_{i}.h5" for i in range(8) if i != 3)


@pytest.mark.timeout(90)
def test_a_worker_dying_on_another_node_ends_the_run_and_resume_finishes(tmp_path,
                                                                       cluster):
    """A worker rank on another node dies mid-run (os._exit): the run ends at once,
    finished results are on disk, and the same script with resume=True, again across
    the nodes, runs only the rest.

    Across nodes rank 0 does not always get to name the lost calls: Open MPI's TCP
    transport treats the dead peer's closed connection as fatal and can end rank 0
    inside MPI before Python runs (on one node, over shared memory, it never does).
    When it does name them, each worker rank comes with its node."""
    out, flag, n, culprit = tmp_path / "out", tmp_path / "crash.flag", 50, 23
    flag.touch()
    script = TESTS_DIR / "mpi_scripts" / "reliability.py"
    start = time.monotonic()
    proc = mpiexec(4, script, "crash_exit", out, flag, seconds=40)
    assert proc.returncode != 0 and "NOT REACHED" not in proc.stdout, proc.stdout
    assert time.monotonic() - start < 30
    lost = re.search(r"calls (\[[\d, ]*\]) were running on worker ranks (\[[\d, ]*\]) and "
                     r"\d+ calls had not started; their results are missing \(([^)]*)\)",
                     proc.stderr)
    if lost:
        for rank in eval(lost.group(2)):
            assert f"rank {rank} on {node_of_rank(rank)}" in lost.group(3), lost.group(3)
    print(f"rank 0 {'named' if lost else 'did not get to name'} the lost calls")
    payload = out / "crash_at_payload"
    done = {int(re.match(r"crash_at_(\d+)\.h5$", name).group(1))
            for name in os.listdir(payload) if name.endswith(".h5")}
    assert culprit not in done and len(done) >= 3, sorted(done)

    # A result counts once rank 0 has journaled it: a file a worker wrote just before
    # rank 0 was ended over TCP is not in the journal and is run again (never trusted).
    journaled = {int(line.split()[0]) for line in (out / ".acme" / "done").read_text().splitlines()
                 if line.strip()}
    assert journaled <= done, sorted(journaled - done)

    flag.unlink()
    proc = mpiexec(4, script, "resume", out, flag, "exit", seconds=40)
    assert proc.returncode == 0, proc.stderr
    ran = parse(r"RESUMED (\{.*\})", proc.stdout)
    assert ran == {"ran": n - len(journaled), "resumed": len(journaled)}, ran
    print(f"{len(done)} payload files after the crash, {len(journaled)} journaled")
    import h5py
    with h5py.File(out / "crash_at.h5", "r") as h5f:
        for i in range(n):
            np.testing.assert_array_equal(h5f[f"comp_{i}"]["result_0"][()], [i, i * i])
    assert not [name for name in os.listdir(payload) if name.endswith(".tmp")]


# ------------------------------------------------------------------- SLURM
@pytest.mark.timeout(60)
def test_srun_on_three_nodes(tmp_path, no_jobs_left):
    proc = run(["srun", "-N", "3", "-n", "4", sys.executable, "-m", "acme.mpi_run", WHERE,
                "24", "0.05"], 40, slurm_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    calls = check_where(proc.stdout)
    assert {host for host, _, _ in calls} == set(NODES), calls
    summary = tmp_path / "srun.pkl"
    proc = run(["srun", "-N", "3", "-n", "4", sys.executable, "-m", "acme.mpi_run", MODES,
                "files", tmp_path / "srun", summary], 40, slurm_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ranks = compare_with_local("files", tmp_path, summary)
    assert set(ranks) == {1, 2, 3}


@pytest.mark.timeout(90)
def test_sbatch_on_two_nodes(tmp_path, no_jobs_left):
    summary = tmp_path / "sbatch.pkl"
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\nset -e\n"
                      f"srun {sys.executable} -m acme.mpi_run {WHERE} 12 0.05\n"
                      f"srun {sys.executable} -m acme.mpi_run {MODES} vds "
                      f"{tmp_path / 'sbatch'} {summary}\n")
    proc = run(["sbatch", "--parsable", "-N", "2", "-n", "3", "-J", "acme_multinode",
                "-o", tmp_path / "slurm-%j.out", script], 30, slurm_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    assert wait_until(lambda: job_id not in squeue_ids(), 60, step=0.3), \
        f"job {job_id} still running"
    log = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert "JobState=COMPLETED" in job_record(job_id), log
    record = job_record(job_id)
    assert re.search(r"NodeList=node\[\d-\d\]", record) or \
        re.search(r"NodeList=node\[\d,\d\]", record), record
    hosts = {host for host, _, _ in check_where(log)}
    assert len(hosts) == 2, hosts
    ranks = compare_with_local("vds", tmp_path, summary)
    assert set(ranks) == {1, 2}


@pytest.mark.timeout(60)
def test_login_node_submission_runs_on_every_node(tmp_path, no_jobs_left):
    proc = run([sys.executable, WHERE, "30", "0.05", "slurm", "n_workers=5"], 45,
               slurm_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"SCHEDULER {socket.gethostname()} {LOGIN}" in proc.stdout, proc.stdout
    calls = check_where(proc.stdout)
    assert {host for host, _, _ in calls} == set(NODES), calls
    stats = parse(r"STATS (\{.*\})", proc.stdout)
    assert set(stats["worker_hosts"].values()) == set(NODES), stats


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["files", "single_shape", "memory"])
def test_login_node_submission_matches_local(mode, tmp_path, no_jobs_left):
    out, summary = tmp_path / "remote", tmp_path / "remote.pkl"
    proc = run([sys.executable, MODES_ON_SLURM, mode, out, summary], 45,
               slurm_env(ACME_SLURM_SBATCH_ARGS="--nodes=3"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ranks = compare_with_local(mode, tmp_path, summary)
    if ranks:
        assert set(ranks) == {1, 2, 3}, ranks
    records = [line for line in job_record("").splitlines()
               if f"WorkDir={tmp_path} " in line]
    assert len(records) == 1 and "NodeList=node[1-3]" in records[0], records


@pytest.mark.timeout(100)
def test_a_lost_node_ends_the_run_naming_its_calls(tmp_path, no_jobs_left):
    """node3 disappears mid-run (its link goes down and everything on it dies, as in a
    power cut): the run ends by itself, names the calls without a result and the node,
    and every other result is on disk."""
    out, n = tmp_path / "out", 15
    proc = subprocess.Popen(
        [sys.executable, str(JOBS), "naps", str(out), f"n={n}", "seconds=1.5",
         "n_workers=5"], cwd=tmp_path, env=slurm_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        payload = out / "nap_payload"
        assert wait_until(lambda: payload.is_dir() and any(
            name.endswith(".h5") for name in os.listdir(payload)), 40, step=0.1), \
            "no result appeared"
        lost_at = time.monotonic()
        subprocess.run(["ip", "link", "set", "v77-3", "down"], check=True, timeout=10)
        pids = subprocess.run(["ip", "netns", "pids", "node3"], capture_output=True,
                              text=True, timeout=10).stdout.split()
        for pid in pids:  # slurmd, slurmstepd and the ranks of node3
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        stdout, stderr = proc.communicate(timeout=60)
        ended_after = time.monotonic() - lost_at
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    print(f"the run ended {ended_after:.1f} s after node3 was lost\n{stdout}\n{stderr}")
    assert proc.returncode == 1, stdout + stderr
    error = re.search(r"ERROR SlurmJobError (.*?)(?:\nSTATS|\Z)", stdout, re.S)
    assert error, stdout + stderr
    text = error.group(1)
    assert "lost a node (JobState=NODE_FAIL" in text, text
    missing = sorted(int(i) for i in
                     re.search(r"\(calls ([\d, ]+)\)", text).group(1).split(","))
    assert missing, text
    # rank 0 named what was running where: node3's ranks are among them
    assert re.search(r"rank \d on node3", text), text
    written = sorted(int(re.match(r"nap_(\d+)\.h5$", name).group(1))
                     for name in os.listdir(out / "nap_payload") if name.endswith(".h5"))
    assert set(written) | set(missing) == set(range(n)), (written, missing)
    assert len(written) >= 3
    assert not [name for name in os.listdir(out / "nap_payload") if name.endswith(".tmp")]
    import h5py
    with h5py.File(out / "nap.h5", "r") as h5f:  # the container links what is there
        # every call has its comp_i (esi-acme's layout); those without a result dangle
        linked = sorted(int(name.split("_")[1]) for name in h5f
                        if name.startswith("comp_") and h5f.get(name) is not None)
        assert linked == written
        for i in written:
            np.testing.assert_array_equal(h5f[f"comp_{i}"]["result_0"][()], np.full(4, i))
    assert ended_after < 45
    # bring the cluster back for any test that follows (a half-up cluster is rebuilt)
    assert multinode("up").returncode == 0


# ------------------------------------------------------------------ teardown
@pytest.mark.timeout(90)
def test_down_leaves_nothing_behind_even_after_a_mess(cluster):
    """Kill slurmctld behind the script's back and leave a stray process in a
    namespace: 'down' still removes everything, and running it again is harmless."""
    pid = int((DIR / "run" / "slurmctld.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    stray = subprocess.Popen([str(RSH), "node2", "exec sleep 300"],
                             stdin=subprocess.DEVNULL, start_new_session=True)
    assert wait_until(lambda: str(stray.pid) in subprocess.run(
        ["ip", "netns", "pids", "node2"], capture_output=True, text=True).stdout, 10)
    first = multinode("down")
    assert first.returncode == 0, first.stdout + first.stderr
    stray.wait(timeout=10)
    again = multinode("down")
    assert again.returncode == 0, again.stdout + again.stderr
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not re.search(r"^node[123]\b", netns, re.M), netns
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert "acme77br" not in links and "v77-" not in links, links
    assert not list((DIR / "run").glob("*.pid")), "PID files left"
    assert not (DIR / "munge" / "munged.pid").exists()
    status = multinode("status")
    assert status.returncode == 3 and "not running" in status.stdout
