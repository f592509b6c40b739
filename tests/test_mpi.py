"""The MPI backend under real ``mpiexec`` (Open MPI), each run in a subprocess with a
time limit: results identical to the local backend in every mode, calls on ranks
1..N-1, parallel single-file HDF5, and runs that fail without hanging."""
from __future__ import annotations

import os
import pickle
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "mpi_scripts"))

import modes  # noqa: E402
from modes import assert_same, split_ranks  # noqa: E402
from mpi_helpers import require_mpi, require_parallel_h5py, run_mpi  # noqa: E402

pytestmark = pytest.mark.timeout(120)



@pytest.mark.parametrize("mode", sorted(modes.MODES))
def test_every_mode_matches_local_backend(mode, tmp_path):
    if mode == "single_shape":
        require_parallel_h5py()
    proc = run_mpi("modes.py", 3, mode, str(tmp_path / "mpi"), str(tmp_path / "mpi.pkl"))
    assert proc.returncode == 0, proc.stderr
    modes.main(mode, str(tmp_path / "local"), str(tmp_path / "local.pkl"), "local")
    with open(tmp_path / "mpi.pkl", "rb") as fh:
        mpi_data, mpi_ranks = split_ranks(mode, pickle.load(fh))
    with open(tmp_path / "local.pkl", "rb") as fh:
        local_data, _ = split_ranks(mode, pickle.load(fh))
    assert_same(mpi_data, local_data)
    if mpi_ranks:
        assert set(mpi_ranks) <= {1, 2}, mpi_ranks
    if mode == "single_shape":  # one real dataset, written collectively
        assert mpi_data["virtual"] is False
        assert "h5py was built without MPI" not in proc.stderr
    if mode == "vds":
        assert mpi_data["virtual"] is True


@pytest.mark.parametrize("ranks", [2, 4])
def test_calls_run_on_worker_ranks_only(ranks):
    proc = run_mpi("behaviours.py", ranks, "ranks", "unused")
    assert proc.returncode == 0, proc.stderr
    seen = eval(re.search(r"RANKS (\[.*\])", proc.stdout).group(1))
    assert set(seen) == set(range(1, ranks))


def test_one_rank_runs_everything_on_rank_0_with_a_warning():
    proc = run_mpi("behaviours.py", 1, "ranks", "unused")
    assert proc.returncode == 0, proc.stderr
    assert "RANKS [0]" in proc.stdout
    assert "no worker ranks" in proc.stderr


def test_a_failing_call_comes_home_with_type_rank_and_host(tmp_path):
    proc = run_mpi("behaviours.py", 3, "failing_call", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "ERROR ParallelMapError [3] ValueError" in proc.stdout
    cause = re.search(r"CAUSE (.*)", proc.stdout).group(1)
    assert re.search(r"Call 3 failed on MPI rank [12], host \S+, pid \d+", cause), cause
    assert "bad value x=3" in cause and "fail_at_3" in cause
    assert "RESULTS [False, False, False, True, False, False, False, False]" in proc.stdout
    payloads = sorted(os.listdir(tmp_path / "out" / "fail_at_3_payload"))
    assert payloads == sorted(f"fail_at_3_{i}.h5" for i in range(8) if i != 3)


def test_a_dying_worker_ends_the_run_naming_lost_calls(tmp_path):
    out = tmp_path / "out"
    proc = run_mpi("behaviours.py", 3, "dying_worker", str(out), timeout=60)
    assert proc.returncode != 0
    # Rank 0 names the lost calls in its log file; stderr may lose the line when
    # mpiexec stops forwarding output while it ends the job.
    logs = [p for p in out.iterdir() if p.name.startswith("ACME_die_at_3_")]
    logged = proc.stderr + "".join(p.read_text() for p in logs)
    lost = re.search(r"calls (\[[\d, ]*\]) were running on worker ranks", logged)
    assert lost, logged
    assert 3 in eval(lost.group(1))
    done = os.listdir(out / "die_at_3_payload")
    assert "die_at_3_3.h5" not in done
    assert len(done) >= 1  # what finished before the crash stays on disk
    assert not [n for n in done if n.endswith(".tmp")]


def test_a_failing_script_ends_every_rank_quickly():
    proc = run_mpi("behaviours.py", 3, "failing_script", "unused", timeout=30)
    assert proc.returncode != 0
    assert "KeyError: 'the script itself fails'" in proc.stderr
    assert "ending all 3 ranks" in proc.stderr


def test_two_maps_in_one_script():
    proc = run_mpi("behaviours.py", 3, "two_maps", "unused")
    assert proc.returncode == 0, proc.stderr
    assert "TWO 6 [0, 1, 2]" in proc.stdout


def test_large_constant_is_sent_once_per_worker():
    proc = run_mpi("behaviours.py", 3, "big_constant", "unused")
    assert proc.returncode == 0, proc.stderr
    ok, sent = re.search(r"BIG (\w+) (\d+)", proc.stdout).groups()
    assert ok == "True"
    constant = 2_500_000 * 8
    # two workers: the constant goes out twice, not 40 times
    assert 2 * constant <= int(sent) < 2 * constant + 1_000_000, sent


def test_timeout_stops_a_call_on_a_worker_rank():
    proc = run_mpi("behaviours.py", 3, "timeout", "unused", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "TIMEOUT [1] CallTimeout [0, None, 2, 3]" in proc.stdout


def test_script_without_main_guard_is_not_rerun_on_workers(tmp_path):
    script = tmp_path / "noguard.py"
    script.write_text(
        "from acme import ParallelMap\n"
        "def f(x):\n    return x + 1\n"
        "print('BODY RAN')\n"
        "with ParallelMap(f, list(range(6)), write_worker_results=False) as p:\n"
        "    print('RESULT', p.compute())\n")
    proc = run_mpi(str(script), 3)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("BODY RAN") == 1  # rank 0 only
    assert "RESULT [1, 2, 3, 4, 5, 6]" in proc.stdout
    assert "no `if __name__" in proc.stderr


def test_importing_acme_does_not_import_mpi4py():
    import subprocess
    code = "import sys, acme; print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "False"


def test_auto_backend_is_local_outside_mpi_run():
    require_mpi()
    from acme.backends import auto_backend_name
    assert auto_backend_name() == "local"
