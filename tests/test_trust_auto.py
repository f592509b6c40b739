"""``backend="auto"`` picks only a backend that can run the map, and says which and why
in one INFO line; an explicit ``backend="slurm"`` that cannot work is a clear error
before anything is submitted or written (no job, no ``.acme-slurm-*`` folder, no
output folder).

Real cases on the one-node test cluster (``SLURM_CONF=/tmp/acme-slurm/slurm.conf``):

* mpi4py missing in the job's Python: a plain virtual environment (no system site
  packages, so no mpi4py) built once per test session; the SLURM job would run that
  same interpreter.
* a function typed at a prompt (``python3 -``) with cloudpickle blocked
  (``sys.modules['cloudpickle'] = None``): the job cannot load it.

The suite sets ``ACME_AUTO_SLURM=0`` (tests/conftest.py); these tests set it to 1 in
the child's environment to let "auto" consider SLURM. Every test cancels, by job id,
any job left whose working folder is its own tmp_path.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TESTS_DIR, ScriptResult, require, run_script
from mpi_helpers import require_slurm

REPO = TESTS_DIR.parent


# ------------------------------------------------------------------ helpers
def child_env(**extra) -> dict:
    """The environment of a submitting process on a "login node" where auto may
    choose SLURM."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", ACME_AUTO_SLURM="1")
    for key in ("SLURM_JOB_ID", "SLURM_JOBID"):
        env.pop(key, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_python(python: str, args: list, cwd: Path, timeout: float = 90,
               env: dict | None = None) -> ScriptResult:
    """``python *args`` in its own session; killed (by its process group id) when it
    runs longer than ``timeout``."""
    env = dict(env if env is not None else child_env())
    env.pop("PYTHONPATH", None)  # nothing of the test's interpreter leaks in
    with open(cwd / "out.txt", "w+") as out, open(cwd / "err.txt", "w+") as err:
        proc = subprocess.Popen([python, *map(str, args)], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, cwd=cwd, env=env,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        out.seek(0)
        err.seek(0)
        return ScriptResult([python, *args], proc.returncode, out.read(), err.read(),
                            False)


def jobs_in(folder: Path) -> list:
    """Ids of the jobs squeue lists whose working folder is ``folder`` (or below)."""
    proc = subprocess.run(["squeue", "-h", "-o", "%i|%Z"], capture_output=True,
                          text=True, timeout=30)
    return [line.partition("|")[0].strip() for line in proc.stdout.splitlines()
            if line.partition("|")[2].startswith(str(folder))]


def job_folders(folder: Path) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".acme-slurm*"))


def auto_line(stderr: str) -> str:
    """The one INFO line that says what "auto" chose."""
    lines = [line for line in stderr.splitlines() if "backend auto:" in line]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("ACME - INFO - backend auto: "), lines[0]
    return lines[0]


@pytest.fixture
def slurm(tmp_path):
    """Require SLURM; afterwards cancel every job this test left (by id), wait until
    squeue no longer lists them, and fail the test if there were any."""
    require_slurm()
    yield
    left = jobs_in(tmp_path)
    for job_id in left:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
    deadline = time.monotonic() + 30
    while jobs_in(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"the test left SLURM jobs {left}"


@pytest.fixture(scope="session")
def python_without_mpi4py(tmp_path_factory) -> str:
    """The interpreter of a plain venv (no system site packages) with acme (editable,
    this checkout), numpy and h5py (the serial wheel), and no mpi4py. Built once."""
    folder = tmp_path_factory.mktemp("venv-no-mpi4py")
    python = str(folder / "bin" / "python")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True,
                       capture_output=True, timeout=120)
        pip = subprocess.run([python, "-m", "pip", "install", "-q", "-e", str(REPO)],
                             capture_output=True, text=True, timeout=200)
    except (subprocess.SubprocessError, OSError) as exc:
        require(False, f"could not build a venv without mpi4py: {exc}")
    require(pip.returncode == 0, f"pip install into the venv failed: {pip.stderr[-2000:]}")
    probe = subprocess.run([python, "-c", "import acme, h5py, numpy\n"
                            "try:\n    import mpi4py\nexcept ImportError:\n"
                            "    print('NO MPI4PY')"], capture_output=True, text=True,
                           timeout=60, env={k: v for k, v in os.environ.items()
                                            if k != "PYTHONPATH"})
    assert "NO MPI4PY" in probe.stdout, probe  # what the tests below rely on
    return python


