"""SLURM, for real, on the one-node test cluster (``bash scripts/slurm_cluster.sh start``):
``srun``/``sbatch`` runs of ``acme.mpi_run``, and submission from a plain ``python3``
process (the "login node") with the ``slurm`` backend: results equal to a local run,
partition choice, a cancelled job, a job past its time limit, Ctrl-C, a job that
cannot start, and functions typed at a prompt.

Every test that may start a job cancels, in its teardown, each job still listed by
``squeue`` whose working folder is the test's own folder (by job id).
"""
from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TESTS_DIR, run_script
from mpi_helpers import require_slurm

sys.path.insert(0, str(TESTS_DIR / "mpi_scripts"))

import modes  # noqa: E402
from modes import assert_same, split_ranks  # noqa: E402

REPO = TESTS_DIR.parent
JOBS = TESTS_DIR / "slurm_scripts" / "jobs.py"
MODES = TESTS_DIR / "mpi_scripts" / "modes.py"
MODES_ON_SLURM = TESTS_DIR / "slurm_scripts" / "modes_on_slurm.py"


# ------------------------------------------------------------------ helpers
def slurm_env(**extra) -> dict:
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(TESTS_DIR), str(TESTS_DIR / "mpi_scripts")] +
        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    for key in ("SLURM_JOB_ID", "SLURM_JOBID"):  # submit as from a login node
        env.pop(key, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def squeue_ids(folder: Path) -> list:
    """Ids of the jobs squeue lists whose working folder is ``folder`` (or below)."""
    proc = subprocess.run(["squeue", "-h", "-o", "%i|%Z"], capture_output=True, text=True)
    ids = []
    for line in proc.stdout.splitlines():
        job_id, _, workdir = line.partition("|")
        if workdir.startswith(str(folder)):
            ids.append(job_id.strip())
    return ids


def job_listed(job_id: str) -> bool:
    proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"],
                          capture_output=True, text=True)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                         text=True).stdout
    match = re.search(r"JobState=(\S+)", out)
    return match.group(1) if match else "UNKNOWN"


def wait_until(condition, seconds: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


@pytest.fixture
def slurm(tmp_path):
    """Require SLURM; afterwards cancel every job this test left (by job id), and show
    the SLURM logs of such jobs (a job still running means the test failed)."""
    require_slurm()
    yield
    left = squeue_ids(tmp_path)
    for job_id in left:
        subprocess.run(["scancel", job_id], capture_output=True)
    if left:
        wait_until(lambda: not any(job_listed(j) for j in left), 30)
        for job_id in left:
            for log in tmp_path.rglob(f"slurm-{job_id}.out"):
                print(f"--- {log} (job {job_id} was still running) ---\n{log.read_text()}")


class Background:
    """A ``python3`` subprocess in its own session, output to files, job id from its log."""

    def __init__(self, args: list, cwd: Path, env: dict):
        self.out_path, self.err_path = cwd / "stdout.txt", cwd / "stderr.txt"
        self.proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=cwd, env=env,
                                     stdout=open(self.out_path, "w"),
                                     stderr=open(self.err_path, "w"),
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def job_id(self, seconds: float = 30) -> str:
        found = []
        wait_until(lambda: found.append(re.search(r"submitted SLURM job (\d+)",
                                                  self.stderr)) or found[-1], seconds)
        assert found and found[-1], f"no job submitted:\n{self.stderr}"
        return found[-1].group(1)

    def wait(self, seconds: float) -> int:
        try:
            return self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f"the submitting process did not end within {seconds} s\n"
                        f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def background(tmp_path):
    started = []

    def start(*args, **env):
        bg = Background(list(args), tmp_path, slurm_env(**env))
        started.append(bg)
        return bg

    yield start
    for bg in started:
        bg.kill()



def compare_with_local(mode, tmp_path, summary):
    modes.main(mode, str(tmp_path / "local"), str(tmp_path / "local.pkl"), "local")
    with open(summary, "rb") as fh:
        remote, ranks = split_ranks(mode, pickle.load(fh))
    with open(tmp_path / "local.pkl", "rb") as fh:
        local, _ = split_ranks(mode, pickle.load(fh))
    assert_same(remote, local)
    return ranks


def run_under_slurm(cmd: list, cwd: Path, seconds: float) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, cwd=cwd, env=slurm_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{cmd} did not end within {seconds} s\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


# ----------------------------------------------- srun / sbatch of acme.mpi_run
@pytest.mark.timeout(90)
def test_srun_of_mpi_run_matches_local(tmp_path, slurm):
    summary = tmp_path / "srun.pkl"
    proc = run_under_slurm(["srun", "-n", "4", sys.executable, "-m", "acme.mpi_run",
                            str(MODES), "files", str(tmp_path / "srun"), str(summary)],
                           tmp_path, 60)
    assert proc.returncode == 0, proc.stderr
    ranks = compare_with_local("files", tmp_path, summary)
    assert set(ranks) <= {1, 2, 3} and len(ranks) == modes.N
    assert sorted(os.listdir(tmp_path / "srun" / "work_payload")) == \
        sorted(os.listdir(tmp_path / "local" / "work_payload"))


@pytest.mark.timeout(90)
def test_sbatch_of_mpi_run_matches_local(tmp_path, slurm):
    summary = tmp_path / "sbatch.pkl"
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n"
                      f"srun {sys.executable} -m acme.mpi_run {MODES} vds "
                      f"{tmp_path / 'sbatch'} {summary}\n")
    proc = run_under_slurm(["sbatch", "--parsable", "-n", "3", "-J", "acme_test_sbatch",
                            "-o", str(tmp_path / "slurm-%j.out"), str(script)], tmp_path, 30)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    assert wait_until(lambda: not job_listed(job_id), 60, step=0.5), \
        f"job {job_id} still running"
    log = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert job_state(job_id) == "COMPLETED", log
    ranks = compare_with_local("vds", tmp_path, summary)
    assert set(ranks) <= {1, 2}


