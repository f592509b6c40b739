"""Where do the calls run? Each call reports its node: host name, the address this node
uses to reach the login node (10.77.0.254), MPI rank and MPI's processor name.

usage: where.py N_CALLS [SECONDS_PER_CALL] [backend]
Prints ``SCHEDULER <hostname> <address>`` (rank 0 / the submitting process),
``WHERE <repr of the list of (host, address, rank, processor, code)>`` where ``code`` is
the pair of files the worker imported acme and acme.backends from (so a test sees that
the workers run the same checkout), and ``STATS <repr of pmap.stats>``.
Extra arguments ``key=value`` are passed to ParallelMap.
"""
import os
import socket
import sys
import time

from acme import ParallelMap

LOGIN_ADDRESS = "10.77.0.254"


def address() -> str:
    """This node's own address: the source address of a route to the login node
    (a UDP 'connect' sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((LOGIN_ADDRESS, 9))
        except OSError:
            return "unreachable"
        return sock.getsockname()[0]


def processor_name() -> str:
    if "mpi4py" not in sys.modules:
        return "-"
    from mpi4py import MPI
    return MPI.Get_processor_name()


def where(x, seconds):
    time.sleep(seconds)
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMIX_RANK", "-1")))
    code = (sys.modules["acme"].__file__, sys.modules["acme.backends"].__file__)
    return socket.gethostname(), address(), rank, processor_name(), code


def main(n, seconds=0.0, backend="auto", *extra):
    options = {}
    for item in extra:
        key, _, value = item.partition("=")
        options[key] = int(value) if value.isdigit() else value
    print("SCHEDULER", socket.gethostname(), address(), flush=True)
    with ParallelMap(where, list(range(int(n))), float(seconds), backend=backend,
                     write_worker_results=False, verbose=False, **options) as pmap:
        print("WHERE", pmap.compute(), flush=True)
    print("STATS", pmap.stats, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
