"""Hostile and careless input (issue 6): property-based tests (hypothesis) over argument
structures, result shapes and dtypes and every parameter; functions and results that
cannot be pickled; an output folder that cannot be written; and a disk that fills up
while results are written (for real, on a small tmpfs)."""
from __future__ import annotations

import inspect
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import acme
from acme import ParallelMap, ParallelMapError

from conftest import require
from disk_helpers import assert_no_tmp

pytestmark = pytest.mark.timeout(120)

SETTINGS = settings(max_examples=40, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
EMPTY = inspect.Parameter.empty


# ================================================================== argument structures
def target(a, b=0, c=None, d=(7, 8, 9), e=np.arange(2)):
    return (a, b, c, d, e)


def target_with_task_id(a, b=0, c=None, d=(7, 8, 9), e=np.arange(2), taskID=None):
    return (a, b, c, d, e, taskID)


scalars = st.one_of(st.integers(-5, 5), st.floats(-10, 10, width=32), st.text(max_size=3),
                    st.none(), st.booleans())


def _array(spec):
    kind, k, m = spec
    shape = {"1d": (k,), "row": (1, k), "col": (k, 1), "2d": (k, m), "0d": (),
             "one": (1,), "oneone": (1, 1)}[kind]
    return np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape) * 3 - 2


arrays = st.tuples(st.sampled_from(["1d", "row", "col", "2d", "0d", "one", "oneone"]),
                   st.integers(0, 5), st.integers(2, 4)).map(_array)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=5),
    st.lists(scalars, max_size=5).map(tuple),
    st.integers(0, 5).map(range),
    arrays,
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.sets(st.integers(0, 9), max_size=3),
)


def _split_length(value, default=EMPTY):
    """The documented rule: lists/tuples split (keywords: unless their default is a
    list/tuple of the same length); arrays split if 1-D after squeezing (keywords:
    unless their default is an array)."""
    if isinstance(value, (list, tuple)):
        if isinstance(default, (list, tuple)) and len(default) == len(value):
            return None
        return len(value)
    if isinstance(value, np.ndarray) and not isinstance(default, np.ndarray):
        squeezed = value.squeeze()
        return squeezed.size if squeezed.ndim == 1 else None
    return None


def _one_element(value, default=EMPTY):
    """An array of one element (shape (1,), (1, 1), ...): one call when no other
    argument says how many."""
    return (isinstance(value, np.ndarray) and not isinstance(default, np.ndarray)
            and value.ndim >= 1 and value.size == 1)


def expected_calls(func, args, kwargs, n_inputs):
    """What ParallelMap must do, worked out from the documented rules and by calling
    ``func`` directly: a list of return values, or None if it must refuse."""
    if n_inputs != "auto" and (isinstance(n_inputs, bool) or not isinstance(n_inputs, int)
                               or n_inputs < 1):
        return None
    args = [list(a) if isinstance(a, range) else a for a in args]
    kwargs = {k: list(v) if isinstance(v, range) else v for k, v in kwargs.items()}
    params = inspect.signature(func).parameters
    pos_len = [_split_length(a) for a in args]
    kw_len = {k: _split_length(v, params[k].default if k in params else EMPTY)
              for k, v in kwargs.items()}
    candidates = [n for n in pos_len + list(kw_len.values()) if n is not None]
    if n_inputs == "auto" and not candidates:  # only one-element arrays: one call
        pos_len = [1 if _one_element(a) else None for a in args]
        kw_len = {k: 1 if _one_element(v, params[k].default if k in params else EMPTY)
                  else None for k, v in kwargs.items()}
        candidates = [n for n in pos_len + list(kw_len.values()) if n is not None]
    if n_inputs == "auto":
        if len(set(candidates)) != 1:
            return None
        n = candidates[0]
    else:
        n = n_inputs
        if candidates and n not in candidates and set(candidates) != {1}:
            return None
    if n == 0:
        return None

    def pick(value, length, i):
        if length != n:
            return value
        if isinstance(value, np.ndarray):
            return value.reshape(-1)[i] if value.size == 1 else value.squeeze()[i]
        return value[i]

    results = []
    for i in range(n):
        call_args = [pick(a, k, i) for a, k in zip(args, pos_len)]
        call_kwargs = {key: pick(v, kw_len[key], i) for key, v in kwargs.items()}
        if "taskID" in params and "taskID" not in kwargs:
            call_kwargs["taskID"] = i
        try:
            results.append(func(*call_args, **call_kwargs))
        except TypeError:  # the function cannot be called with these arguments
            return None
    return results


