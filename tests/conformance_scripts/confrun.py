"""Build and run the maps of the conformance suite from their description (data).

A *map description* is a plain dict (picklable, so it travels to an MPI script):

    {"func": "f_two", "args": [...], "kwargs": {...}, "n_inputs": "auto" or int,
     "spec": {"salt": ..., "ret": ..., "raise_pct": ...}, "stack_axis": k,
     "result_dtype": "float64" or None}

Arguments are given as ``("list"|"tuple", [values])``, ``("array", dtype, shape,
[values])`` or ``("value", obj)`` (passed as it is) and built here.
``run_map`` runs one description in one result mode on one backend and returns what
came out as plain data (an "outcome"), so the test can check it wherever it ran.
"""
from __future__ import annotations

import traceback

import numpy as np

from confmodel import FUNCTIONS

#: the result modes of the suite: ParallelMap options (result_shape added where used)
MODES = {
    "memory": dict(write_worker_results=False),
    "memory_shape": dict(write_worker_results=False),
    "files": dict(),
    "files_shape": dict(),
    "single": dict(single_file=True),
    "single_shape": dict(single_file=True),
    "pickle": dict(write_pickle=True),
}


def build(arg):
    """The Python value of one argument description."""
    kind = arg[0]
    if kind == "list":
        return list(arg[1])
    if kind == "tuple":
        return tuple(arg[1])
    if kind == "array":
        return np.array(arg[3], dtype=arg[1]).reshape(arg[2])
    if kind == "value":
        return arg[1]
    raise ValueError(f"unknown argument description {arg!r}")


def first_value_shape(ret):
    """(call shape, dtype) of the first return value, or None if result_shape cannot
    apply (dict, None)."""
    if ret[0] == "tuple":
        return first_value_shape(ret[1][0]) if ret[1] else None
    if ret[0] == "int":
        return (), "int64"
    if ret[0] == "float":
        return (), "float64"
    if ret[0] == "npscalar":
        return (), ret[1]
    if ret[0] == "array":
        return tuple(ret[2]), ret[1]
    if ret[0] == "ragged":
        return (np.inf,), ret[1]
    return None


def result_shape_of(desc):
    """result_shape for a description (None where it cannot apply)."""
    found = first_value_shape(desc["spec"]["ret"])
    if found is None:
        return None
    shape = list(found[0])
    shape.insert(min(desc.get("stack_axis", 0), len(shape)), None)
    return tuple(shape)


def result_dtype_of(desc) -> str:
    found = first_value_shape(desc["spec"]["ret"])
    return desc.get("result_dtype") or found[1]


def mode_options(desc, mode: str) -> dict:
    options = dict(MODES[mode])
    if mode.endswith("_shape"):
        options["result_shape"] = result_shape_of(desc)
        options["result_dtype"] = result_dtype_of(desc)
    return options


def applicable(desc, mode: str) -> bool:
    shape = result_shape_of(desc)
    if mode == "memory_shape" and shape is not None and np.inf in shape:
        return False  # np.inf axes exist on disk only
    return not mode.endswith("_shape") or shape is not None


def run_map(desc, mode: str, backend, output_dir=None, **extra) -> dict:
    """Run ``desc`` in ``mode`` on ``backend``; the outcome as plain data."""
    from acme import ParallelMap, ParallelMapError
    func = FUNCTIONS[desc["func"]]
    args = [build(a) for a in desc["args"]]
    kwargs = {k: build(v) for k, v in desc["kwargs"].items()}
    options = mode_options(desc, mode)
    if not mode.startswith("memory"):
        options["output_dir"] = output_dir
    options.update(extra)
    outcome = {"mode": mode, "output_dir": output_dir}
    try:
        with ParallelMap(func, *args, n_inputs=desc["n_inputs"], backend=backend,
                         verbose=False, **options, **kwargs) as pmap:
            outcome.update(status="ok", value=pmap.compute())
        outcome["container"] = pmap.results_container
        outcome["n_inputs"] = pmap.n_inputs
    except ParallelMapError as err:
        outcome.update(status="failed", failed=list(err.failed), results=err.results,
                       cause=type(err.__cause__).__name__, message=str(err))
        outcome["container"] = pmap.results_container
    except Exception as exc:  # anything else is wrong: keep it for the report
        outcome.update(status="exception", type=type(exc).__name__, message=str(exc),
                       traceback=traceback.format_exc())
    return outcome
