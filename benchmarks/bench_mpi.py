"""The MPI backend against mpi4py.futures on the same workloads, in the same run.

    python benchmarks/bench_mpi.py [--ranks 3] [--repeat 3]

Starts ``mpiexec -n RANKS python -m acme.mpi_run`` and ``mpiexec -n RANKS python -m
mpi4py.futures`` on this file for each workload; inside, each run times only the
map (not the MPI start-up, ≈1 s either way) and reports it. Prints the median,
spread, per-call overhead (time beyond the ideal, per call) and the ratio of each
peer to acme.

Workloads (worker ranks = RANKS - 1):
  W1  2,000 trivial calls x + y, results in memory
  W4  200 calls sleeping 50 ms (ideal 200 * 0.05 / workers)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

N_TRIVIAL = 2000
N_SLEEP = 200
SLEEP = 0.05


def add(x, y):
    return x + y


def nap(x):
    time.sleep(SLEEP)
    return x


WORKLOADS = {"W1": (add, N_TRIVIAL, 0.0), "W4": (nap, N_SLEEP, SLEEP)}


def inner(tool: str, workload: str) -> None:
    func, n, _ = WORKLOADS[workload]
    xs = list(range(n))
    args = [xs, [1] * n] if func is add else [xs]
    if tool == "acme":
        from acme import ParallelMap
        with ParallelMap(add, [0, 1], 1, write_worker_results=False, verbose=False) as pmap:
            pmap.compute()  # warm up, as the futures pool is below: time only the map
        start = time.perf_counter()
        with ParallelMap(func, *args, write_worker_results=False, verbose=False) as pmap:
            values = pmap.compute()
        elapsed = time.perf_counter() - start
    else:
        from mpi4py.futures import MPIPoolExecutor
        chunksize = 1 if tool == "futures-chunk1" else max(1, n // 16)
        with MPIPoolExecutor() as pool:
            pool.submit(int).result()  # make sure the pool is up: time only the map
            start = time.perf_counter()
            values = list(pool.map(func, *args, chunksize=chunksize))
            elapsed = time.perf_counter() - start
    assert len(values) == n
    print("BENCH " + json.dumps({"tool": tool, "workload": workload, "seconds": elapsed}))


def run(tool: str, workload: str, ranks: int) -> float:
    launcher = ["-m", "acme.mpi_run"] if tool == "acme" else ["-m", "mpi4py.futures"]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    cmd = ["mpiexec", "-n", str(ranks), sys.executable, *launcher, os.path.abspath(__file__),
           "--inner", tool, workload]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])["seconds"]
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--inner", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(*args.inner)
        return
    workers = args.ranks - 1
    tools = ["acme", "futures-chunk1", "futures-chunked"]
    print(f"MPI backend vs mpi4py.futures, {args.ranks} ranks ({workers} workers), "
          f"median of {args.repeat}, map time only")
    print(f"{'workload':8s} {'tool':16s} {'median s':>9s} {'spread s':>9s} "
          f"{'overhead us/call':>17s} {'peer/acme':>10s}")
    for workload, (_, n, seconds) in WORKLOADS.items():
        ideal = n * seconds / workers
        medians = {}
        for tool in tools:
            times = [run(tool, workload, args.ranks) for _ in range(args.repeat)]
            medians[tool] = statistics.median(times)
            overhead = 1e6 * (medians[tool] - ideal) / n
            print(f"{workload:8s} {tool:16s} {medians[tool]:9.3f} "
                  f"{max(times) - min(times):9.3f} {overhead:17.1f} "
                  f"{medians[tool] / medians['acme']:10.2f}")


if __name__ == "__main__":
    main()