@SETTINGS
@given(func=st.sampled_from([target, target_with_task_id]),
       args=st.lists(values, max_size=6),
       kwargs=st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e", "taskID", "zz"]),
                              values, max_size=3),
       n_inputs=st.one_of(st.just("auto"), st.just("auto"), st.integers(-1, 6)))
@example(func=target, args=[[2, 4, 6, 8], 4], kwargs={}, n_inputs="auto")
@example(func=target, args=[2, 3], kwargs={}, n_inputs=4)
@example(func=target, args=[[2, 4, 6, 8]], kwargs={"b": 4}, n_inputs="auto")
@example(func=target, args=[], kwargs={"a": [1, 2], "d": [0, 1, 2]}, n_inputs="auto")
@example(func=target, args=[np.arange(3).reshape(1, 3)], kwargs={"e": np.arange(5)},
         n_inputs="auto")
@example(func=target_with_task_id, args=[[5, 6, 7]], kwargs={}, n_inputs="auto")
@example(func=target, args=[[]], kwargs={}, n_inputs="auto")
@example(func=target, args=[[1, 2], [1, 2, 3]], kwargs={}, n_inputs="auto")
def test_argument_structures_are_distributed_by_the_documented_rules(
        func, args, kwargs, n_inputs):
    expected = expected_calls(func, args, kwargs, n_inputs)
    if expected is None:
        with pytest.raises((TypeError, ValueError)):
            ParallelMap(func, *args, n_inputs=n_inputs, write_worker_results=False,
                        backend="sequential", verbose=False, **kwargs)
        return
    with ParallelMap(func, *args, n_inputs=n_inputs, write_worker_results=False,
                     backend="sequential", verbose=False, **kwargs) as pmap:
        assert pmap.n_inputs == len(expected)
        results = pmap.compute()
    assert len(results) == len(expected)
    for i, (got, want) in enumerate(zip(results, expected)):
        np.testing.assert_equal(got, want, err_msg=f"call {i}")


# ================================================================== result_shape / dtype
VALID_DTYPES = ["float", "int", float, int, np.float64, "float32", "float16", "int8",
                "int16", "int32", "int64", "uint8", "uint16", "uint64", "bool",
                "complex64", "complex128", ">f8", "<i4", "S4"]


def _value(call_shape, i, dtype):
    return np.full(call_shape, i + 1, dtype=np.dtype(dtype))


@st.composite
def shapes_and_dtypes(draw, allow_inf):
    call_shape = draw(st.lists(st.integers(0, 3), max_size=3))
    axis = draw(st.integers(0, len(call_shape)))
    inf_axis = None
    if allow_inf and call_shape and draw(st.booleans()):
        inf_axis = draw(st.integers(0, len(call_shape) - 1))
    result_shape = [np.inf if k == inf_axis else e for k, e in enumerate(call_shape)]
    result_shape.insert(axis, None)
    as_list = draw(st.booleans())
    return (call_shape, axis, inf_axis,
            list(result_shape) if as_list else tuple(result_shape),
            draw(st.sampled_from(VALID_DTYPES)), draw(st.integers(1, 4)))


def shaped(x, how):
    """Call x's value: ``how["shape"]``, with length x+1 along the axis ``how["inf"]``
    (``how`` is a dict so that it goes unchanged to every call)."""
    shape = list(how["shape"])
    if how["inf"] is not None:
        shape[how["inf"]] = x + 1
    return _value(tuple(shape), x, how["dtype"])


