"""Scripts for the MPI tests' single behaviours. usage: behaviours.py CASE OUTDIR"""
import os
import sys
import time

import numpy as np

from acme import ParallelMap


def rank():
    return int(os.environ.get("OMPI_COMM_WORLD_RANK", "-1"))


def where(x):
    return rank()


def fail_at_3(x):
    if x == 3:
        raise ValueError(f"bad value x={x}")
    return x


def die_at_3(x):
    if x == 3:
        os._exit(7)
    time.sleep(0.3)
    return np.full(4, x)


def uses_constant(x, big):
    return float(big.flat[x])


def sleepy(x):
    if x == 1:
        time.sleep(30)
    return x


def main(case, outdir):
    if case == "ranks":
        with ParallelMap(where, list(range(24)), write_worker_results=False) as pmap:
            print("RANKS", sorted(set(pmap.compute())))
    elif case == "failing_call":
        try:
            with ParallelMap(fail_at_3, list(range(8)), output_dir=outdir) as pmap:
                pmap.compute()
        except Exception as exc:
            print("ERROR", type(exc).__name__, exc.failed, type(exc.__cause__).__name__)
            print("CAUSE", str(exc.__cause__.__cause__).replace("\n", " | "))
            print("RESULTS", [r is None for r in exc.results])
    elif case == "dying_worker":
        with ParallelMap(die_at_3, list(range(10)), output_dir=outdir) as pmap:
            pmap.compute()
    elif case == "failing_script":
        with ParallelMap(where, list(range(4)), write_worker_results=False) as pmap:
            pmap.compute()
        raise KeyError("the script itself fails")
    elif case == "two_maps":
        with ParallelMap(where, list(range(6)), write_worker_results=False) as pmap:
            first = pmap.compute()
        with ParallelMap(fail_at_3, [0, 1, 2], write_worker_results=False) as pmap:
            second = pmap.compute()
        print("TWO", len(first), second)
    elif case == "big_constant":
        big = np.arange(2_500_000, dtype=np.float64).reshape(2500, 1000)  # 20 MB, 2-D
        with ParallelMap(uses_constant, list(range(40)), big,
                         write_worker_results=False) as pmap:
            values = pmap.compute()
        print("BIG", values == [float(i) for i in range(40)], pmap.stats["bytes_to_workers"])
    elif case == "timeout":
        try:
            with ParallelMap(sleepy, [0, 1, 2, 3], write_worker_results=False,
                             timeout=2) as pmap:
                pmap.compute()
        except Exception as exc:
            print("TIMEOUT", exc.failed, type(exc.__cause__).__name__, exc.results)


if __name__ == "__main__":
    main(*sys.argv[1:])
