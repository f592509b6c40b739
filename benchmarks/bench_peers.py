"""acme against the usual ways of running a function many times, in the same run.

    python benchmarks/bench_peers.py [--repeat 3] [--workloads W1,W2,...] [--plot FILE]
                                     [--esi-acme VENV_PYTHON]

Every measurement runs in a fresh Python process (so peak memory is that run's own):
wall time, time to the first result, overhead per call (wall time beyond the ideal,
divided by the number of calls) and the parent's peak resident memory. The table
shows medians over the repetitions, the spread (max - min), and each peer's time as
a ratio to acme's (above 1: acme is faster).

Workloads, 2 workers:
  W0   200 calls f(x, y) = x + y, results in memory (a point for the overhead plot)
  W1   2,000 calls f(x, y) = x + y, results in memory
  W2   the same, each result written to its own HDF5 file, then read back
  W3   2,000 calls returning 1,000 float64, stacked on disk (result_shape=(None, 1000))
  W3s  W3 into one file (single_file=True)
  W4   200 calls sleeping 50 ms (ideal 5.0 s)
  W5   100 calls sharing one 16 MB numpy argument
  W6   20,000 trivial calls in memory (does the cost per call stay flat?)

Peers: concurrent.futures.ProcessPoolExecutor (chunksize 1, and its best chunksize of
a few tried), multiprocessing.Pool, joblib (loky; when installed), a hand-written
ProcessPoolExecutor loop writing the same HDF5 files (W2, W3, W3s), and esi-acme with
``--esi-acme``: from its own virtual environment (``$ACME_ESI_VENV``, default
~/.cache/acme-test/esi-acme, made by scripts/esi_acme_env.sh on first use; or the python
given as ``--esi-acme PYTHON``), run with failing SLURM stubs first on PATH; it pulls
Dask, so it stays out of this project's dependencies.
A plot of the overhead per call against the number of calls is written to
``benchmarks/overhead.png`` when matplotlib is installed (``--plot FILE`` elsewhere).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

WORKERS = 2
N = {"W0": 200, "W1": 2000, "W2": 2000, "W3": 2000, "W3s": 2000, "W4": 200, "W5": 100, "W6": 20000}
IDEAL = {"W4": 200 * 0.05 / WORKERS}
BIG = None  # the W5 constant, made in the parent


def add(x, y):
    return x + y


def row(x):
    return np.full(1000, x, dtype=np.float64)


def nap(x):
    time.sleep(0.05)
    return x


def uses_big(x, big):
    return float(big[x % big.shape[0], 0])


def func_and_args(workload):
    n = N[workload]
    if workload in ("W0", "W1", "W2", "W6"):
        return add, [list(range(n)), [1] * n]
    if workload in ("W3", "W3s"):
        return row, [list(range(n))]
    if workload == "W4":
        return nap, [list(range(n))]
    big = np.ones((2048, 1024), dtype=np.float64)  # 16 MB, 2-D: the same for every call
    return uses_big, [list(range(n)), big]


# ------------------------------------------------------------------- writers
def write_h5(path, value):
    import h5py
    with h5py.File(path, "w") as h5f:
        h5f.create_dataset("result_0", data=np.atleast_1d(value))
    return path


def add_to_file(args):
    x, y, folder = args
    return write_h5(os.path.join(folder, f"add_{x}.h5"), x + y)


def row_to_file(args):
    x, folder = args
    return write_h5(os.path.join(folder, f"row_{x}.h5"), row(x))


def read_back(paths):
    import h5py
    total = 0.0
    for path in paths:
        with h5py.File(path, "r") as h5f:
            total += float(h5f["result_0"][()].sum())
    return total


# ------------------------------------------------------------------- runners
def run_acme(workload, scratch):
    from acme import ParallelMap
    func, args = func_and_args(workload)
    on_disk = workload in ("W2", "W3", "W3s")
    kwargs = dict(write_worker_results=on_disk, n_workers=WORKERS, verbose=False,
                  logfile=False)
    if on_disk:
        kwargs["output_dir"] = os.path.join(scratch, "acme")
    if workload in ("W3", "W3s"):
        kwargs["result_shape"] = (None, 1000)
    if workload == "W3s":
        kwargs["single_file"] = True
    with ParallelMap(func, *args, backend="local", **kwargs) as pmap:
        results = pmap.compute()
    if workload == "W2":
        read_back(results)
    return pmap.stats.get("first_result_seconds")


def _ppe_map(func, args, chunksize):
    from concurrent.futures import ProcessPoolExecutor
    first = None
    start = time.perf_counter()
    with ProcessPoolExecutor(WORKERS) as pool:
        out = []
        for value in pool.map(func, *args, chunksize=chunksize):
            if first is None:
                first = time.perf_counter() - start
            out.append(value)
    return first


def run_ppe(workload, scratch, chunksize):
    func, args = func_and_args(workload)
    if workload in ("W2", "W3", "W3s"):
        folder = os.path.join(scratch, "ppe")
        os.makedirs(folder)
        n = N[workload]
        if workload == "W2":
            tasks = [(x, 1, folder) for x in range(n)]
            writer = add_to_file
        else:
            tasks = [(x, folder) for x in range(n)]
            writer = row_to_file
        from concurrent.futures import ProcessPoolExecutor
        start = time.perf_counter()
        first = None
        paths = []
        with ProcessPoolExecutor(WORKERS) as pool:
            for path in pool.map(writer, tasks, chunksize=chunksize):
                first = first or time.perf_counter() - start
                paths.append(path)
        if workload == "W2":
            read_back(paths)
        return first
    if workload == "W5":
        args = [args[0], [args[1]] * len(args[0])]
    return _ppe_map(func, args, chunksize)


def run_pool(workload, scratch):
    import multiprocessing
    func, args = func_and_args(workload)
    if workload == "W5":
        args = [args[0], [args[1]] * len(args[0])]
    start = time.perf_counter()
    first = None
    with multiprocessing.Pool(WORKERS) as pool:
        for _ in pool.starmap(func, zip(*args)):
            first = first or time.perf_counter() - start
    return first


def run_joblib(workload, scratch):
    from joblib import Parallel, delayed
    func, args = func_and_args(workload)
    if workload == "W5":
        args = [args[0], [args[1]] * len(args[0])]
    start = time.perf_counter()
    first = None
    for _ in Parallel(n_jobs=WORKERS, return_as="generator")(
            delayed(func)(*a) for a in zip(*args)):
        first = first or time.perf_counter() - start
    return first


def best_chunksize(workload):
    n = N[workload]
    return max(1, n // (4 * WORKERS))


TOOLS = {
    "acme": run_acme,
    "ppe-chunk1": lambda w, s: run_ppe(w, s, 1),
    "ppe-best": lambda w, s: run_ppe(w, s, best_chunksize(w)),
    "mp.Pool": run_pool,
    "joblib": run_joblib,
}
DISK_WORKLOADS = ("W2", "W3", "W3s")


def applicable(tool, workload):
    if workload in DISK_WORKLOADS:
        return tool in ("acme", "ppe-best", "esi-acme")
    if tool == "joblib":
        try:
            import joblib  # noqa: F401
        except ImportError:
            return False
    return True


def inner(tool, workload):
    # Imports are paid once per script, not per map: load them before the clock runs.
    import concurrent.futures  # noqa: F401
    import multiprocessing  # noqa: F401
    if tool == "acme":
        import acme  # noqa: F401
    elif tool == "joblib":
        import joblib  # noqa: F401
    scratch = tempfile.mkdtemp(prefix="acme-bench-")
    try:
        start = time.perf_counter()
        first = TOOLS[tool](workload, scratch)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("BENCH " + json.dumps({"seconds": seconds, "first": first, "peak_mb": peak_mb}))


def run_esi_acme(python, workload):
    code = f"""
