"""Run one map of the fault suite in its own process (so the test can kill it):

    python fault_run.py JOB.pkl OUTCOME.pkl

JOB.pkl holds ``{"desc", "mode", "output_dir", "backend", "options"}``; the outcome of
``confrun.run_map`` is written to OUTCOME.pkl. Under ``python -m acme.mpi_run`` the
backend "auto" is MPI.
"""
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from confmodel import FUNCTIONS  # noqa: E402,F401 - MPI workers find the functions here
from confrun import run_map  # noqa: E402


def main(job_path: str, out_path: str) -> None:
    with open(job_path, "rb") as fh:
        job = pickle.load(fh)
    print(f"PID {os.getpid()}", flush=True)
    outcome = run_map(job["desc"], job["mode"], job["backend"], job["output_dir"],
                      **job.get("options", {}))
    with open(out_path + ".tmp", "wb") as fh:
        pickle.dump(outcome, fh)
    os.replace(out_path + ".tmp", out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