SCRIPT_MAP = """
from acme import ParallelMap

def plus_one(x):
    return x + 1

if __name__ == "__main__":
    import sys
    kind = sys.argv[1] if len(sys.argv) > 1 else "memory"
    backend = sys.argv[2] if len(sys.argv) > 2 else "auto"
    options = dict(write_worker_results=False) if kind == "memory" else \\
        dict(output_dir="out")
    try:
        with ParallelMap(plus_one, [1, 2, 3], n_workers=2, partition="small",
                         backend=backend, **options) as pmap:
            print("RESULT", pmap.compute(), flush=True)
    except Exception as exc:
        print("ERROR", type(exc).__name__, exc, flush=True)
"""


def venv_map(python: str, tmp_path: Path, kind: str, backend: str) -> ScriptResult:
    """Run SCRIPT_MAP with the venv's interpreter."""
    (tmp_path / "map.py").write_text(SCRIPT_MAP)
    return run_python(python, ["map.py", kind, backend], tmp_path)


# ------------------------------------------------ mpi4py missing in the job's Python
@pytest.mark.timeout(360)  # (the first test also builds the venv)
@pytest.mark.parametrize("kind", ["memory", "files"])
def test_auto_runs_locally_when_the_jobs_python_has_no_mpi4py(
        kind, tmp_path, slurm, python_without_mpi4py):
    result = venv_map(python_without_mpi4py, tmp_path, kind, "auto")
    assert result.returncode == 0, str(result)
    line = auto_line(result.stderr)
    assert (f"backend auto: local (SLURM is usable here, but mpi4py is not importable "
            f"in {python_without_mpi4py}") in line, line
    assert "submitted SLURM job" not in result.stderr
    if kind == "memory":
        assert "RESULT [2, 3, 4]" in result.stdout, str(result)
    else:
        import h5py
        assert "RESULT" in result.stdout, str(result)
        with h5py.File(tmp_path / "out" / "plus_one.h5", "r") as fh:
            assert [int(fh[f"comp_{i}/result_0"][()].ravel()[0]) for i in range(3)] \
                == [2, 3, 4]
        assert not (tmp_path / "out" / "plus_one_slurm").exists()
    assert job_folders(tmp_path) == []


@pytest.mark.timeout(360)
@pytest.mark.parametrize("kind", ["memory", "files"])
def test_explicit_slurm_without_mpi4py_fails_before_anything_is_submitted(
        kind, tmp_path, slurm, python_without_mpi4py):
    result = venv_map(python_without_mpi4py, tmp_path, kind, "slurm")
    assert "ERROR RuntimeError backend='slurm' cannot run here: mpi4py is not " \
        f"importable in {python_without_mpi4py}" in result.stdout, str(result)
    assert "submitted SLURM job" not in result.stderr
    assert "dry run" not in result.stderr
    assert job_folders(tmp_path) == [] and not (tmp_path / "out").exists()
    assert sorted(os.listdir(tmp_path)) == ["err.txt", "map.py", "out.txt"]  # nothing else


@pytest.mark.timeout(360)
def test_slurm_cluster_setup_without_mpi4py_fails_before_submitting(
        tmp_path, slurm, python_without_mpi4py):
    code = ("import acme\n"
            "try:\n"
            "    acme.slurm_cluster_setup(partition='small', n_workers=1, timeout=30,\n"
            "                             interactive=False)\n"
            "except RuntimeError as exc:\n"
            "    print('ERROR', exc, flush=True)\n")
    result = run_python(python_without_mpi4py, ["-c", code], tmp_path)
    assert f"mpi4py is not importable in {python_without_mpi4py}" in result.stdout, \
        str(result)
    assert "submitted SLURM job" not in result.stderr
    assert job_folders(tmp_path) == []


