"""The maps of the differential suite: each one runs under acme and under esi-acme.

Imported by ``run_corpus.py`` in both interpreters (ours and esi-acme's venv), so this
module needs only the standard library and numpy, and every function here must be
importable by name from a worker process (the runner puts this folder on PYTHONPATH).

A :class:`Case` is ``ParallelMap(func, *args, **kwargs, **options)`` followed by
``compute()``; the runner adds ``n_workers=2``, ``setup_interactive=False`` and an
``output_dir`` inside the case's own folder (unless the case says ``output_dir=None``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

N = 4  # calls per map: small, so the whole corpus runs in about a minute per package


class Opaque:
    """A return value HDF5 cannot hold (a plain object): it takes the pickle fallback."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.value == self.value

    def __repr__(self) -> str:
        return f"Opaque({self.value})"


# ------------------------------------------------------------------ user functions
def scalar_int(x):
    return int(x) * 2


def scalar_float(x):
    return float(x) * 0.5


def several(x):
    return int(x), float(x) * 1.5, np.arange(3, dtype=np.int64) * x


def two_scalars(x):
    return int(x), float(x) * 0.5


def gives_str(x):
    return f"call {x}"


def arr_f32_2d(x):
    return np.full((2, 3), x, dtype=np.float32)


def arr_i16_1d(x):
    return np.arange(5, dtype=np.int16) * x


def arr_u8_3d(x):
    return np.full((2, 2, 2), x, dtype=np.uint8)


def arr_c128(x):
    return np.arange(3) * (1 + 1j) * x


def arr_bool(x):
    return np.arange(4) < x


def row4(x):
    return np.full(4, float(x))


def block23(x):
    return np.arange(6, dtype=np.float64).reshape(2, 3) + 10 * x


def ragged(x):
    return np.arange(x + 1, dtype=np.float64)


def row3_mixed(x):
    return np.array([x, x + 0.25, x + 0.75])


def row4_and_scalar(x):
    return np.full(4, float(x)), int(x) + 100


def gives_dict(x):
    return {"x": int(x), "name": "call"}


def gives_none(x):
    return None


def gives_object(x):
    return Opaque(int(x))


def dict_for_one(x):
    return {"x": int(x)} if x == 2 else float(x)


def fails_at_2(x):
    if x == 2:
        raise ValueError(f"the corpus raises for x={x}")
    return float(x)


def row4_fails_at_2(x):
    if x == 2:
        raise ValueError(f"the corpus raises for x={x}")
    return np.full(4, float(x))


def with_task_id(x, taskID=None):
    # Returns what it was given (-1: no taskID), so the files show it instead of a crash.
    return x, -1 if taskID is None else taskID


def kw_split(x, y=0):
    return x + y


def kw_default_list(x, y=(0, 0, 0, 0)):
    # The whole list (sum 10) or one element of it (1000 times the element).
    return x + (sum(y) if isinstance(y, (list, tuple)) else 1000 * y)


def kw_default_same_list(x, y=[0, 0, 0, 0]):  # noqa: B006 (the default's kind matters)
    return x + (sum(y) if isinstance(y, (list, tuple)) else 1000 * y)


def kw_array(x, w=None):
    # One element (size 1) or the whole array: the result says which.
    return float(x + np.sum(w)), int(np.size(w))


def kw_default_array(x, w=np.zeros(4)):
    return float(x + np.sum(w)), int(np.size(w))


def two_args(x, y):
    return x * y


# ------------------------------------------------------------------ cases
@dataclass
class Case:
    """One map: ``ParallelMap(func, *args, **kwargs, **options).compute()``."""

    name: str
    func: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    #: ParallelMap's own parameters (write_worker_results, result_shape, ...)
    options: dict = field(default_factory=dict)
    #: False: no output_dir is passed (esi-acme's auto-named ACME_* folder)
    output_dir: bool = True


X = list(range(N))
MEMORY = {"write_worker_results": False}
SHAPE4 = {"result_shape": (None, 4)}

