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


def _save(outcome, path: str) -> None:
    with open(path + ".tmp", "wb") as fh:
        pickle.dump(outcome, fh)
    os.replace(path + ".tmp", path)


def on_pool(job: dict, out_path: str) -> None:
    """Several maps on one local pool; map k starts once the file ``{out}.go{k}``
    exists (so the test can act between maps); outcome k goes to ``{out}.{k}``."""
    import time
    import acme
    pool = acme.local_cluster_setup(n_workers=job["pool"], interactive=False)
    try:
        for k, sub in enumerate(job["maps"]):
            while not os.path.exists(f"{out_path}.go{k}"):
                time.sleep(0.01)
            _save(run_map(sub["desc"], sub["mode"], pool, sub["output_dir"]),
                  f"{out_path}.{k}")
    finally:
        acme.cluster_cleanup(pool)


def main(job_path: str, out_path: str) -> None:
    with open(job_path, "rb") as fh:
        job = pickle.load(fh)
    print(f"PID {os.getpid()}", flush=True)
    if "maps" in job:
        on_pool(job, out_path)
        return
    outcome = run_map(job["desc"], job["mode"], job["backend"], job["output_dir"],
                      **job.get("options", {}))
    with open(out_path + ".tmp", "wb") as fh:
        pickle.dump(outcome, fh)
    os.replace(out_path + ".tmp", out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
