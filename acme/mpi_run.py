"""Run a script under MPI: ``srun -n 64 python -m acme.mpi_run script.py [args]``
(or ``mpiexec -n 64 ...``).

Every rank starts here. Rank 0 runs the script as ``__main__``; every ParallelMap in
it (``backend="auto"``) then uses ranks 1..N-1 as workers. The workers load the
script under another name, so the functions it defines can be found, without running
the part under ``if __name__ == "__main__":``. When the script ends, the workers are
told to stop and every rank exits. An exception escaping the script ends all ranks
at once (MPI_Abort) with exit code 1, so a job never hangs until its wall-time limit.

This module imports mpi4py only when it runs; ``import acme`` never does.
"""
from __future__ import annotations

import ast
import logging
import os
import runpy
import signal
import sys
import traceback
import types
from typing import Optional

log = logging.getLogger("acme")

__all__ = ["main", "active_pool", "has_main_guard"]

USAGE = """usage: python -m acme.mpi_run script.py [arguments ...]

Start on every rank with srun or mpiexec, e.g.
    mpiexec -n 4 python -m acme.mpi_run script.py
Rank 0 runs script.py; ranks 1..N-1 run the calls of its ParallelMaps."""

_pool = None


def active_pool():
    """The MPI worker pool of this process when it is rank 0 of an acme.mpi_run job."""
    return _pool


def has_main_guard(path: str) -> bool:
    """Whether the script has a top-level ``if __name__ == "__main__":`` block."""
    with open(path, "rb") as fh:
        tree = ast.parse(fh.read(), filename=path)
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = [n for n in ast.walk(node.test) if isinstance(n, ast.Name)]
            consts = [n.value for n in ast.walk(node.test) if isinstance(n, ast.Constant)]
            if any(n.id == "__name__" for n in names) and "__main__" in consts:
                return True
    return False


def _load_script_on_worker(path: str) -> None:
    """Define the script's functions on a worker without running its main block.

    The module is registered as ``__main__`` so that functions pickled on rank 0 by
    reference (``__main__.f``) are found here, and under its own name, which its
    functions carry when this rank pickles them again for others.
    """
    from .tasks import WORKER_SCRIPT_MODULE  # rank 0 aliases this name to __main__
    module = types.ModuleType(WORKER_SCRIPT_MODULE)
    module.__file__ = path
    module.__builtins__ = __builtins__
    with open(path, "rb") as fh:
        code = compile(fh.read(), path, "exec")
    sys.modules["__main__"] = module
    sys.modules[module.__name__] = module
    exec(code, module.__dict__)


class _Terminated(BaseException):
    """SIGTERM on rank 0 (SLURM's time limit, or mpiexec ending the job)."""


def _on_sigterm(signum, frame):
    raise _Terminated(f"received signal {signum}")


def main(argv: Optional[list] = None) -> int:
    global _pool
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    script = os.path.abspath(args[0])
    if not os.path.isfile(script):
        print(f"acme.mpi_run: no such script: {args[0]}", file=sys.stderr)
        return 2
    try:
        from mpi4py import MPI
    except ImportError as exc:
        print(f"acme.mpi_run needs mpi4py (pip install mpi4py): {exc}", file=sys.stderr)
        return 2
    from acme.backends.mpi import MPIPool, serve

    comm = MPI.COMM_WORLD
    guard = has_main_guard(script)
    sys.argv = [script] + args[1:]
    sys.path[0] = os.path.dirname(script)

    if comm.rank != 0:
        if guard:
            _load_script_on_worker(script)
        serve(comm, script_loaded=guard)
        return 0

    _pool = MPIPool(comm, script_loaded=guard)
    if not guard:
        log.warning("%s has no `if __name__ == \"__main__\":` block, so the workers do not "
                    "import it (that would run the whole script again on every rank); "
                    "functions defined in it are sent to the workers by value", script)
    if comm.size == 1:
        log.warning("acme.mpi_run started with 1 rank: there are no worker ranks, so "
                    "every call runs on rank 0. Start with -n 2 or more.")
    signal.signal(signal.SIGTERM, _on_sigterm)
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        print(f"acme.mpi_run: the script failed on rank 0; ending all {comm.size} ranks",
              file=sys.stderr)
        sys.stderr.flush()
        comm.Abort(1)
    finally:
        _pool.shutdown()
        _pool = None
    return code


if __name__ == "__main__":
    # Run the copy registered as "acme.mpi_run", so that `active_pool()` seen by the
    # user's script (which imports acme) is the one main() sets.
    from acme import mpi_run as _registered
    sys.exit(_registered.main())
