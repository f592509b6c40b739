"""Running scripts under real ``mpiexec`` for the MPI tests."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require

SCRIPTS = Path(__file__).resolve().parent / "mpi_scripts"
REPO = Path(__file__).resolve().parent.parent


def require_mpi() -> None:
    try:
        import mpi4py  # noqa: F401
        has_mpi4py = True
    except ImportError:
        has_mpi4py = False
    require(shutil.which("mpiexec") is not None and has_mpi4py,
            "MPI tests need Open MPI's mpiexec and mpi4py (bash scripts/install_test_deps.sh)")


def require_slurm() -> None:
    """Skip (fail under CI) unless a SLURM cluster takes jobs here and mpi4py exists."""
    from acme.backends.slurm import slurm_usable
    try:
        import mpi4py  # noqa: F401
        has_mpi4py = True
    except ImportError:
        has_mpi4py = False
    require(has_mpi4py and slurm_usable(refresh=True),
            "SLURM tests need a running SLURM cluster (bash scripts/slurm_cluster.sh "
            "start) and mpi4py")


def require_parallel_h5py() -> None:
    import h5py
    require(h5py.get_config().mpi,
            "parallel single-file tests need h5py built against parallel HDF5 "
            "(bash scripts/install_test_deps.sh)")


def mpi_env() -> dict:
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", PYTHONUNBUFFERED="1",
               # when a rank dies, give the others 3 s between SIGTERM and SIGKILL
               # (default 1 s) so rank 0 can record the calls that were lost
               OMPI_MCA_odls_base_sigkill_timeout="3")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(SCRIPTS)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_mpi(script: str, ranks: int, *args: str, timeout: float = 60.0,
            cwd=None) -> subprocess.CompletedProcess:
    """``mpiexec -n ranks python -m acme.mpi_run script args``; the whole process
    group is killed (by the mpiexec PID's group) if it does not end in time."""
    require_mpi()
    path = script if os.path.isabs(script) else str(SCRIPTS / script)
    cmd = ["mpiexec", "-n", str(ranks), sys.executable, "-m", "acme.mpi_run", path, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=mpi_env(), cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_launch(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not end within {timeout} s (killed)\n"
                    f"--- stdout ---\n{out}\n--- stderr ---\n{err}")
    finally:
        if proc.poll() is None:
            _kill_launch(proc.pid)
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_launch(pid: int) -> None:
    """Kill mpiexec ``pid``, its process group and every process below it, by PID:
    Open MPI starts the ranks in process groups of their own, so killing mpiexec's
    group alone can leave ranks (and processes they forked) running."""
    import psutil
    try:
        below = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        below = []
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for child in below:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