def expected_stack(call_shape, axis, inf_axis, dtype, n):
    dtype = np.dtype(dtype)
    shape = list(call_shape)
    if inf_axis is not None:
        shape[inf_axis] = n
    # where a call has no value (np.inf padding): NaN, 0, or all bytes zero (b"")
    fill = np.nan if dtype.kind in "fc" else (b"" if dtype.kind == "S" else 0)
    out = np.full([n] + shape, fill, dtype=dtype)
    for i in range(n):
        value = shaped(i, {"shape": call_shape, "inf": inf_axis, "dtype": dtype})
        out[(i,) + tuple(slice(0, s) for s in value.shape)] = value
    return np.moveaxis(out, 0, axis)


@SETTINGS
@given(spec=shapes_and_dtypes(allow_inf=False))
def test_valid_result_shapes_and_dtypes_work_in_memory(spec):
    call_shape, axis, _, result_shape, dtype, n = spec
    how = {"shape": call_shape, "inf": None, "dtype": dtype}
    with ParallelMap(shaped, list(range(n)), how, write_worker_results=False, result_shape=result_shape,
                     result_dtype=dtype, backend="sequential", verbose=False) as pmap:
        out = pmap.compute()
    want = expected_stack(call_shape, axis, None, dtype, n)
    assert isinstance(out, np.ndarray) and out.dtype == np.dtype(dtype)
    assert out.shape == want.shape
    np.testing.assert_array_equal(out, want)