# --------------------------------------- submission from a plain python process
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", sorted(modes.MODES))
def test_submission_matches_local(mode, tmp_path, slurm):
    out, summary = tmp_path / "remote", tmp_path / "remote.pkl"
    result = run_script(MODES_ON_SLURM, timeout=45, args=[mode, str(out), str(summary)],
                        env=slurm_env())
    assert result.returncode == 0, str(result)
    ranks = compare_with_local(mode, tmp_path, summary)
    if ranks:
        assert all(r >= 1 for r in ranks), ranks  # calls ran on worker ranks
    if mode.startswith("memory"):  # the temporary job folder is gone
        assert not [n for n in os.listdir(tmp_path) if n.startswith(".acme-slurm")]
    else:  # the job script and SLURM's log stay with the results
        kept = os.listdir(out / "work_slurm")
        assert "job.sh" in kept and any(re.match(r"slurm-\d+\.out$", n) for n in kept), kept
        assert "context.pkl" not in kept
    assert not squeue_ids(tmp_path)


@pytest.mark.timeout(60)
def test_failing_calls_come_back_from_the_job(tmp_path, slurm):
    result = run_script(JOBS, timeout=45, args=["failing", str(tmp_path / "out")],
                        env=slurm_env())
    assert result.returncode == 1, str(result)
    assert "ERROR ParallelMapError" in result.stdout, str(result)
    assert "PARTIAL [0, 10, 20, None, 40, None, 60, 70]" in result.stdout
    assert re.search(r"Call 3 failed on MPI rank \d, host", result.stderr + result.stdout) \
        or "bad input 3" in result.stdout


@pytest.mark.timeout(60)
def test_function_typed_at_a_prompt_runs_via_cloudpickle(tmp_path, slurm):
    pytest.importorskip("cloudpickle")
    code = (
        "from acme import ParallelMap\n"
        "offset = 100\n"
        "def shifted(x):\n"
        "    return x * x + offset\n"
        "with ParallelMap(shifted, [1, 2, 3], write_worker_results=False,\n"
        "                 backend='slurm', partition='small', n_workers=2) as p:\n"
        "    print('RESULT', p.compute())\n"
        "with ParallelMap(lambda x: -x, [4, 5], write_worker_results=False,\n"
        "                 backend='slurm', partition='small', n_workers=1) as p:\n"
        "    print('LAMBDA', p.compute())\n")
    result = run_script(code, timeout=45, stdin=True, env=slurm_env())
    assert result.returncode == 0, str(result)
    assert "RESULT [101, 104, 109]" in result.stdout
    assert "LAMBDA [-4, -5]" in result.stdout


