"""Cost per call of keeping results: HDF5 file per call, single file, pickle, in memory.

    python benchmarks/bench_results.py [--calls 2000] [--repeat 5] [--workers 2]

Each mode runs the same ParallelMap (2,000 calls returning a 1,000-element array by
default) several times; the table shows the median wall time, its spread, the cost
per call, and the ratio to keeping the results in memory, all measured in this run.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

from acme import ParallelMap


def row(x):
    return np.full(1000, x, dtype=np.float64)


MODES = {
    "memory": dict(write_worker_results=False),
    "memory + result_shape": dict(write_worker_results=False, result_shape=(None, 1000)),
    "hdf5 per call": dict(),
    "hdf5 per call + VDS": dict(result_shape=(None, 1000)),
    "single file + result_shape": dict(single_file=True, result_shape=(None, 1000)),
    "single file (groups)": dict(single_file=True),
    "pickle": dict(write_pickle=True),
}


def run_once(mode: dict, n_calls: int, workers: int, scratch: str) -> float:
    out = os.path.join(scratch, "run")
    kwargs = dict(mode)
    if kwargs.get("write_worker_results", True):
        kwargs["output_dir"] = out
    start = time.perf_counter()
    with ParallelMap(row, list(range(n_calls)), n_workers=workers, verbose=False,
                     logfile=False, backend="local", **kwargs) as pmap:
        pmap.compute()
    elapsed = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="acme-bench-")
    results = {}
    try:
        for name, mode in MODES.items():
            run_once(mode, min(args.calls, 50), args.workers, scratch)  # warm-up
            results[name] = [run_once(mode, args.calls, args.workers, scratch)
                             for _ in range(args.repeat)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    base = statistics.median(results["memory"])
    print(f"{args.calls} calls of a function returning 1,000 float64, {args.workers} "
          f"workers, median of {args.repeat}")
    print(f"{'mode':28s} {'median s':>9s} {'spread s':>9s} {'us/call':>8s} {'x memory':>9s}")
    for name, times in results.items():
        med = statistics.median(times)
        print(f"{name:28s} {med:9.3f} {max(times) - min(times):9.3f} "
              f"{1e6 * med / args.calls:8.1f} {med / base:9.2f}")


if __name__ == "__main__":
    main()
