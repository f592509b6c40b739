"""One contract every backend passes: results in input order, result_shape stacking,
per-call failures reported by one ParallelMapError, and (for backends that run calls
in other processes) remote tracebacks, worker death, timeouts and pickling limits.

The contract tests are parametrized over ``acme.backends.registered_backends()``, so
a new backend is tested as soon as it is registered.
"""
from __future__ import annotations

import os
import pickle
import re
import signal
import socket
import sys
import threading
import time
import traceback

import numpy as np
import pytest

import acme
from acme import ParallelMap, ParallelMapError
from acme.backends import get_backend, registered_backends

#: Backends that run calls in the calling process (no pickling, real tracebacks).
IN_PROCESS = {"sequential"}
#: Backends that need a launcher or a cluster around the calling process: the MPI
#: backend runs only on rank 0 of ``python -m acme.mpi_run`` and SLURM submits jobs;
#: test_mpi.py and test_slurm.py run the same behaviours through them in subprocesses.
LAUNCHED = {"mpi", "slurm"}
BACKENDS = [name for name in registered_backends() if name not in LAUNCHED]
OUT_OF_PROCESS = [name for name in BACKENDS if name not in IN_PROCESS]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=BACKENDS)
def backend(request, no_leftover_processes):
    name = request.param
    if not get_backend(name).is_available():
        # e.g. an MPI backend outside an MPI job: it has its own subprocess tests
        pytest.skip(f"backend {name!r} is not available in this pytest process "
                    "(is_available() is False); it has its own subprocess tests")
    return name


@pytest.fixture(params=OUT_OF_PROCESS)
def remote_backend(request, no_leftover_processes):
    name = request.param
    if not get_backend(name).is_available():
        pytest.skip(f"backend {name!r} is not available in this pytest process "
                    "(is_available() is False); it has its own subprocess tests")
    return name


def run(func, *args, backend, **kwargs):
    with ParallelMap(func, *args, write_worker_results=False, backend=backend,
                     **kwargs) as pmap:
        return pmap.compute()


def compute_error(func, *args, backend, **kwargs) -> ParallelMapError:
    with pytest.raises(ParallelMapError) as info:
        run(func, *args, backend=backend, **kwargs)
    return info.value


def word(n) -> str:
    return rf"(?<![\d.]){n}(?![\d.])"


# ------------------------------------------------------- the user functions
def square(x):
    return x * x


def sleepy_identity(x, n):
    time.sleep(0.02 * (n - x))  # later calls finish first
    return x


def vector(x, length=3):
    return np.full(length, x, dtype=float)


def int_vector(x):
    return np.arange(3, dtype=np.int64) + x


def wrong_length_at_2(x):
    return np.zeros(4 if x == 2 else 3) + x


def fail_on(x, bad):
    if x in bad:
        raise ValueError(f"bad input {x}")
    return x * 10


def fail_with_types(x):
    if x == 2:
        raise KeyError("key-two")
    if x == 5:
        raise ZeroDivisionError("zero-five")
    return x