@pytest.mark.timeout(30)
def test_prompt_function_without_cloudpickle_is_a_clear_error(tmp_path, slurm):
    code = (
        "import sys\n"
        "sys.modules['cloudpickle'] = None\n"
        "from acme import ParallelMap\n"
        "def typed_here(x):\n"
        "    return x\n"
        "try:\n"
        "    with ParallelMap(typed_here, [1, 2], write_worker_results=False,\n"
        "                     backend='slurm', partition='small') as p:\n"
        "        p.compute()\n"
        "except TypeError as exc:\n"
        "    print('TYPEERROR', exc)\n")
    result = run_script(code, timeout=25, stdin=True, env=slurm_env())
    assert "TYPEERROR" in result.stdout, str(result)
    assert "typed_here" in result.stdout and "cloudpickle" in result.stdout
    assert "submitted SLURM job" not in result.stderr


# ---------------------------------------------------------- choosing partitions
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mb, expected", [(20, "small"), (1500, "large")])
def test_partition_auto_fits_the_measured_memory(mb, expected, tmp_path, slurm):
    result = run_script(JOBS, timeout=90, args=["memory", str(tmp_path / "out"),
                                                f"mb={mb}", "n=2"], env=slurm_env())
    assert result.returncode == 0, str(result)
    assert f"SLURM partition {expected!r} chosen" in result.stderr, result.stderr
    assert re.search(r"dry run of call \d: .* MB used by the call", result.stderr)
    assert "RESULT [1.0, 2.0]" in result.stdout, str(result)
    stats = eval(re.search(r"STATS (\{.*\})", result.stdout).group(1))
    assert stats["partition"] == expected
    # mem_per_worker="auto": the partition's default, or what the call needs
    assert stats["mem_per_cpu_mb"] >= (500 if expected == "small" else mb)


def test_choose_partition_least_waste_and_time_limit():
    from acme.backends.slurm import PartitionInfo, choose_partition
    parts = {"small": PartitionInfo("small", default=True, total_cpus=8, cpus_per_node=8,
                                    nodes=1, node_mem_mb=16000, max_time_min=10,
                                    def_mem_per_cpu=500, max_mem_per_cpu=1000),
             "large": PartitionInfo("large", total_cpus=8, cpus_per_node=8, nodes=1,
                                    node_mem_mb=16000, max_time_min=60,
                                    def_mem_per_cpu=2000, max_mem_per_cpu=4000)}
    assert choose_partition(parts, 300)[0].name == "small"
    assert choose_partition(parts, 1001)[0].name == "large"
    assert choose_partition(parts, 300, time_limit_min=30)[0].name == "large"
    best, reason = choose_partition(parts, 9000)
    assert best.name == "large" and "no partition allows" in reason
    with pytest.raises(RuntimeError, match="time limit"):
        choose_partition(parts, 300, time_limit_min=120)


def test_slurm_time_strings():
    from acme.backends.slurm import _parse_minutes
    assert _parse_minutes("10") == 10
    assert _parse_minutes("10:00") == 10
    assert _parse_minutes("1:00:00") == 60
    assert _parse_minutes("00:10:00") == 10
    assert _parse_minutes("2-12") == 2 * 1440 + 720
    assert _parse_minutes("1-00:30:00") == 1470
    assert _parse_minutes("UNLIMITED") is None and _parse_minutes("infinite") is None


def test_outcome_records_are_read_whole_only(tmp_path):
    from acme.slurm_job import RecordReader, RecordWriter
    path = str(tmp_path / "outcomes.bin")
    writer = RecordWriter(path)
    writer.write("start", {"ranks": 3})
    reader = RecordReader(path)
    assert list(reader.read_new()) == [("start", {"ranks": 3})]
    with open(path, "ab") as fh:  # half a record: not read yet
        fh.write(b"\x20\x00\x00\x00\x00\x00\x00\x00" + b"x" * 5)
    assert list(reader.read_new()) == []
    writer.close()


# ------------------------------------------------------------- auto detection
@pytest.mark.timeout(30)
def test_auto_chooses_slurm_only_from_a_login_node(slurm):
    code = "from acme.backends import auto_backend_name; print('AUTO', auto_backend_name())"
    default = slurm_env()
    default.pop("ACME_AUTO_SLURM", None)  # (conftest sets it to 0 for the other tests)
    proc = subprocess.run([sys.executable, "-c", code], env=default, capture_output=True,
                          text=True, timeout=20)
    assert "AUTO slurm" in proc.stdout, proc.stderr
    assert "AUTO slurm" in run_script(code, env=slurm_env(ACME_AUTO_SLURM="1")).stdout
    inside = run_script(code, env=slurm_env(ACME_AUTO_SLURM="1", SLURM_JOB_ID="77"))
    assert "AUTO local" in inside.stdout
    assert "AUTO local" in run_script(code, env=slurm_env(ACME_AUTO_SLURM="0")).stdout
    mpi = run_script(code, env=slurm_env(ACME_AUTO_SLURM="1", OMPI_COMM_WORLD_SIZE="2"))
    assert "AUTO local" in mpi.stdout