import json, resource, time, tempfile, os, numpy as np, sys
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import bench_peers as b
import acme
from acme import ParallelMap
assert "site-packages" in acme.__file__, "not esi-acme: " + acme.__file__
func, args = b.func_and_args({workload!r})
disk = {workload!r} in {DISK_WORKLOADS!r}
kw = dict(write_worker_results=disk, n_workers={WORKERS}, verbose=False)
if disk: kw["output_dir"] = os.path.join(tempfile.mkdtemp(), "out")  # must not exist
if {workload!r} in ("W3", "W3s"): kw["result_shape"] = (None, 1000)
if {workload!r} == "W3s": kw["single_file"] = True
if __name__ == "__main__":
    t = time.perf_counter()
    with ParallelMap(func, *args, **kw) as pmap:
        pmap.compute()
    s = time.perf_counter() - t
    print("BENCH " + json.dumps({{"seconds": s, "first": None,
          "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    # From a neutral folder: `python -c` puts the current directory on sys.path, and
    # from the checkout `import acme` would be ours.
    return _measure([python, "-c", code], env=_laptop_env(), cwd=tempfile.gettempdir())


ESI_VENV = os.environ.get("ACME_ESI_VENV",
                          os.path.expanduser("~/.cache/acme-test/esi-acme"))
ESI_ENV_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "scripts", "esi_acme_env.sh")


def _laptop_env() -> dict:
    """An environment in which SLURM's commands fail: esi-acme then starts its local
    Dask cluster, as on a laptop, even on a machine that has SLURM (the stubs are made
    by scripts/esi_acme_env.sh)."""
    stubs = os.path.join(ESI_VENV, "nosl")
    if not os.path.isdir(stubs):
        raise SystemExit(f"no SLURM stubs in {stubs}: run scripts/esi_acme_env.sh "
                         "(ACME_ESI_VENV names the venv)")
    return dict(os.environ, PATH=stubs + os.pathsep + os.environ.get("PATH", ""))


def esi_acme_python() -> str:
    """The python of esi-acme's venv, made by scripts/esi_acme_env.sh when missing
    (the same venv and SLURM stubs as the parity suite, tests/test_esi_parity.py)."""
    python = os.path.join(ESI_VENV, "bin", "python")
    if not (os.path.exists(python) and os.path.isdir(os.path.join(ESI_VENV, "nosl"))):
        subprocess.run(["bash", ESI_ENV_SCRIPT], check=True, stdin=subprocess.DEVNULL,
                       env=dict(os.environ, ACME_ESI_VENV=ESI_VENV))
    return python


def _measure(cmd, env=None, cwd=None):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env,
                         cwd=cwd)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])
    raise RuntimeError(f"{cmd[:3]} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")