class TwoArgError(Exception):
    """Cannot be unpickled (pickle calls __init__ with one argument)."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def fail_unpicklable_exception(x):
    if x == 1:
        raise TwoArgError("two-arg failure", 17)
    return x


def return_lock_at_2(x):
    if x == 2:
        return threading.Lock()
    return x


def pid_after_nap(x):
    time.sleep(0.05)
    return os.getpid()


def sleep_at_2(x):
    if x == 2:
        time.sleep(30)
    return x


def exit_at(x, culprit, how):
    if x == culprit:
        if how == "os._exit":
            os._exit(3)
        elif how == "SIGKILL":
            os.kill(os.getpid(), signal.SIGKILL)
        elif how == "sys.exit":
            sys.exit(4)
    return x


def identity(x, y):
    return x


# ------------------------------------------------------------------ basics
def test_builtin_backends_are_registered_and_available():
    for name in ("sequential", "local"):
        assert name in BACKENDS
        assert get_backend(name).is_available()


def test_results_in_input_order(backend):
    n = 8
    assert run(sleepy_identity, list(range(n)), n, backend=backend,
               n_workers=2) == list(range(n))


def test_many_quick_calls_in_input_order(backend):
    data = list(range(500))
    assert run(square, data, backend=backend) == [x * x for x in data]


def test_compute_twice(backend):
    with ParallelMap(square, [1, 2, 3], write_worker_results=False,
                     backend=backend) as pmap:
        assert pmap.compute() == [1, 4, 9]
        assert pmap.compute() == [1, 4, 9]


# ------------------------------------------------------------ result_shape
def test_result_shape_stacks_into_one_array(backend):
    out = run(vector, list(range(5)), backend=backend,
              result_shape=(None, 3), result_dtype="float32")
    assert isinstance(out, np.ndarray)
    assert out.shape == (5, 3)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.repeat(np.arange(5.0), 3).reshape(5, 3))


def test_result_shape_stacking_axis_last(backend):
    out = run(vector, list(range(4)), backend=backend, result_shape=(3, None))
    assert out.shape == (3, 4)
    assert out.dtype == np.float64  # result_dtype="float"
    for i in range(4):
        np.testing.assert_array_equal(out[:, i], [i, i, i])


def test_result_shape_of_scalars(backend):
    out = run(square, [1, 2, 3], backend=backend, result_shape=(None,),
              result_dtype="int64")
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [1, 4, 9])


def test_result_shape_integer_dtype(backend):
    out = run(int_vector, [0, 10], backend=backend, result_shape=(None, 3),
              result_dtype="int32")
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[0, 1, 2], [10, 11, 12]])


def test_wrong_shape_fails_that_call_only(backend):
    err = compute_error(wrong_length_at_2, list(range(5)), backend=backend,
                        result_shape=(None, 3))
    assert err.failed == [2]
    assert "(4,)" in str(err) and "(3,)" in str(err), str(err)
    assert isinstance(err.__cause__, acme.ResultShapeError)
    assert err.results[2] is None
    for i in (0, 1, 3, 4):
        np.testing.assert_array_equal(err.results[i], [i, i, i])


def test_value_that_does_not_fit_result_dtype_fails_that_call(backend):
    err = compute_error(vector, [0.5, 1.5], backend=backend, result_shape=(None, 3),
                        result_dtype="int32")
    assert err.failed == [0, 1]
    assert "int32" in str(err)


# ----------------------------------------------------------------- failures
def test_a_failing_call_does_not_stop_the_others(backend):
    err = compute_error(fail_on, list(range(10)), {3}, backend=backend, n_workers=2)
    assert err.failed == [3]
    assert err.results == [0, 10, 20, None, 40, 50, 60, 70, 80, 90]


def test_parallel_map_error_contract(backend):
    err = compute_error(fail_on, list(range(6)), {3}, backend=backend)
    assert isinstance(err, RuntimeError)
    message = str(err)
    assert re.search(word(3), message), message
    assert "ValueError" in message and "bad input 3" in message
    assert err.failed == [3]
    assert err.results == [0, 10, 20, None, 40, 50]
    cause = err.__cause__
    assert type(cause) is ValueError
    assert str(cause) == "bad input 3"
    assert set(err.errors) == {3}


@pytest.mark.parametrize("backend", sorted(IN_PROCESS & set(BACKENDS)))
def test_in_process_failure_keeps_the_real_traceback(backend):
    err = compute_error(fail_on, [1, 2], {2}, backend=backend)
    cause = err.__cause__
    assert cause.__traceback__ is not None
    frames = traceback.extract_tb(cause.__traceback__)
    assert frames[-1].name == "fail_on"
    assert frames[-1].filename == __file__
    assert 'raise ValueError(f"bad input {x}")' in frames[-1].line


def test_remote_failure_carries_the_remote_traceback(remote_backend):
    err = compute_error(fail_on, list(range(6)), {3}, backend=remote_backend)
    cause = err.__cause__
    assert type(cause) is ValueError
    remote = cause.__cause__
    assert isinstance(remote, acme.RemoteTraceback)
    text = remote.text
    assert re.search(r"(?i)call 3\b", text), text
    assert socket.gethostname() in text
    pid = re.search(r"pid (\d+)", text)
    assert pid and int(pid.group(1)) != os.getpid(), text
    assert "fail_on" in text and 'raise ValueError(f"bad input {x}")' in text
    assert __file__ in text
    # what a user sees when the error is printed
    printed = "".join(traceback.format_exception(err))
    assert 'raise ValueError(f"bad input {x}")' in printed
    assert "ParallelMapError" in printed


def test_several_failures(backend):
    err = compute_error(fail_on, list(range(9)), {1, 4, 7}, backend=backend)
    assert err.failed == [1, 4, 7]
    for index in (1, 4, 7):
        assert re.search(word(index), str(err)), str(err)
    assert str(err.__cause__) == "bad input 1", "the cause is the first failure"
    assert err.results == [0, None, 20, 30, None, 50, 60, None, 80]
    assert set(err.errors) == {1, 4, 7}


def test_several_failures_of_different_types(backend):
    err = compute_error(fail_with_types, list(range(7)), backend=backend)
    assert err.failed == [2, 5]
    assert type(err.__cause__) is KeyError
    assert type(err.errors[5].exception) is ZeroDivisionError


def test_parallel_map_error_pickles(backend):
    err = compute_error(fail_on, [0, 1, 2], {1}, backend=backend)
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is ParallelMapError
    assert clone.failed == [1]
    assert clone.results == [0, None, 20]
    assert str(clone) == str(err)


def test_exception_that_cannot_be_pickled_is_still_reported(backend):
    err = compute_error(fail_unpicklable_exception, [0, 1, 2], backend=backend)
    assert err.failed == [1]
    assert err.results == [0, None, 2]
    assert "TwoArgError" in str(err) and "two-arg failure" in str(err)


# ------------------------------------------------- out-of-process specifics
def test_unpicklable_return_value_fails_that_call(remote_backend):
    err = compute_error(return_lock_at_2, list(range(5)), backend=remote_backend)
    assert err.failed == [2]
    assert err.results == [0, 1, None, 3, 4]
    assert re.search(r"(?i)pickl", str(err)), str(err)
    assert re.search(r"(?i)return value", str(err)), str(err)


def test_unpicklable_return_value_is_fine_in_process():
    out = run(return_lock_at_2, [1, 2], backend="sequential")
    assert out[0] == 1 and hasattr(out[1], "acquire")


@pytest.mark.parametrize("n_workers", [1, 2])
def test_local_n_workers_respected(n_workers, no_leftover_processes):
    with ParallelMap(pid_after_nap, list(range(12)), write_worker_results=False,
                     backend="local", n_workers=n_workers) as pmap:
        pids = pmap.compute()
        assert pmap.stats["workers_started"] == n_workers
    assert len(set(pids)) == n_workers
    assert os.getpid() not in pids


def test_local_n_workers_auto_uses_the_usable_cores(no_leftover_processes):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with ParallelMap(pid_after_nap, list(range(12)), write_worker_results=False,
                     backend="local") as pmap:
        pids = pmap.compute()
        assert pmap.stats["workers_started"] == min(cores, 12)
    assert 1 <= len(set(pids)) <= cores


def test_sequential_runs_in_this_process():
    assert set(run(pid_after_nap, [1, 2, 3], backend="sequential")) == {os.getpid()}


def test_local_lambda_and_closure_work_with_cloudpickle(no_leftover_processes):
    pytest.importorskip("cloudpickle")
    offset = 100

    def add_offset(x):
        return x + offset

    assert run(add_offset, [1, 2], backend="local") == [101, 102]
    assert run(lambda x: x * 3, [1, 2], backend="local") == [3, 6]


@pytest.mark.parametrize("backend_name", ["local", "auto"])
def test_unpicklable_function_without_cloudpickle_is_an_error_at_construction(
        backend_name, monkeypatch, tmp_path, no_leftover_processes):
    monkeypatch.setitem(sys.modules, "cloudpickle", None)  # import fails
    marker = tmp_path / "ran"

    def add_offset_closure(x):
        marker.touch()
        return x

    with pytest.raises(TypeError, match="add_offset_closure"):
        ParallelMap(add_offset_closure, [1, 2], write_worker_results=False,
                    backend=backend_name)
    with pytest.raises(TypeError, match="lambda"):
        ParallelMap(lambda x: x, [1, 2], write_worker_results=False, backend=backend_name)
    assert not marker.exists()


def test_unpicklable_function_is_fine_in_process(monkeypatch):
    monkeypatch.setitem(sys.modules, "cloudpickle", None)
    assert run(lambda x: x + 1, [1, 2], backend="sequential") == [2, 3]


def touch_and_return(directory, x, y):
    open(os.path.join(directory, f"call-{id(x)}"), "w").close()
    return 0


@pytest.mark.parametrize("where", ["constant", "varying"])
def test_unpicklable_argument_is_a_clear_error_before_any_call(where, tmp_path,
                                                              no_leftover_processes):
    """Like an unpicklable function: a TypeError that says an argument cannot be
    sent to the workers, and no call runs (not a bare pickling error half-way)."""
    lock = threading.Lock()
    calls = tmp_path / "calls"
    calls.mkdir()
    args = ([1, 2, 3], lock) if where == "constant" else ([1, 2, 3, 4, lock], 2)
    with pytest.raises(TypeError) as info:
        with ParallelMap(touch_and_return, str(calls), *args, write_worker_results=False,
                         backend="local", n_workers=2) as pmap:
            pmap.compute()
    assert re.search(r"(?i)argument", str(info.value)), \
        f"the error does not say an argument is the problem: {info.value!r}"
    assert os.listdir(calls) == [], "calls ran before the error"


def test_local_timeout_stops_only_the_slow_call(no_leftover_processes):
    start = time.monotonic()
    err = compute_error(sleep_at_2, list(range(6)), backend="local", n_workers=2,
                        timeout=1)
    elapsed = time.monotonic() - start
    assert elapsed < 10, f"the slow call was not stopped ({elapsed:.1f} s)"
    assert err.failed == [2]
    assert err.results == [0, 1, None, 3, 4, 5]
    assert isinstance(err.__cause__, acme.CallTimeout)
    assert isinstance(err.__cause__, TimeoutError)
    assert re.search(r"(?i)timed? ?out", str(err))


def test_sequential_timeout_cannot_stop_a_call_but_warns(caplog):
    with caplog.at_level("WARNING", logger="acme"):
        assert run(square, [1, 2], backend="sequential", timeout=5) == [1, 4]
    assert any("timeout" in r.getMessage() for r in caplog.records
               if r.levelname == "WARNING")


@pytest.mark.parametrize("how, detail", [
    ("os._exit", r"exit code 3"),
    ("SIGKILL", r"signal 9|SIGKILL"),
])
@pytest.mark.parametrize("culprit", [1, 37], ids=["early", "in-a-batch"])
def test_local_worker_death_fails_only_that_call(how, detail, culprit,
                                                 no_leftover_processes):
    n = 50
    err = compute_error(exit_at, list(range(n)), culprit, how, backend="local",
                        n_workers=2)
    assert err.failed == [culprit]
    assert err.results == [None if i == culprit else i for i in range(n)]
    assert isinstance(err.__cause__, acme.WorkerDied)
    assert "worker died" in str(err)
    assert re.search(detail, str(err)), str(err)


@pytest.mark.parametrize("culprit", [1, 37], ids=["early", "in-a-batch"])
def test_sys_exit_in_a_call_fails_only_that_call(backend, culprit):
    n = 50
    err = compute_error(exit_at, list(range(n)), culprit, "sys.exit", backend=backend,
                        n_workers=2)
    assert err.failed == [culprit]
    assert err.results == [None if i == culprit else i for i in range(n)]
    cause = err.__cause__
    if isinstance(cause, SystemExit):
        assert cause.code == 4
    else:  # a worker process may also just end, with the call's exit code
        assert backend not in IN_PROCESS, f"unexpected cause {cause!r}"
        assert isinstance(cause, acme.WorkerDied) and "exit code 4" in str(err), str(err)