@SETTINGS
@given(spec=shapes_and_dtypes(allow_inf=True), single_file=st.booleans())
@example(spec=([2], 0, None, (None, 2), "complex64", 2), single_file=False)
@example(spec=([2], 0, None, (None, 2), "S4", 2), single_file=False)
@example(spec=([2], 0, 0, (None, np.inf), "complex128", 3), single_file=True)
def test_valid_result_shapes_and_dtypes_work_on_disk(spec, single_file):
    call_shape, axis, inf_axis, result_shape, dtype, n = spec
    folder = tempfile.mkdtemp(prefix="acme_shapes_")
    try:
        out = os.path.join(folder, "out")
        how = {"shape": call_shape, "inf": inf_axis, "dtype": dtype}
        with ParallelMap(shaped, list(range(n)), how, output_dir=out, result_shape=result_shape,
                         result_dtype=dtype, single_file=single_file, backend="sequential",
                         verbose=False, logfile=False) as pmap:
            pmap.compute()
        with h5py.File(os.path.join(out, "shaped.h5"), "r") as h5f:  # as esi-acme users do
            got = h5f["result_0"][()]
        want = expected_stack(call_shape, axis, inf_axis, dtype, n)
        assert got.dtype == np.dtype(dtype) and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        assert_no_tmp(out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("single_file", [False, True])
@pytest.mark.parametrize("result_shape", [(None, 0), (0, None), (None, 2, 0)])
def test_zero_length_results_are_stored_and_read_back(result_shape, single_file, tmp_path):
    how = {"shape": [e for e in result_shape if e is not None], "inf": None,
           "dtype": "float"}
    with ParallelMap(shaped, [0, 1, 2], how, output_dir=str(tmp_path / "out"),
                     result_shape=result_shape, single_file=single_file,
                     backend="sequential", verbose=False) as pmap:
        pmap.compute()
    want = expected_stack(how["shape"], result_shape.index(None), None, "float", 3)
    with h5py.File(tmp_path / "out" / "shaped.h5", "r") as h5f:
        assert h5f["result_0"].shape == want.shape
    got = acme.load_stacked(str(tmp_path / "out"))
    assert got.shape == want.shape and got.dtype == want.dtype


@pytest.mark.timeout(90)
@pytest.mark.parametrize("dtype", ["float32", "complex64", "S4"])
def test_valid_result_dtypes_work_in_the_parallel_single_file_under_mpi(dtype, tmp_path):
    from mpi_helpers import require_parallel_h5py, run_mpi
    require_parallel_h5py()
    proc = run_mpi("hostile.py", 3, "single_file_dtype", dtype, str(tmp_path / "out"),
                   timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "h5py was built without MPI" not in proc.stderr
    got = json.loads(re.search(r"STACKED (\{.*\})", proc.stdout).group(1))
    want = np.stack([_value((2,), i, dtype) for i in range(3)])
    assert got == {"dtype": want.dtype.str,
                   "values": [[str(v) for v in row] for row in want]}


def names(parameter: str, exc: BaseException) -> bool:
    return re.search(rf"(?<![A-Za-z_]){re.escape(parameter)}(?![A-Za-z_])",
                     str(exc)) is not None


def _two_nones(shape):
    return tuple(shape) + (None, None)


bad_entries = st.one_of(st.integers(max_value=-1), st.integers(min_value=2 ** 63),
                        st.floats(allow_nan=True).filter(
                            lambda v: math.isnan(v) or (not math.isinf(v)
                                                        and (v < 0 or v != int(v)))),
                        st.text(max_size=2), st.booleans(), st.lists(st.integers(), max_size=1))
bad_shapes = st.one_of(
    # not a tuple/list at all
    st.one_of(st.integers(), st.floats(), st.text(max_size=4), st.sets(st.integers(), max_size=2),
              st.dictionaries(st.text(max_size=1), st.integers(), max_size=1)),
    # no None, or more than one
    st.lists(st.integers(0, 4), max_size=3).map(tuple),
    st.lists(st.integers(0, 4), max_size=2).map(_two_nones),
    # a bad entry next to the stacking axis
    st.tuples(st.integers(0, 3), bad_entries).map(lambda t: (None, t[0], t[1])),
    # more than one np.inf
    st.just((None, np.inf, np.inf)),
)


@SETTINGS
@given(result_shape=bad_shapes)
@example(result_shape=(None, float("nan")))
@example(result_shape=(None, 2 ** 70))
@example(result_shape=(None, 1e300))
@example(result_shape="(None, 3)")
@example(result_shape=(None, 2.5))
def test_invalid_result_shapes_are_refused_naming_result_shape(result_shape):
    with pytest.raises((TypeError, ValueError)) as info:
        ParallelMap(shaped, [0, 1], {"shape": (2,), "inf": None, "dtype": "float"},
                    result_shape=result_shape, verbose=False)
    assert names("result_shape", info.value), repr(info.value)


def _not_a_dtype(text):
    try:
        np.dtype(text)
    except Exception:
        return True
    return False


bad_dtypes = st.one_of(st.text(max_size=6), st.integers(), st.floats(),
                       st.dictionaries(st.text(max_size=1), st.integers(), max_size=1),
                       st.lists(st.integers(), max_size=2)).filter(_not_a_dtype)
object_dtypes = st.sampled_from(["object", object, "O", np.dtype([("a", "O")])])


@SETTINGS
@given(case=st.one_of(st.tuples(bad_dtypes, st.booleans()),
                      st.tuples(object_dtypes, st.just(True))))
@example(case=("01", False))  # numpy raises SyntaxError for this one
@example(case=("0{", True))  # ... and ValueError for this one
@example(case=("notatype", True))
def test_invalid_result_dtypes_are_refused_naming_result_dtype(case):
    """Not a numpy dtype at all (with or without result_shape), or one holding Python
    objects where results are stacked (with result_shape)."""
    dtype, with_shape = case
    with pytest.raises((TypeError, ValueError)) as info:
        ParallelMap(shaped, [0, 1], {"shape": (2,), "inf": None, "dtype": "float"},
                    verbose=False, result_shape=(None, 2) if with_shape else None,
                    result_dtype=dtype)
    assert names("result_dtype", info.value), repr(info.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dtype", ["U5", "datetime64[s]", "timedelta64[ms]"])
def test_a_result_dtype_hdf5_cannot_hold_is_refused_or_works_on_disk(dtype, tmp_path):
    """numpy knows these dtypes, HDF5 does not: with results on disk either refuse them
    up front (naming result_dtype) or store them so they read back."""
    out = tmp_path / "out"
    try:
        pmap = ParallelMap(_value, [(2,)] * 3, list(range(3)), dtype, output_dir=str(out),
                           result_shape=(None, 2), result_dtype=dtype,
                           backend="sequential", verbose=False)
    except (TypeError, ValueError) as exc:
        assert names("result_dtype", exc), repr(exc)
        assert not out.exists(), "refused, but the output folder was created"
        return
    with pmap:
        pmap.compute()
    got = acme.load_stacked(str(out))
    np.testing.assert_array_equal(got, np.stack([_value((2,), i, dtype) for i in range(3)]))


# ================================================================== every other parameter
def square(x):
    return x * x


not_bool = st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=5),
                     st.none(), st.lists(st.booleans(), max_size=2))
not_bool_or_none = st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=5),
                             st.lists(st.booleans(), max_size=2))