# ----------------------------------------------------------------------- faults
@pytest.mark.timeout(90)
def test_cancelled_job_names_id_state_and_log(tmp_path, slurm, background):
    out = tmp_path / "out"
    bg = background(JOBS, "naps", out, "n=8", "seconds=1.5", "n_workers=2",
                    "partition=small")
    job_id = bg.job_id()
    payload = out / "nap_payload"
    assert wait_until(lambda: payload.is_dir() and any(
        n.endswith(".h5") for n in os.listdir(payload)), 30), bg.stderr
    subprocess.run(["scancel", job_id], check=True)
    assert bg.wait(45) == 1
    message = re.search(r"ERROR (\w+) (.*)", bg.stdout)
    assert message and message.group(1) == "SlurmJobError", bg.stdout + bg.stderr
    text = message.group(2)
    assert f"SLURM job {job_id}" in text and "JobState=CANCELLED" in text, text
    assert str(out / "nap_slurm" / f"slurm-{job_id}.out") in text, text
    written = [n for n in os.listdir(payload) if n.endswith(".h5")]
    assert 1 <= len(written) < 8  # what was written stays
    assert (out / "nap.h5").is_file()  # and the container names it
    assert not job_listed(job_id)


@pytest.mark.timeout(180)
def test_job_past_its_time_limit(tmp_path, slurm, background):
    out = tmp_path / "out"
    bg = background(JOBS, "naps", out, "n=4", "seconds=0.1", "slow=1",
                    "slow_seconds=300", "n_workers=2", "partition=small",
                    ACME_SLURM_TIME_LIMIT="1")
    job_id = bg.job_id()
    assert bg.wait(150) == 1
    message = re.search(r"ERROR (\w+) (.*)", bg.stdout)
    assert message and message.group(1) == "SlurmJobError", bg.stdout + bg.stderr
    text = message.group(2)
    assert f"SLURM job {job_id} hit its time limit (JobState=TIMEOUT" in text, text
    assert f"slurm-{job_id}.out" in text, text
    missing = [int(i) for i in re.search(r"\(calls ([\d, ]+)\)", text).group(1).split(",")]
    assert 1 in missing, text  # (a call queued behind it on the same rank may be too)
    written = sorted(os.listdir(out / "nap_payload"))
    assert written == [f"nap_{i}.h5" for i in range(4) if i not in missing], written
    assert "nap_0.h5" in written
    assert "--time=1" in (out / "nap_slurm" / "job.sh").read_text()


