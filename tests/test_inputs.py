"""Input distribution (DESIGN.md section 2): how ParallelMap turns ``func, *args,
**kwargs`` into n calls, checked end to end through ``compute()`` with results in
memory, plus the attributes esi-acme scripts read after construction."""
from __future__ import annotations

import functools
import os
import re
import uuid

import numpy as np
import pytest

import acme
from acme import ArgumentMismatchError, ParallelMap

BOTH = ["sequential", "local"]

pytestmark = pytest.mark.timeout(60)


def run(func, *args, backend="sequential", **kwargs):
    """Results of ParallelMap(func, *args, **kwargs) in memory."""
    with ParallelMap(func, *args, write_worker_results=False, backend=backend,
                     **kwargs) as pmap:
        return pmap.compute()


# Module-level functions: they reach worker processes by reference.
def f(x, y):
    return x * y


def echo(x, y=None):
    """What the call received."""
    return x, y


def echo1(x):
    return x


def with_list_default(x, w=[0, 0, 0]):  # noqa: B006 - the default is the point
    return x, w


def with_tuple_default(x, w=(0, 0, 0)):
    return x, w


def with_array_default(x, a=np.zeros(3)):  # noqa: B008
    return x, a


def with_task_id(x, taskID=None):
    return x, taskID


def with_var_kwargs(x, **kw):
    return x, kw


def with_var_args(*args):
    return args


def impure(directory, x):
    """Leaves one file per call, whatever its arguments: counts real calls."""
    name = f"{os.getpid()}-{uuid.uuid4().hex}.call"
    with open(os.path.join(directory, name), "w") as fh:
        fh.write(repr(x))
    return np.random.random()


def calls_made(directory) -> int:
    return sum(1 for name in os.listdir(directory) if name.endswith(".call"))


# ------------------------------------------------------------ what is split
@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BOTH)
def test_list_is_split_and_scalar_broadcast(backend):
    assert run(f, [2, 4, 6, 8], 4, backend=backend) == [8, 16, 24, 32]


def test_tuple_is_split():
    assert run(echo, (1, 2, 3), "same") == [(1, "same"), (2, "same"), (3, "same")]


def test_one_dimensional_array_is_split_into_elements():
    data = np.array([1.5, 2.5, 3.5])
    out = run(echo1, data)
    assert len(out) == 3
    for value, expected in zip(out, data):
        assert np.ndim(value) == 0, "each call must get one element, not the array"
        assert value == expected


@pytest.mark.parametrize("shape", [(1, 4), (4, 1), (1, 4, 1)])
def test_row_and_column_arrays_are_split_element_wise(shape):
    data = np.arange(4).reshape(shape) * 10
    out = run(echo1, data)
    assert len(out) == 4
    assert all(np.ndim(v) == 0 for v in out), \
        f"a {shape} array must give every call one element, not the whole array: {out}"
    assert [int(v) for v in out] == [0, 10, 20, 30]


def test_range_is_split():
    assert run(echo1, range(3, 7)) == [3, 4, 5, 6]


def test_range_keyword_is_split():
    assert run(echo, 0, y=range(3)) == [(0, 0), (0, 1), (0, 2)]


@pytest.mark.parametrize("constant", [
    7, 2.5, "abc", {"a": 1, "b": 2, "c": 3}, {1, 2, 3}, None,
    np.arange(9).reshape(3, 3), np.arange(10).reshape(2, 5), np.array(5.0),
], ids=["int", "float", "str-of-len-3", "dict-of-len-3", "set-of-len-3", "None",
        "2d-3x3", "2d-2x5", "0d-array"])
@pytest.mark.parametrize("where", ["positional", "keyword"])
def test_everything_else_is_the_same_for_every_call(constant, where):
    """Scalars, strings, dicts, sets, None and 2-D arrays are broadcast, even when
    their length equals the number of calls (3 here)."""
    if where == "positional":
        out = run(echo, [1, 2, 3], constant)
    else:
        out = run(echo, [1, 2, 3], y=constant)
    assert [x for x, _ in out] == [1, 2, 3]
    for _, received in out:
        if isinstance(constant, np.ndarray):
            assert isinstance(received, np.ndarray)
            np.testing.assert_array_equal(received, constant)
        else:
            assert received == constant and type(received) is type(constant)


# ------------------------------------------------------- keywords and defaults
def test_keyword_list_with_default_list_of_same_length_is_broadcast():
    # x has 4 elements, w 3: were w counted, the lengths would be ambiguous
    out = run(with_list_default, [1, 2, 3, 4], w=[7, 8, 9])
    assert out == [(x, [7, 8, 9]) for x in [1, 2, 3, 4]]


