"""Run a batch of conformance maps under MPI (several maps per mpiexec start):

    mpiexec -n 3 python -m acme.mpi_run mpi_batch.py JOB.pkl OUTCOMES.pkl

JOB.pkl holds a list of ``(description, mode, output_dir)``; each is run with
``backend="auto"`` (MPI under acme.mpi_run) and its outcome (confrun.run_map) saved.
"""
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from confmodel import FUNCTIONS  # noqa: E402,F401 - the workers find the functions here
from confrun import run_map  # noqa: E402


def main(job_path: str, out_path: str) -> None:
    with open(job_path, "rb") as fh:
        job = pickle.load(fh)
    outcomes = []
    for desc, mode, output_dir in job:
        outcome = run_map(desc, mode, "auto", output_dir)
        outcomes.append(outcome)
        with open(out_path + ".tmp", "wb") as fh:  # what ran so far, if MPI dies
            pickle.dump(outcomes, fh)
        os.replace(out_path + ".tmp", out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