@pytest.mark.timeout(90)
def test_ctrl_c_cancels_the_job(tmp_path, slurm, background):
    bg = background(JOBS, "naps", tmp_path / "out", "n=8", "seconds=3", "n_workers=2",
                    "partition=small")
    job_id = bg.job_id()
    assert wait_until(lambda: "is RUNNING" in bg.stderr, 30), bg.stderr
    os.killpg(bg.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    code = bg.wait(45)
    assert code != 0
    assert "KeyboardInterrupt" in bg.stderr, bg.stderr
    assert f"cancelling SLURM job {job_id}" in bg.stderr
    assert not job_listed(job_id), "the job is still in squeue"
    assert not squeue_ids(tmp_path)
    assert job_state(job_id) == "CANCELLED"


@pytest.mark.timeout(60)
def test_job_that_cannot_start_is_cancelled_after_setup_timeout(tmp_path, slurm):
    result = run_script(JOBS, timeout=45,
                        args=["naps", str(tmp_path / "out"), "n=2", "partition=small",
                              "setup_timeout=2"],
                        env=slurm_env(ACME_SLURM_SBATCH_ARGS="--begin=now+3600"))
    assert result.returncode == 1, str(result)
    job_id = re.search(r"submitted SLURM job (\d+)", result.stderr).group(1)
    text = re.search(r"ERROR (\w+) (.*)", result.stdout)
    assert text and text.group(1) == "SlurmSetupTimeout", str(result)
    assert f"SLURM job {job_id} is still PENDING" in text.group(2)
    assert "setup_timeout=2" in text.group(2) and "slurm-" in text.group(2)
    assert not job_listed(job_id)


@pytest.mark.timeout(60)
def test_job_that_fails_on_the_cluster_names_id_state_and_log(tmp_path, slurm):
    """The job starts but cannot load the function (its module is gone)."""
    code = (
        "import os, shutil, sys\n"
        "os.mkdir('gone')\n"
        "with open('gone/vanishing.py', 'w') as fh:\n"
        "    fh.write('def f(x):\\n    return x\\n')\n"
        "sys.path.insert(0, os.path.abspath('gone'))\n"
        "from vanishing import f\n"
        "from acme import ParallelMap\n"
        "pmap = ParallelMap(f, [1, 2], write_worker_results=False, backend='slurm',\n"
        "                   partition='small', n_workers=1)\n"
        "shutil.rmtree('gone')\n"
        "try:\n"
        "    pmap.compute()\n"
        "except Exception as exc:\n"
        "    print('ERROR', type(exc).__name__, exc)\n")
    result = run_script(code, timeout=45, env=slurm_env())
    job_id = re.search(r"submitted SLURM job (\d+)", result.stderr).group(1)
    assert f"ERROR SlurmJobError SLURM job {job_id} failed (JobState=FAILED" in result.stdout, \
        str(result)
    assert "ModuleNotFoundError" in result.stdout and "vanishing" in result.stdout
    log = re.search(r"SLURM output log: (\S+)", result.stdout).group(1)
    assert os.path.isfile(log) and f"slurm-{job_id}.out" in log  # the job folder is kept
    assert not job_listed(job_id)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("answer", ["l", "g"])
def test_late_job_on_a_terminal_asks_what_to_do(answer, tmp_path, slurm):
    """setup_interactive on a terminal: "l" runs the calls here, "g" gives up."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, str(JOBS), "naps", str(tmp_path / "out"), "n=3", "seconds=0",
         "partition=small", "setup_timeout=2", "interactive=1"],
        stdin=slave, stdout=slave, stderr=slave, cwd=tmp_path, start_new_session=True,
        env=slurm_env(ACME_SLURM_SBATCH_ARGS="--begin=now+3600"))
    os.close(slave)
    seen = b""

    def read_until(pattern: bytes, seconds: float) -> bool:
        nonlocal seen
        import select
        deadline = time.monotonic() + seconds
        while pattern not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(master, 4096)
                except OSError:  # the process ended
                    break
        return pattern in seen

    try:
        assert read_until(b"give up [g]?", 30), seen.decode(errors="replace")
        job_id = re.search(rb"submitted SLURM job (\d+)", seen).group(1).decode()
        assert f"SLURM job {job_id} is still PENDING".encode() in seen
        os.write(master, answer.encode() + b"\n")
        read_until(b"STATS", 30)
        assert proc.wait(timeout=30) == (0 if answer == "l" else 1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
    text = seen.decode(errors="replace")
    assert not job_listed(job_id)
    if answer == "l":  # every call ran on this machine, results as usual
        assert "RESULT [" in text and "'ran_locally': True" in text, text
        assert sorted(os.listdir(tmp_path / "out" / "nap_payload")) == \
            [f"nap_{i}.h5" for i in range(3)]
    else:
        assert "ERROR SlurmSetupTimeout" in text, text


@pytest.mark.timeout(30)
def test_a_refused_submission_says_why(tmp_path, slurm):
    result = run_script(JOBS, timeout=25,
                        args=["naps", str(tmp_path / "out"), "n=2", "partition=small"],
                        env=slurm_env(ACME_SLURM_TIME_LIMIT="120"))
    assert result.returncode == 1, str(result)
    assert "ERROR SlurmSubmitError sbatch refused the job" in result.stdout, str(result)
    assert "job.sh" in result.stdout
    assert not squeue_ids(tmp_path)


@pytest.mark.timeout(60)
def test_stop_client_true_cancels_the_finished_job(tmp_path, slurm):
    result = run_script(JOBS, timeout=45,
                        args=["naps", str(tmp_path / "out"), "n=3", "partition=small",
                              "stop_client=True", "seconds=0"], env=slurm_env())
    assert result.returncode == 0, str(result)
    assert "cancelled after its last result (stop_client=True)" in result.stderr
    assert sorted(os.listdir(tmp_path / "out" / "nap_payload")) == \
        [f"nap_{i}.h5" for i in range(3)]