def test_keyword_list_with_default_list_of_same_length_is_broadcast_even_if_n_matches():
    out = run(with_list_default, [1, 2, 3], w=[7, 8, 9])
    assert out == [(1, [7, 8, 9]), (2, [7, 8, 9]), (3, [7, 8, 9])]


def test_keyword_list_with_default_tuple_of_same_length_is_broadcast():
    out = run(with_tuple_default, [1, 2], w=[7, 8, 9])
    assert out == [(1, [7, 8, 9]), (2, [7, 8, 9])]


def test_keyword_list_with_default_list_of_other_length_is_split():
    out = run(with_list_default, [1, 2], w=[7, 8])
    assert out == [(1, 7), (2, 8)]


def test_keyword_list_with_non_list_default_is_split():
    assert run(echo, [1, 2, 3], y=[7, 8, 9]) == [(1, 7), (2, 8), (3, 9)]


def test_keyword_list_alone_decides_the_number_of_calls():
    assert run(echo, 0, y=(5, 6)) == [(0, 5), (0, 6)]


def test_keyword_without_parameter_default_in_var_kwargs_is_split():
    out = run(with_var_kwargs, [1, 2], z=["a", "b"])
    assert out == [(1, {"z": "a"}), (2, {"z": "b"})]


def test_ndarray_keyword_with_ndarray_default_is_broadcast():
    a = np.array([5.0, 6.0, 7.0])
    out = run(with_array_default, [1, 2, 3, 4], a=a)
    assert [x for x, _ in out] == [1, 2, 3, 4]
    for _, received in out:
        np.testing.assert_array_equal(received, a)


def test_ndarray_keyword_with_non_ndarray_default_is_split():
    out = run(echo, [1, 2, 3], y=np.array([[5.0, 6.0, 7.0]]))
    assert [(x, float(y)) for x, y in out] == [(1, 5.0), (2, 6.0), (3, 7.0)]
    assert all(np.ndim(y) == 0 for _, y in out)


def test_keyword_naming_a_positional_parameter_is_passed_through():
    assert run(f, [2, 4, 6, 8], y=4) == [8, 16, 24, 32]


def test_all_arguments_as_keywords():
    assert run(f, x=[2, 4, 6, 8], y=4) == [8, 16, 24, 32]


# ------------------------------------------------------------------ n_inputs
def test_ambiguous_lengths_raise_with_the_lengths_and_n_inputs():
    with pytest.raises(ValueError, match="n_inputs") as info:
        ParallelMap(f, [1, 2, 3, 4], [1, 2, 3, 4, 5, 6, 7], write_worker_results=False)
    message = str(info.value)
    assert re.search(r"\b4\b", message) and re.search(r"\b7\b", message), message


def test_ambiguous_lengths_in_keywords_raise():
    with pytest.raises(ValueError, match="n_inputs"):
        ParallelMap(echo, [1, 2], y=[1, 2, 3], write_worker_results=False)


def test_no_candidate_raises():
    with pytest.raises(ValueError, match="n_inputs"):
        ParallelMap(f, 2, 3, write_worker_results=False)


def test_no_candidate_only_broadcast_types_raises():
    with pytest.raises(ValueError, match="n_inputs"):
        ParallelMap(echo, "abc", y=np.ones((2, 2)), write_worker_results=False)


def test_explicit_n_inputs_matching_a_candidate():
    assert run(echo, [1, 2, 3], y=4, n_inputs=3) == [(1, 4), (2, 4), (3, 4)]


def test_explicit_n_inputs_resolves_ambiguity():
    """The candidate of matching length is split; the other is passed unchanged."""
    out = run(echo, [1, 2, 3], [9, 8, 7, 6, 5], n_inputs=3)
    assert out == [(1, [9, 8, 7, 6, 5]), (2, [9, 8, 7, 6, 5]), (3, [9, 8, 7, 6, 5])]


def test_explicit_n_inputs_not_matching_raises():
    with pytest.raises(ValueError, match="n_inputs") as info:
        ParallelMap(echo, [1, 2, 3], n_inputs=5, write_worker_results=False)
    assert re.search(r"\b5\b", str(info.value)) and re.search(r"\b3\b", str(info.value))


def test_explicit_n_inputs_with_all_candidates_of_length_one():
    out = run(echo, [7], y=(8,), n_inputs=3)
    assert out == [([7], (8,))] * 3


def test_explicit_n_inputs_without_candidates_repeats_the_call():
    """``f(2, 3, n_inputs=4)`` calls f four times with the same arguments."""
    assert run(f, 2, 3, n_inputs=4) == [6, 6, 6, 6]


@pytest.mark.parametrize("empty", [[], (), np.array([]), range(0)],
                         ids=["list", "tuple", "array", "range"])
