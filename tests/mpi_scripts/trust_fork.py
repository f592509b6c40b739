"""A call that forks without exiting, under MPI (issue 13, item 9).

usage: trust_fork.py

The forked child returns a wrong value from the function (and would carry on as a
copy of the worker rank); prints ``FORK {json}`` with the results.
"""
import json
import os

from acme import ParallelMap


def fork_child_returns(x):
    pid = os.fork()
    if pid == 0:
        return -1000 - x
    os.waitpid(pid, 0)  # a child that carried on serving would hang us here
    return x * 3


if __name__ == "__main__":
    with ParallelMap(fork_child_returns, list(range(30)), write_worker_results=False,
                     backend="mpi", verbose=False) as pmap:
        print("FORK " + json.dumps(pmap.compute()), flush=True)