CASES: list[Case] = [
    # -- default layout: container + payload files
    Case("scalar_int", scalar_int, (X,)),
    Case("scalar_float", scalar_float, (X,)),
    Case("several_values", several, (X,)),
    Case("two_scalars", two_scalars, (X,)),
    Case("string_value", gives_str, (X,)),
    Case("array_f32_rank2", arr_f32_2d, (X,)),
    Case("array_i16_rank1", arr_i16_1d, (X,)),
    Case("array_u8_rank3", arr_u8_3d, (X,)),
    Case("array_complex", arr_c128, (X,)),
    Case("array_bool", arr_bool, (X,)),
    Case("two_args_numpy_split", two_args, (np.arange(N), 3)),
    Case("default_output_dir", scalar_float, (X,), output_dir=False),
    # -- result_shape: a virtual dataset stacking the calls
    Case("shape_axis_first", row4, (X,), options=SHAPE4),
    Case("shape_axis_last", row4, (X,), options={"result_shape": (4, None)}),
    Case("shape_axis_middle", block23, (X,), options={"result_shape": (2, None, 3)}),
    Case("shape_rank3_first", block23, (X,), options={"result_shape": (None, 2, 3)}),
    Case("shape_scalar", scalar_float, (X,), options={"result_shape": (None,)}),
    Case("shape_inf_axis", ragged, (X,), options={"result_shape": (None, np.inf)}),
    Case("shape_dtype_int32", row3_mixed, (X,),
         options={"result_shape": (None, 3), "result_dtype": "int32"}),
    Case("shape_dtype_int32_exact", row4, (X,),
         options={"result_shape": (None, 4), "result_dtype": "int32"}),
    Case("shape_dtype_float32", row3_mixed, (X,),
         options={"result_shape": (None, 3), "result_dtype": "float32"}),
    Case("shape_several_values", row4_and_scalar, (X,), options=SHAPE4),
    # -- single_file
    Case("single_scalar", scalar_float, (X,), options={"single_file": True}),
    Case("single_several", several, (X,), options={"single_file": True}),
    Case("single_two_scalars", two_scalars, (X,), options={"single_file": True}),
    Case("single_shape", row4, (X,), options={"single_file": True, **SHAPE4}),
    Case("single_shape_last", row4, (X,),
         options={"single_file": True, "result_shape": (4, None)}),
    Case("single_shape_dtype", row3_mixed, (X,),
         options={"single_file": True, "result_shape": (None, 3), "result_dtype": "int32"}),
    Case("single_shape_several", row4_and_scalar, (X,),
         options={"single_file": True, **SHAPE4}),
    # -- write_pickle
    Case("pickle_scalar", scalar_float, (X,), options={"write_pickle": True}),
    Case("pickle_several", several, (X,), options={"write_pickle": True}),
    Case("pickle_array", arr_f32_2d, (X,), options={"write_pickle": True}),
    Case("pickle_shape", row4, (X,), options={"write_pickle": True, **SHAPE4}),
    # -- values HDF5 cannot hold: the pickle fallback
    Case("fallback_dict", gives_dict, (X,)),
    Case("fallback_none", gives_none, (X,)),
    Case("fallback_object", gives_object, (X,)),
    Case("fallback_one_call", dict_for_one, (X,)),
    # call 5: esi-acme names its pickle with "gives_dict_5.h5".rstrip(".h5") (DESIGN §2)
    Case("single_fallback_dict", gives_dict, (X,), options={"single_file": True}),
    Case("fallback_six_calls", gives_dict, (list(range(6)),)),
    # -- a failed call
    Case("fail_default", fails_at_2, (X,)),
    Case("fail_shape", row4_fails_at_2, (X,), options=SHAPE4),
    Case("fail_single", fails_at_2, (X,), options={"single_file": True}),
    Case("fail_memory", fails_at_2, (X,), options=MEMORY),
    Case("fail_pickle", fails_at_2, (X,), options={"write_pickle": True}),
    # -- esi-acme's known defects (DESIGN §2): shapes not checked, (1, N) arrays, no input
    Case("shape_mismatch", row4, (X,), options={"result_shape": (None, 5)}),
    Case("split_1xN_array", two_args, (np.arange(N).reshape(1, N), 3), options=MEMORY),
    Case("empty_input", scalar_float, ([],), options=MEMORY),
    # -- taskID and keyword splitting
    Case("task_id", with_task_id, (X,)),
    Case("task_id_memory", with_task_id, (X,), options=MEMORY),
    Case("kw_split_list", kw_split, (X,), {"y": [10, 20, 30, 40]}, options=MEMORY),
    Case("kw_default_list_kept", kw_default_list, (X,), {"y": [1, 2, 3, 4]},
         options=MEMORY),
    Case("kw_default_same_list_kept", kw_default_same_list, (X,), {"y": [1, 2, 3, 4]},
         options=MEMORY),
    Case("kw_array_split", kw_array, (X,), {"w": np.arange(N)}, options=MEMORY),
    Case("kw_default_array_kept", kw_default_array, (X,), {"w": np.arange(N)},
         options=MEMORY),
    Case("kw_positional_by_name", two_args, ([1, 2, 3, 4],), {"y": 4}, options=MEMORY),
    Case("n_inputs_explicit", two_args, (2, 3), options={"n_inputs": N, **MEMORY}),
    # -- in memory
    Case("memory_scalar", scalar_float, (X,), options=MEMORY),
    Case("memory_array", arr_i16_1d, (X,), options=MEMORY),
    Case("memory_several", several, (X,), options=MEMORY),
    Case("memory_two_scalars", two_scalars, (X,), options=MEMORY),
    Case("memory_shape", row4, (X,), options={**MEMORY, **SHAPE4}),
    Case("memory_shape_last", row4, (X,), options={**MEMORY, "result_shape": (4, None)}),
    Case("memory_shape_inf", ragged, (X,), options={**MEMORY, "result_shape": (None, np.inf)}),
    Case("memory_shape_dtype", row3_mixed, (X,),
         options={**MEMORY, "result_shape": (None, 3), "result_dtype": "int32"}),
    Case("memory_shape_several", row4_and_scalar, (X,), options={**MEMORY, **SHAPE4}),
    Case("memory_dict", gives_dict, (X,), options=MEMORY),
]

CASES_BY_NAME: dict[str, Case] = {case.name: case for case in CASES}
assert len(CASES_BY_NAME) == len(CASES), "case names must be unique"


def options_of(case: Case) -> dict[str, Any]:
    """The case's ParallelMap options (a copy, safe to extend)."""
    return dict(case.options)