def measure(tool, workload, esi_python=None):
    if tool == "esi-acme":
        return run_esi_acme(esi_python, workload)
    return _measure([sys.executable, os.path.abspath(__file__), "--inner", tool, workload])


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workloads", default=",".join(N))
    parser.add_argument("--plot", default=os.path.join(os.path.dirname(
        os.path.abspath(__file__)), "overhead.png"), help="PNG of the overhead per call")
    parser.add_argument("--esi-acme", nargs="?", const="auto", default=None,
                        metavar="PYTHON", help="also measure esi-acme (from its own venv)")
    parser.add_argument("--inner", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(*args.inner)
        return
    if args.esi_acme == "auto":
        args.esi_acme = esi_acme_python()
    tools = list(TOOLS) + (["esi-acme"] if args.esi_acme else [])
    rows = []
    print(f"{WORKERS} workers, median of {args.repeat} runs, each in a fresh process")
    print(f"{'load':5s} {'tool':11s} {'wall s':>8s} {'spread':>7s} {'first s':>8s} "
          f"{'us/call':>8s} {'peak MB':>8s} {'x acme':>7s}")
    for workload in args.workloads.split(","):
        medians = {}
        for tool in tools:
            if not applicable(tool, workload):
                continue
            try:
                runs = [measure(tool, workload, args.esi_acme) for _ in range(args.repeat)]
            except RuntimeError as exc:  # one peer failing must not lose the table
                print(f"{workload:5s} {tool:11s} failed: {str(exc).splitlines()[-1][:80]}")
                continue
            secs = [r["seconds"] for r in runs]
            med = statistics.median(secs)
            medians[tool] = med
            firsts = [r["first"] for r in runs if r["first"] is not None]
            first = statistics.median(firsts) if firsts else float("nan")
            overhead = 1e6 * (med - IDEAL.get(workload, 0.0)) / N[workload]
            peak = statistics.median(r["peak_mb"] for r in runs)
            ratio = med / medians["acme"] if "acme" in medians else float("nan")
            rows.append((workload, tool, med, overhead))
            print(f"{workload:5s} {tool:11s} {med:8.3f} {max(secs) - min(secs):7.3f} "
                  f"{first:8.3f} {overhead:8.1f} {peak:8.0f} {ratio:7.2f}", flush=True)
    if args.plot:
        plot(rows, args.plot)


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written")
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for tool in sorted({r[1] for r in rows}):
        points = sorted((N[w], o) for w, t, _, o in rows
                        if t == tool and w in ("W0", "W1", "W6"))
        if points:
            ax.plot(*zip(*points), marker="o", label=tool)
    ax.set_xscale("log")
    ax.set_xlabel("number of trivial calls (W0: 200, W1: 2,000, W6: 20,000)")
    ax.set_ylabel("overhead per call (µs)")
    ax.set_title("Per-call overhead, results in memory, 2 workers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot written to {path}")


if __name__ == "__main__":
    main()
