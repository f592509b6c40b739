"""What travels to the ranks of a SLURM job, and whether they can load it.

:func:`write_work` writes the function with its constant arguments
(``context.pkl``) and the varying arguments (``tasks.pkl``) into a job or map folder:
by value with cloudpickle when it is importable here, else by reference, in which case
what ``__main__`` defines can only be found by loading that script on every rank
(:func:`main_script_problem` says whether that works). :func:`job_python_problem`
starts the Python the ranks run, with their import path, to see that it imports
mpi4py and acme (and cloudpickle); :func:`function_problem` judges from both whether
the ranks could load a function, before anything is written or submitted.

Used by the ``slurm`` backend (:mod:`acme.backends.slurm`) and by SLURM worker pools
(:mod:`acme.backends.slurm_pool`); it needs only :mod:`acme.backends.slurm_site`.
"""
from __future__ import annotations

import os
import pickle
import pickletools
import subprocess
import sys
from typing import Optional

from acme.slurm_job import CONTEXT_FILE, TASKS_FILE
from acme.tasks import WorkerContext, dumps

from .slurm_site import _python_path

__all__ = ["write_work", "function_problem", "main_script_problem", "script_to_load",
           "job_python_problem"]


def _has_cloudpickle() -> bool:
    try:
        import cloudpickle  # noqa: F401
        return True
    except ImportError:
        return False


def _refers_to_main(data: bytes) -> bool:
    """Whether a pickle names something of ``__main__`` (a function, a class, or a
    partial of one), which the ranks can only find by loading the script."""
    if b"__main__" not in data:  # fast: most pickles never mention it
        return False
    return any(arg == "__main__" or (op.name in ("GLOBAL", "INST") and
                                     str(arg).startswith("__main__ "))
               for op, arg, _ in pickletools.genops(data))


def _describe(func) -> str:
    """How messages name ``func``: a function, a partial of one, or an object."""
    if hasattr(func, "__name__"):
        return f"the function {func.__name__!r}"
    inner = getattr(func, "func", None)
    if inner is not None and hasattr(inner, "__name__"):
        return f"the function {inner.__name__!r} (in a {type(func).__name__})"
    return f"the callable object of class {type(func).__qualname__!r}"


def main_script_problem(func, what: Optional[str] = None) -> tuple:
    """``(script, problem)``: without cloudpickle what ``__main__`` defines travels by
    reference, and the job loads ``script`` (without running its main block) on every
    rank; ``problem`` says why it cannot (None: it can). ``what`` names the object
    (default: the function)."""
    from acme.mpi_run import has_main_guard
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    what = what or _describe(func)
    if not path or not os.path.isfile(path):
        return None, (f"{what} was defined in an interactive session and cloudpickle "
                      "is not importable here, so a SLURM job cannot load it; install "
                      "cloudpickle (pip install cloudpickle) to send it by value, or "
                      "define it in a module")
    path = os.path.abspath(path)
    if not has_main_guard(path):
        return path, (f"{what} is defined in {path}, which has no `if __name__ == "
                      "\"__main__\":` block, so a SLURM job cannot load it without "
                      "running the whole script again; add that block, move it into a "
                      "module, or install cloudpickle (pip install cloudpickle)")
    return path, None


# What every rank of a job imports first (mpi4py without starting MPI: this runs on
# the submitting machine, outside any MPI launcher).
_JOB_IMPORTS = """
import sys
try:
    import mpi4py
    mpi4py.rc.initialize = mpi4py.rc.finalize = False
    from mpi4py import MPI
except BaseException as exc:
    sys.exit(f"mpi4py is not importable in {sys.executable} ({type(exc).__name__}: {exc})")
try:
    import acme.slurm_job, acme.backends.mpi, acme.sinks
except BaseException as exc:
    sys.exit(f"acme is not importable in {sys.executable} with the job's PYTHONPATH "
             f"({type(exc).__name__}: {exc})")
try:
    import cloudpickle
    print("cloudpickle")
except ImportError:
    pass
"""
_job_python: dict = {}
JOB_PYTHON_SECONDS = 60.0


def job_python_problem() -> tuple:
    """``(problem, has_cloudpickle)`` of the Python a job's ranks run.

    The ranks run this interpreter (``sys.executable``, the same path on the compute
    nodes) with this process's environment (``sbatch`` exports it) and the job
    script's PYTHONPATH: that interpreter is started here the same way and imports
    what a rank imports first. ``problem`` says what failed (None: nothing);
    ``has_cloudpickle`` whether functions sent by value can be loaded there. Checked
    once per process, interpreter, import path and folder.
    """
    key = (sys.executable, _python_path(), os.getcwd())
    if key not in _job_python:
        _job_python[key] = _try_job_imports(*key[:2])
    return _job_python[key]


def _try_job_imports(python: str, path: str) -> tuple:
    if not python:
        return "this process does not know its interpreter (sys.executable is empty)", False
    try:
        proc = subprocess.run([python, "-c", _JOB_IMPORTS], capture_output=True,
                              text=True, timeout=JOB_PYTHON_SECONDS, stdin=subprocess.DEVNULL,
                              env=dict(os.environ, PYTHONPATH=path))
    except subprocess.TimeoutExpired:
        return (f"{python} did not import mpi4py and acme within {JOB_PYTHON_SECONDS:g} s",
                False)
    except OSError as exc:
        return f"{python} cannot be started: {exc}", False
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return (lines[-1] if lines else f"{python} exited with code {proc.returncode}"), False
    return None, "cloudpickle" in proc.stdout


def function_problem(func) -> Optional[str]:
    """Why the ranks of a job started from here could not load ``func`` (None: they
    can), judged as :func:`write_work` sends it."""
    if _has_cloudpickle():
        if not job_python_problem()[1]:
            return (f"the function travels by value (cloudpickle), but cloudpickle is "
                    f"not importable in {sys.executable} as the job runs it")
        return None
    try:
        by_reference = pickle.dumps(func, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # (ParallelMap refuses such a function earlier)
        return f"the function cannot be pickled ({exc}) and cloudpickle is not importable"
    return main_script_problem(func)[1] if _refers_to_main(by_reference) else None


def script_to_load(func) -> Optional[str]:
    """The ``__main__`` script the ranks must load to find ``func`` (None: none)."""
    if _has_cloudpickle() or not _refers_to_main(pickle.dumps(func)):
        return None
    return main_script_problem(func)[0]


def write_work(folder: str, context: WorkerContext, tasks: list) -> Optional[str]:
    """Write ``context.pkl`` and ``tasks.pkl`` into ``folder``; return the ``__main__``
    script the job's ranks have to load (None: nothing to load: the function travels
    by value with cloudpickle, or lives in an importable module)."""
    by_value = _has_cloudpickle()
    context_bytes = dumps(context, "The function or one of its constant arguments",
                          by_value=by_value)
    tasks_bytes = dumps(tasks, "A varying argument", by_value=by_value)
    main_script = None
    if not by_value and (_refers_to_main(context_bytes) or _refers_to_main(tasks_bytes)):
        what = None if _refers_to_main(pickle.dumps(context.func)) else \
            "an argument of the map (of a class defined in __main__)"
        path, problem = main_script_problem(context.func, what)
        if problem:
            raise TypeError(problem[0].upper() + problem[1:])
        main_script = path
    with open(os.path.join(folder, CONTEXT_FILE), "wb") as fh:
        fh.write(context_bytes)
    with open(os.path.join(folder, TASKS_FILE), "wb") as fh:
        fh.write(tasks_bytes)
    return main_script