not_count = st.one_of(st.floats(), st.text(max_size=5).filter(lambda s: s != "auto"),
                      st.integers(max_value=0), st.booleans(), st.none(),
                      st.lists(st.integers(), max_size=2))
not_seconds = st.one_of(st.text(max_size=5), st.booleans(), st.lists(st.integers(), max_size=2),
                        st.floats(max_value=0), st.integers(max_value=0), st.just(float("nan")),
                        st.just(complex(1, 1)))
blank = st.text(alphabet=" \t\n", max_size=3)
no_memory_letters = st.text(alphabet="acdefhjlnopqrsuvwxyz!?,;-_ ", min_size=1, max_size=5)

WRONG = {
    "n_inputs": not_count,
    "write_worker_results": not_bool,
    "output_dir": st.one_of(st.integers(), st.floats(), st.booleans(),
                            st.lists(st.text(max_size=2), max_size=2), blank),
    "single_file": not_bool,
    "write_pickle": not_bool,
    "partition": st.one_of(st.integers(), st.floats(), st.none(), st.booleans(), blank,
                           st.lists(st.text(max_size=2), max_size=2)),
    "n_workers": not_count,
    "mem_per_worker": st.one_of(st.integers(), st.floats(), st.none(), st.booleans(),
                                no_memory_letters,
                                st.sampled_from(["", "4XB", "-4GB", "0GB", "0", "GB",
                                                 "4 G B", "1e3MB", "4,5GB", "NaN", "inf"])),
    "setup_timeout": st.one_of(not_seconds, st.none()),
    "setup_interactive": not_bool,
    "stop_client": st.one_of(st.integers(), st.floats(), st.none(), st.lists(st.booleans()),
                             st.text(max_size=5).filter(lambda s: s != "auto")),
    "verbose": not_bool_or_none,
    "dryrun": not_bool,
    "logfile": st.one_of(st.integers(), st.floats(), st.lists(st.text(max_size=2), max_size=2),
                         blank, st.just(".")),
    "backend": st.one_of(st.integers(), st.none(), st.booleans(),
                         st.text(max_size=8).filter(lambda s: s not in (
                             "auto", "local", "sequential", "mpi", "slurm"))),
    "timeout": not_seconds,
    "resume": not_bool,
}


@settings(SETTINGS, max_examples=50)
@given(case=st.sampled_from(sorted(WRONG)).flatmap(
    lambda name: st.tuples(st.just(name), WRONG[name])))
def test_every_parameter_refuses_wrong_types_and_values_naming_it(case, in_tmp_path):
    name, value = case
    before = set(os.listdir(in_tmp_path))
    with pytest.raises((TypeError, ValueError)) as info:
        ParallelMap(square, [1, 2, 3], **{name: value})
    assert names(name, info.value), f"{name}={value!r}: {info.value!r}"
    assert set(os.listdir(in_tmp_path)) == before, "a refused ParallelMap created files"


@pytest.mark.parametrize("name", ["output_dir", "logfile"])
def test_a_path_with_a_nul_byte_is_refused_at_construction(name, in_tmp_path):
    with pytest.raises((TypeError, ValueError)) as info:
        ParallelMap(square, [1, 2, 3], **{name: "res\0ults"})
    assert names(name, info.value), repr(info.value)
    assert not os.listdir(in_tmp_path)


# ================================================================== pickling
def make_closure():
    lock = threading.Lock()

    def uses_lock(x):
        with lock:
            return x
    return uses_lock


def touch_and_square(x, markers, extra=None):
    Path(markers, str(x)).touch()
    return x * x


def returns_a_lock(x):
    return threading.Lock() if x == 2 else np.full(2, x)


