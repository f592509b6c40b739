"""Results rank 0 cannot receive, under MPI (issue 13, item 14).

usage: trust_results.py

One map whose calls 50, 53, 57 and 61 raise an exception whose str() fails, raise an
exception that cannot be rebuilt, return a value that fails to unpickle, and return a
value whose unpickling raises MemoryError (a simulation of rank 0 running out of
memory on one result); then a second map on the same ranks, returning instances of a
class of this script. Prints one line
``TRUST {json}`` with the failed calls, their summaries and any wrong value.
"""
import json

from acme import ParallelMap, ParallelMapError


class StrRaises(Exception):
    def __str__(self):
        raise ValueError("no message for you")


class NeedsTwoArguments(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def _fail_on_load():
    raise RuntimeError("this value refuses to be unpickled")


def _memory_error_on_load():
    raise MemoryError("simulated: no memory to rebuild this value")


class NoLoad:
    def __reduce__(self):
        return (_fail_on_load, ())


class NoMemory:
    def __reduce__(self):
        return (_memory_error_on_load, ())


BAD_CALLS = {50: "str", 53: "args", 57: "noload", 61: "nomemory"}


def bad_results(x):
    kind = BAD_CALLS.get(x)
    if kind == "str":
        raise StrRaises()
    if kind == "args":
        raise NeedsTwoArguments("left", "right")
    if kind == "noload":
        return NoLoad()
    if kind == "nomemory":
        return NoMemory()
    return x * 5


class Point:
    """A class of this script: workers pickle it as __acme_worker__.Point."""

    def __init__(self, x):
        self.x = x


def plus_one(x):
    return Point(x + 1)


def main():
    xs = list(range(200))
    report = {"failed": None, "summaries": {}, "wrong": []}
    try:
        with ParallelMap(bad_results, xs, write_worker_results=False, verbose=False,
                         backend="mpi") as pmap:
            pmap.compute()
    except ParallelMapError as exc:
        str(exc)
        report["failed"] = exc.failed
        report["messages"] = pmap.stats["messages_to_workers"]
        report["summaries"] = {i: exc.errors[i].summary for i in exc.failed}
        report["wrong"] = [i for i, x in enumerate(xs)
                           if i not in BAD_CALLS and exc.results[i] != x * 5]
    with ParallelMap(plus_one, list(range(10)), write_worker_results=False,
                     verbose=False, backend="mpi") as pmap:
        report["second_map"] = [p.x for p in pmap.compute()]
    print("TRUST " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
