"""The functions of the conformance and fault suites, importable by every worker.

A map is *data*: a small ``spec`` dict that the functions below interpret, so that
Hypothesis generates data, not code, and MPI ranks and SLURM jobs import the same
functions from this file (tests/conformance_scripts is on their PYTHONPATH).

What a call returns depends only on the function's name, ``spec`` and the call's
arguments (a digest of them seeds a random generator), so running the wrong function,
the wrong constants or the wrong call gives a different value. Whether a call raises
is decided the same way (``spec["raise_pct"]`` percent of calls raise ValueError).
"""
from __future__ import annotations

import hashlib
import os
import time

import numpy as np

#: dtypes of generated arrays, with value ranges every one of them holds exactly
DTYPES = ("float64", "float32", "int64", "int32", "int16", "uint8", "bool", "complex128")


def canonical(obj):
    """A plain, hashable description of an argument value (type-aware, exact)."""
    if isinstance(obj, np.ndarray):
        if obj.ndim == 0:
            return ("num", obj.dtype.str, obj.item())
        return ("nd", obj.dtype.str, obj.shape, obj.tobytes().hex())
    if isinstance(obj, np.generic):
        return ("num", obj.dtype.str, obj.item())
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(canonical(v) for v in obj))
    if isinstance(obj, dict):
        return ("dict", tuple(sorted((repr(k), canonical(v)) for k, v in obj.items())))
    if isinstance(obj, (set, frozenset)):
        return ("set", tuple(sorted(repr(v) for v in obj)))
    return (type(obj).__name__, repr(obj))


def digest(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(canonical(parts)).encode()).digest()[:8],
                          "little")


def make_array(rng, dtype: str, shape: tuple) -> np.ndarray:
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == "complex128":
        return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype == "uint8":
        return rng.integers(0, 200, shape).astype(dtype)
    return rng.integers(-100, 100, shape).astype(dtype)


def make_value(rng, ret):
    """One return value of kind ``ret`` (see the ``returns`` strategy of the tests)."""
    kind = ret[0]
    if kind == "int":
        return int(rng.integers(-1000, 1000))
    if kind == "float":
        return float(rng.standard_normal())
    if kind == "npscalar":
        return make_array(rng, ret[1], ())[()]
    if kind == "array":
        return make_array(rng, ret[1], tuple(ret[2]))
    if kind == "ragged":  # a 1-D array of 1..ret[2] elements (result_shape with np.inf)
        return make_array(rng, ret[1], (int(rng.integers(1, ret[2] + 1)),))
    if kind == "tuple":
        return tuple(make_value(rng, sub) for sub in ret[1])
    if kind == "dict":
        return {"a": int(rng.integers(0, 10)), "b": make_array(rng, "float64", (2,))}
    if kind == "none":
        return None
    raise ValueError(f"unknown return kind {ret!r}")


def evaluate(name: str, spec: dict, arguments: dict):
    """What call ``name(**arguments)`` of map ``spec`` returns (or raises)."""
    seed = digest(name, spec["salt"], arguments)
    if spec.get("log"):  # the fault suite counts the calls that really ran
        fd = os.open(spec["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{arguments.get('x', arguments.get('taskID'))}\n".encode())
        finally:
            os.close(fd)
    if spec.get("sleep"):
        time.sleep(spec["sleep"])
    if spec.get("slow_x") is not None and arguments.get("x") == spec["slow_x"]:
        time.sleep(spec["slow_s"])  # one long call: the other workers go idle
    if seed % 100 < spec.get("raise_pct", 0):
        raise ValueError(f"planned failure of {name} (seed {seed})")
    return make_value(np.random.default_rng(seed), spec["ret"])


# ---------------------------------------------------------------- the functions
# Several signatures, so that the argument rules (keywords with list/tuple/array
# defaults, taskID, keywords naming positional parameters) are exercised.
def f_plain(x, spec):
    return evaluate("f_plain", spec, {"x": x})


def f_two(x, y, spec, scale=1.0):
    return evaluate("f_two", spec, {"x": x, "y": y, "scale": scale})


def f_task(x, spec, taskID=None):
    return evaluate("f_task", spec, {"x": x, "taskID": taskID})


def f_kwdef(x, spec, w=(1, 2, 3), arr=np.zeros(3)):
    return evaluate("f_kwdef", spec, {"x": x, "w": w, "arr": arr})


FUNCTIONS = {f.__name__: f for f in (f_plain, f_two, f_task, f_kwdef)}