@pytest.mark.timeout(60)
def test_a_function_that_cannot_be_pickled_without_cloudpickle_is_a_type_error(
        monkeypatch, tmp_path, no_leftover_processes):
    monkeypatch.setitem(sys.modules, "cloudpickle", None)  # import cloudpickle fails
    out = tmp_path / "out"
    with pytest.raises(TypeError) as info:
        ParallelMap(lambda x: x + 1, [1, 2, 3], output_dir=str(out), backend="local")
    message = str(info.value)
    assert "'<lambda>'" in message and "cannot be sent to worker processes" in message
    assert "cloudpickle" in message, message
    assert not out.exists()
    # a constant argument that cannot travel: refused before any call runs
    markers = tmp_path / "markers"
    markers.mkdir()
    with pytest.raises(TypeError, match="argument 'extra' of touch_and_square cannot be "
                       "sent to worker processes"):
        with ParallelMap(touch_and_square, [1, 2, 3], str(markers), extra=lambda: None,
                         output_dir=str(out), backend="local", n_workers=2,
                         verbose=False) as pmap:
            pmap.compute()
    assert not os.listdir(markers), "calls ran although an argument cannot be sent"
    assert not list(out.rglob("*.h5")), "result files written although nothing should run"
    # in this process nothing needs pickling
    with ParallelMap(lambda x: x + 1, [1, 2, 3], write_worker_results=False,
                     backend="sequential", verbose=False) as pmap:
        assert pmap.compute() == [2, 3, 4]


@pytest.mark.timeout(60)
def test_a_function_that_not_even_cloudpickle_can_send_is_a_type_error():
    pytest.importorskip("cloudpickle")
    with pytest.raises(TypeError) as info:
        ParallelMap(make_closure(), [1, 2, 3], backend="local")
    message = str(info.value)
    assert "uses_lock" in message and "neither with pickle" in message, message
    assert "cloudpickle" in message and "lock" in message, message


@pytest.mark.timeout(60)
def test_a_result_that_cannot_be_pickled_fails_only_its_call_in_memory(no_leftover_processes):
    with pytest.raises(ParallelMapError) as info:
        with ParallelMap(returns_a_lock, list(range(6)), write_worker_results=False,
                         backend="local", n_workers=2, verbose=False) as pmap:
            pmap.compute()
    err = info.value
    assert err.failed == [2]
    assert isinstance(err.__cause__, TypeError)
    message = str(err.__cause__)
    assert "return value of call 2 cannot be sent back to the main process" in message
    assert "_thread.lock" in message, message
    for i in (0, 1, 3, 4, 5):
        np.testing.assert_array_equal(err.results[i], np.full(2, i))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("single_file", [False, True])
def test_a_result_that_can_be_neither_stored_nor_pickled_fails_only_its_call_on_disk(
        tmp_path, single_file, no_leftover_processes):
    out = tmp_path / "out"
    with pytest.raises(ParallelMapError) as info:
        with ParallelMap(returns_a_lock, list(range(6)), output_dir=str(out), backend="local",
                         single_file=single_file, n_workers=2, verbose=False) as pmap:
            pmap.compute()
    err = info.value
    assert err.failed == [2]
    message = str(err.__cause__)
    assert "call 2" in message and "return value" in message, message
    assert "pickle" in message and "_thread.lock" in message, message
    assert not list(out.rglob("*_2.pickle")) and not list(out.rglob("*_2.h5"))
    assert_no_tmp(out)
    for i in (0, 1, 3, 4, 5):
        np.testing.assert_array_equal(acme.load_call(str(out), i)[0], np.full(2, i))


# ================================================================== unwritable output
@pytest.fixture
def tmpfs(tmp_path):
    """Mount small tmpfs file systems (``mount(options)`` -> path); unmounted after."""
    mounted = []

    def mount(options: str) -> Path:
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                              capture_output=True, text=True, timeout=30)
        require(proc.returncode == 0, f"cannot mount a tmpfs ({proc.stderr.strip()}); "
                "these tests need root")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        proc = subprocess.run(["umount", str(target)], capture_output=True, timeout=30)
        if proc.returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["under_a_file", "read_only_new", "read_only_existing",
                                   "read_only_logfile"])