# ---------------------------- a function typed at a prompt, without cloudpickle
PROMPT_MAP = """
import functools, sys
sys.modules['cloudpickle'] = None
from acme import ParallelMap
def typed_here(x, factor=2):
    return factor * x
try:
    with ParallelMap({func}, [1, 2, 3], n_workers=2, backend={backend!r},
                     partition='small', {where}) as pmap:
        print('RESULT', pmap.compute(), flush=True)
except Exception as exc:
    print('ERROR', type(exc).__name__, exc, flush=True)
"""
IN_MEMORY, ON_DISK = "write_worker_results=False", "output_dir='out'"
#: the function, and a partial of it (pickled by reference, it names __main__ too)
PROMPT_FUNCS = ["typed_here", "functools.partial(typed_here, factor=2)"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("func", PROMPT_FUNCS)
@pytest.mark.parametrize("where", [IN_MEMORY, ON_DISK])
def test_auto_runs_a_prompt_function_locally_without_cloudpickle(where, func, tmp_path,
                                                                 slurm):
    result = run_script(PROMPT_MAP.format(func=func, backend="auto", where=where),
                        timeout=90, stdin=True, env=child_env())
    assert result.returncode == 0, str(result)
    line = auto_line(result.stderr)
    assert re.search(r"backend auto: local \(SLURM is usable here, but the function "
                     r"'typed_here'( \(in a partial\))? was defined in an "
                     r"interactive session and "
                     r"cloudpickle is not importable", line), line
    assert "submitted SLURM job" not in result.stderr
    if where == IN_MEMORY:
        assert "RESULT [2, 4, 6]" in result.stdout, str(result)
    else:
        assert "RESULT" in result.stdout and not (tmp_path / "out" / "typed_here_slurm"
                                                  ).exists(), str(result)
    assert job_folders(tmp_path) == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("func", PROMPT_FUNCS)
@pytest.mark.parametrize("where", [IN_MEMORY, ON_DISK])
def test_explicit_slurm_with_a_prompt_function_without_cloudpickle_leaves_nothing(
        where, func, tmp_path, slurm):
    result = run_script(PROMPT_MAP.format(func=func, backend="slurm", where=where),
                        timeout=90, stdin=True, env=child_env())
    assert re.search(r"ERROR TypeError backend='slurm' cannot run this map: the "
                     r"function 'typed_here'( \(in a partial\))? was defined in an "
                     r"interactive session",
                     result.stdout), str(result)
    assert "cloudpickle" in result.stdout
    assert "submitted SLURM job" not in result.stderr and "dry run" not in result.stderr
    assert job_folders(tmp_path) == [] and not (tmp_path / "out").exists()


# ------------------------------------------------------------ auto that can: SLURM
@pytest.mark.timeout(120)
def test_auto_says_it_submits_to_slurm_where_the_job_can_run(tmp_path, slurm):
    script = tmp_path / "map.py"
    script.write_text(SCRIPT_MAP)
    result = run_script(script, timeout=90, env=child_env())
    assert result.returncode == 0, str(result)
    line = auto_line(result.stderr)
    assert "backend auto: slurm (SLURM is usable here" in line, line
    assert re.search(r"submitted SLURM job \d+", result.stderr), result.stderr
    assert "RESULT [2, 3, 4]" in result.stdout
    assert job_folders(tmp_path) == []


@pytest.mark.timeout(120)
def test_a_partial_of_a_script_function_without_cloudpickle_runs_on_slurm(tmp_path, slurm):
    """Pickled by reference, a partial names ``__main__.scaled``: the job's ranks have
    to load the script, though the partial's own module is functools."""
    script = tmp_path / "partial_map.py"
    script.write_text(
        "import functools, sys\n"
        "sys.modules['cloudpickle'] = None\n"
        "from acme import ParallelMap\n"
        "def scaled(x, factor):\n"
        "    return x * factor\n"
        "if __name__ == '__main__':\n"
        "    with ParallelMap(functools.partial(scaled, factor=3), [1, 2],\n"
        "                     write_worker_results=False, backend='slurm',\n"
        "                     partition='small', n_workers=1) as pmap:\n"
        "        print('RESULT', pmap.compute(), flush=True)\n")
    result = run_script(script, timeout=90, env=child_env())
    assert result.returncode == 0, str(result)
    assert "RESULT [3, 6]" in result.stdout, str(result)
    assert job_folders(tmp_path) == []


@pytest.mark.timeout(60)
def test_a_refused_submission_of_an_in_memory_run_leaves_no_job_folder(tmp_path, slurm):
    # the partition allows 10 minutes: sbatch refuses a 120-minute job
    code = ("from acme import ParallelMap\n"
            "from acme.backends.slurm import SlurmSubmitError\n"
            "try:\n"
            "    with ParallelMap(abs, [-1, -2], write_worker_results=False,\n"
            "                     backend='slurm', partition='small') as pmap:\n"
            "        pmap.compute()\n"
            "except SlurmSubmitError as exc:\n"
            "    print('REFUSED', exc, flush=True)\n")
    result = run_script(code, timeout=45, env=child_env(ACME_SLURM_TIME_LIMIT="120"))
    assert "REFUSED sbatch refused the job" in result.stdout, str(result)
    assert "--time=120" in result.stdout  # what was asked for is in the message
    assert job_folders(tmp_path) == [], job_folders(tmp_path)


# --------------------------------------------------------------- running pools
@pytest.mark.timeout(60)
def test_auto_names_the_running_local_pool_it_uses(tmp_path):
    code = ("import acme\n"
            "from acme import ParallelMap\n"
            "pool = acme.local_cluster_setup(n_workers=2, interactive=False)\n"
            "with ParallelMap(abs, [-1, -2], write_worker_results=False,\n"
            "                 backend='local') as pmap:\n"
            "    print('EXPLICIT', pmap.compute(), flush=True)\n"
            "with ParallelMap(abs, [-3, -4], write_worker_results=False) as pmap:\n"
            "    print('RESULT', pmap.compute(), flush=True)\n"
            "acme.cluster_cleanup()\n")
    result = run_script(code, timeout=45, env=child_env(ACME_AUTO_SLURM="0"))
    assert result.returncode == 0, str(result)
    assert "RESULT [3, 4]" in result.stdout
    line = auto_line(result.stderr)  # one line, for the "auto" map only
    assert re.search(r"backend auto: local \(the running local worker pool "
                     r"\(2 workers", line), line


@pytest.mark.timeout(150)
def test_auto_names_the_running_slurm_pool_and_refuses_what_it_cannot_load(
        tmp_path, slurm):
    code = ("import os, sys\n"
            "sys.modules['cloudpickle'] = None\n"
            "import acme\n"
            "from acme import ParallelMap\n"
            "pool = acme.slurm_cluster_setup(partition='small', n_workers=1,\n"
            "                                timeout=60, interactive=False)\n"
            "print('POOL', pool.job_id, flush=True)\n"
            "with ParallelMap(abs, [-1, -2], write_worker_results=False) as pmap:\n"
            "    print('RESULT', pmap.compute(), flush=True)\n"
            "def typed_here(x):\n"
            "    return x\n"
            "try:\n"
            "    with ParallelMap(typed_here, [1, 2], output_dir='out') as pmap:\n"
            "        pmap.compute()\n"
            "except TypeError as exc:\n"
            "    print('ERROR', exc, flush=True)\n"
            "print('SENT', pool.maps_sent, os.path.exists('out'), flush=True)\n"
            "acme.cluster_cleanup()\n")
    result = run_script(code, timeout=120, stdin=True, env=child_env())
    assert result.returncode == 0, str(result)
    job_id = re.search(r"POOL (\d+)", result.stdout).group(1)
    assert "RESULT [1, 2]" in result.stdout, str(result)
    lines = [line for line in result.stderr.splitlines() if "backend auto:" in line]
    assert len(lines) == 2, result.stderr
    assert f"backend auto: slurm (the running SLURM worker pool (job {job_id}" \
        in lines[0], lines[0]
    assert f"the SLURM worker pool (job {job_id}) cannot run this map: the function " \
        "'typed_here' was defined in an interactive session" in result.stdout, \
        str(result)
    assert "SENT 1 False" in result.stdout  # nothing sent, no output folder
