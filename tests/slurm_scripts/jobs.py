"""Runs submitted to SLURM from a plain ``python3`` process (the "login node").

usage: jobs.py SCENARIO OUTDIR [options as key=value ...]

Scenarios:
  naps      ``nap`` calls with results on disk: call ``slow`` sleeps ``slow_seconds``,
            the others ``seconds`` (for cancel, Ctrl-C and time-limit tests)
  memory    one call per input allocating ``mb`` megabytes, partition="auto", in memory
  failing   calls 3 and 5 raise, in memory
Prints ``RESULT <repr>`` or ``ERROR <type> <message>`` and ``STATS <repr>`` lines.
"""
import os
import sys
import time

import numpy as np

from acme import ParallelMap


def nap(x, seconds, slow, slow_seconds):
    time.sleep(slow_seconds if x == slow else seconds)
    return np.full(4, x, dtype=float)


def allocate(x, mb):
    block = np.ones(int(mb * 2 ** 20 // 8))  # touched: really resident
    return float(block.sum() / block.size + x)


def fail_some(x):
    if x in (3, 5):
        raise ValueError(f"bad input {x}")
    return x * 10


def main(scenario, outdir, **opts):
    common = dict(backend=opts.pop("backend", "slurm"),
                  setup_interactive=opts.pop("interactive", "0") == "1")
    for key in ("partition", "mem_per_worker", "stop_client"):
        if key in opts:
            value = opts.pop(key)
            common[key] = {"True": True, "False": False}.get(value, value)
    if "n_workers" in opts:
        common["n_workers"] = int(opts.pop("n_workers"))
    if "setup_timeout" in opts:
        common["setup_timeout"] = float(opts.pop("setup_timeout"))
    if scenario == "naps":
        n = int(opts.get("n", 6))
        pmap = ParallelMap(nap, list(range(n)), float(opts.get("seconds", 0.2)),
                           int(opts.get("slow", -1)), float(opts.get("slow_seconds", 0)),
                           output_dir=outdir, **common)
    elif scenario == "memory":
        pmap = ParallelMap(allocate, list(range(int(opts.get("n", 2)))),
                           float(opts["mb"]), write_worker_results=False, **common)
    elif scenario == "failing":
        pmap = ParallelMap(fail_some, list(range(8)), write_worker_results=False, **common)
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    try:
        with pmap:
            results = pmap.compute()
    except Exception as exc:
        print(f"ERROR {type(exc).__name__} {exc}", flush=True)
        if hasattr(exc, "results"):
            print(f"PARTIAL {exc.results!r}", flush=True)
        print(f"STATS {pmap.stats!r}", flush=True)
        return 1
    print(f"RESULT {results!r}", flush=True)
    print(f"STATS {pmap.stats!r}", flush=True)
    return 0


if __name__ == "__main__":
    options = dict(arg.split("=", 1) for arg in sys.argv[3:])
    sys.exit(main(sys.argv[1], sys.argv[2], **options))
