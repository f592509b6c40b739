"""Scripts for the reliability tests (issue 6), run under MPI and locally.

usage: reliability.py CASE OUTDIR FLAG [HOW]

crash_exit / crash_kill  50 calls; call 23 ends its worker (os._exit / SIGKILL) while
                         the file FLAG exists
resume                   the same map with resume=True (HOW: exit or kill, as before);
                         prints how many calls ran
hang                     20 calls, call 7 sleeps 600 s, timeout=2
"""
import json
import os
import signal
import sys
import time

import numpy as np

from acme import ParallelMap

CULPRIT = 23


def crash_at(x, culprit, how, flag):
    if x == culprit and os.path.exists(flag):
        if how == "exit":
            os._exit(9)
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05)
    return np.array([x, x * x], dtype=float)


def hang_at(x, hanger):
    if x == hanger:
        time.sleep(600)
    return np.array([x, -x], dtype=float)


def main(case, outdir, flag, how=None):
    if case in ("crash_exit", "crash_kill", "resume"):
        how = how or case.split("_")[1]
        with ParallelMap(crash_at, list(range(50)), CULPRIT, how, flag, output_dir=outdir,
                         resume=(case == "resume")) as pmap:
            pmap.compute()
        if case != "resume":
            print("NOT REACHED: the run ended normally")
        print("RESUMED " + json.dumps({"ran": pmap.stats["ran"],
                                       "resumed": pmap.stats["resumed"]}))
    elif case == "hang":
        start = time.monotonic()
        try:
            with ParallelMap(hang_at, list(range(20)), 7, output_dir=outdir,
                             timeout=2) as pmap:
                pmap.compute()
        except Exception as exc:
            print("HANG " + json.dumps({
                "error": type(exc).__name__, "failed": exc.failed,
                "cause": type(exc.__cause__).__name__, "message": str(exc),
                "seconds": time.monotonic() - start}))


if __name__ == "__main__":
    main(*sys.argv[1:])