def test_empty_inputs_raise_at_construction(empty):
    with pytest.raises(ValueError, match="empty|0 calls"):
        ParallelMap(echo, empty, y=1, write_worker_results=False)


def test_empty_keyword_input_raises_at_construction():
    with pytest.raises(ValueError, match="empty|0 calls"):
        ParallelMap(echo, 1, y=[], write_worker_results=False)


# ------------------------------------------------------ signature checking
@pytest.mark.parametrize("args, kwargs", [
    (([1, 2],), {}),                      # too few
    (([1, 2], 3, 4), {}),                 # too many
    (([1, 2], 3), {"z": 5}),              # unknown keyword
    (([1, 2],), {"x": 3}),                # x given twice
], ids=["too-few", "too-many", "unknown-keyword", "duplicate"])
def test_argument_mismatch_names_function_and_parameters(args, kwargs):
    with pytest.raises(ArgumentMismatchError) as info:
        ParallelMap(f, *args, write_worker_results=False, **kwargs)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, TypeError)
    message = str(err)
    assert "f(" in message or "'f'" in message or " f " in message, message
    assert "x" in message and "y" in message, message


def test_argument_mismatch_is_caught_as_valueerror_and_typeerror():
    with pytest.raises(ValueError):
        ParallelMap(f, [1, 2], write_worker_results=False)
    with pytest.raises(TypeError):
        ParallelMap(f, [1, 2], write_worker_results=False)
    assert acme.ArgumentMismatchError is ArgumentMismatchError


def test_argument_mismatch_is_raised_before_anything_runs(tmp_path):
    with pytest.raises(ArgumentMismatchError):
        ParallelMap(impure, str(tmp_path), [1, 2], 3, write_worker_results=False)
    assert calls_made(tmp_path) == 0


def test_var_args_function_accepts_any_number():
    assert run(with_var_args, [1, 2], 3, 4) == [(1, 3, 4), (2, 3, 4)]


def test_builtin_function():
    assert run(abs, [-1, -2, 3]) == [1, 2, 3]


def test_partial_function():
    assert run(functools.partial(f, y=10), [1, 2]) == [10, 20]


# ------------------------------------------------------------------- taskID
@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BOTH)
def test_task_id_is_injected(backend):
    out = run(with_task_id, ["a", "b", "c", "d", "e"], backend=backend)
    assert out == [("a", 0), ("b", 1), ("c", 2), ("d", 3), ("e", 4)]


def test_task_id_injected_with_n_inputs_and_no_candidates():
    assert run(with_task_id, "same", n_inputs=3) == [("same", 0), ("same", 1), ("same", 2)]


def test_task_id_not_injected_into_var_kwargs():
    """Only a function with a parameter named taskID gets one."""
    assert run(with_var_kwargs, [1, 2]) == [(1, {}), (2, {})]


# ------------------------------------------------------ every call runs
@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BOTH)
def test_identical_calls_all_run(backend, tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    out = run(impure, str(calls), 1, n_inputs=6, backend=backend)
    assert len(out) == 6
    assert calls_made(calls) == 6, "identical calls must not be de-duplicated"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BOTH)
def test_identical_list_elements_all_run(backend, tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    out = run(impure, str(calls), [1, 1, 1, 1, 1], backend=backend)
    assert len(out) == 5
    assert calls_made(calls) == 5


# ------------------------------------------------------------- attributes
def test_attributes_after_construction():
    pmap = ParallelMap(f, [2, 4, 6, 8], 4, write_worker_results=False)
    assert pmap.func is f
    assert pmap.n_inputs == 4
    assert pmap.argv == [[2, 4, 6, 8], [4]]
    assert pmap.kwargv == {}
    assert pmap.objName == "<ParallelMap>"
    assert ParallelMap.objName == "<ParallelMap>"


def test_attributes_with_keywords_and_arrays():
    pmap = ParallelMap(echo, np.array([[1, 2, 3]]), y="c", write_worker_results=False)
    assert pmap.n_inputs == 3
    assert len(pmap.argv) == 1 and [int(v) for v in pmap.argv[0]] == [1, 2, 3]
    assert pmap.kwargv == {"y": ["c"]}


def test_attributes_with_split_keyword():
    pmap = ParallelMap(echo, 0, y=[5, 6], write_worker_results=False)
    assert pmap.n_inputs == 2
    assert pmap.argv == [[0]]
    assert pmap.kwargv == {"y": [5, 6]}


def test_attributes_with_explicit_n_inputs():
    pmap = ParallelMap(f, 2, 3, n_inputs=4, write_worker_results=False)
    assert pmap.n_inputs == 4
    assert pmap.argv == [[2], [3]]