def test_an_output_folder_that_cannot_be_written_is_an_os_error_before_any_call(
        where, tmp_path, tmpfs, no_leftover_processes):
    markers = tmp_path / "markers"
    markers.mkdir()
    extra = {}
    if where == "under_a_file":
        (tmp_path / "a_file").write_text("x")
        out = tmp_path / "a_file" / "sub"
    else:
        ro = tmpfs("size=1m,ro")
        out = {"read_only_new": ro / "out", "read_only_existing": ro}.get(where)
        if where == "read_only_logfile":
            out = tmp_path / "out"
            extra = {"logfile": str(ro / "run.log")}
    with pytest.raises(OSError) as info:
        with ParallelMap(touch_and_square, [1, 2, 3], str(markers), output_dir=str(out),
                         backend="local", n_workers=2, verbose=False, **extra) as pmap:
            pmap.compute()
    message = str(info.value)
    shown = extra.get("logfile", str(out))
    assert shown in message or str(out) in message, message
    expected = "Not a directory" if where == "under_a_file" else "Read-only file system"
    assert expected in message, message
    assert not os.listdir(markers), "calls ran although the results cannot be written"


# ================================================================== full disk
def big_row(x, fill, size):
    """``size`` floats per call; call 4 first fills the file system (the file
    ``fill["target"]``, while the file ``fill["flag"]`` exists), as another job
    writing to the same disk would."""
    if fill and x == 4 and os.path.exists(fill["flag"]):
        with open(fill["target"], "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
    time.sleep(0.02)
    return np.full(size, float(x))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["results_exceed_space", "disk_filled_during_run"])
def test_a_full_disk_ends_with_a_clear_error_and_no_corrupt_file(
        how, tmpfs, tmp_path, no_leftover_processes):
    disk = tmpfs("size=2m")
    out = disk / "out"
    n = 30
    fill = {}
    if how == "disk_filled_during_run":
        fill = {"target": str(disk / "filler"), "flag": str(tmp_path / "fill.flag")}
        Path(fill["flag"]).touch()
    # 30 x 160 kB do not fit into 2 MB; 30 x 16 kB do (once the filler is gone)
    size = 2_000 if fill else 20_000

    def run(resume=False):
        with ParallelMap(big_row, list(range(n)), fill, size, output_dir=str(out),
                         backend="local", n_workers=2, verbose=False,
                         resume=resume) as pmap:
            pmap.compute()
        return pmap

    with pytest.raises(Exception) as info:
        run()
    err = info.value
    assert isinstance(err, ParallelMapError), \
        f"not a ParallelMapError naming the calls: {type(err).__name__}: {err}"
    assert "No space left on device" in str(err), str(err)

    payload_dir = out / "big_row_payload"
    done = {int(p.stem.rsplit("_", 1)[1]) for p in payload_dir.glob("big_row_*.h5")}
    assert 0 < len(done) < n, sorted(done)
    assert set(err.failed) == set(range(n)) - done, (sorted(err.failed), sorted(done), sorted(os.listdir(payload_dir)))
    for i in err.failed:
        assert "No space left on device" in err.errors[i].summary, err.errors[i].summary
    for i in done:  # nothing half-written: every result file opens and is right
        with h5py.File(payload_dir / f"big_row_{i}.h5", "r") as h5f:
            np.testing.assert_array_equal(h5f["result_0"][()], np.full(size, float(i)))
    container = out / "big_row.h5"
    if container.exists():
        with h5py.File(container, "r") as h5f:
            # every call has its comp_i (esi-acme's layout); those of calls without a
            # result dangle
            linked = {int(k.split("_")[1]) for k in h5f
                      if k.startswith("comp_") and h5f.get(k) is not None}
            assert linked == done
    assert_no_tmp(out)
    assert not [p for p in payload_dir.iterdir() if not p.name.endswith(".h5")]

    if fill:  # with space again, a resume computes exactly what could not be written
        os.remove(fill["target"])
        os.remove(fill["flag"])
        pmap = run(resume=True)
        assert pmap.stats["ran"] == n - len(done)
        with h5py.File(container, "r") as h5f:
            assert sorted(int(k.split("_")[1]) for k in h5f if k.startswith("comp_")) == \
                list(range(n))
            for i in range(n):
                np.testing.assert_array_equal(h5f[f"comp_{i}/result_0"][()],
                                              np.full(size, float(i)))
        assert_no_tmp(out)
