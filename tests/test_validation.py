"""Every parameter of ParallelMap is checked up front: a wrong type is a TypeError,
a wrong value a ValueError, each naming the parameter; nothing starts when a check
fails."""
from __future__ import annotations

import multiprocessing.process
import os
import re
import warnings

import numpy as np
import pytest

import acme.backends
from acme import ParallelMap
from acme.backends import registered_backends

pytestmark = pytest.mark.timeout(60)


def f(x, y=1):
    return x * y


def make(**options):
    """ParallelMap(f, [1, 2, 3], **options), results in memory unless asked."""
    options.setdefault("write_worker_results", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ParallelMap(f, [1, 2, 3], **options)


def shown(value) -> str:
    """How a bad value is expected to appear in the message."""
    if isinstance(value, str):
        return value
    return str(value)


WRONG_TYPES = [
    ("n_inputs", True, {}),
    ("n_inputs", None, {}),
    ("write_worker_results", "yes", {}),
    ("write_worker_results", 1, {}),
    ("write_worker_results", None, {}),
    ("output_dir", 123, {"write_worker_results": True}),
    ("result_shape", 100, {}),
    ("result_shape", "(None, 3)", {}),
    ("result_dtype", 123, {}),
    ("result_dtype", 123, {"result_shape": (None, 3)}),
    ("single_file", "x", {"write_worker_results": True}),
    ("write_pickle", "x", {"write_worker_results": True}),
    ("partition", 123, {}),
    ("n_workers", True, {}),
    ("mem_per_worker", 5, {}),
    ("setup_timeout", "x", {}),
    ("setup_timeout", True, {}),
    ("setup_interactive", "x", {}),
    ("setup_interactive", 1, {}),
    ("stop_client", 1, {}),
    ("stop_client", None, {}),
    ("verbose", "yes", {}),
    ("verbose", 1, {}),
    ("dryrun", "x", {}),
    ("logfile", 123, {}),
    ("backend", 5, {}),
    ("timeout", "x", {}),
    ("timeout", True, {}),
]

WRONG_VALUES = [
    ("n_inputs", 2.5, {}),  # a ValueError in esi-acme too
    ("n_workers", 1.5, {}),  # a ValueError in esi-acme too
    ("n_inputs", "foo", {}),
    ("n_inputs", 0, {}),
    ("n_inputs", -2, {}),
    ("output_dir", "", {"write_worker_results": True}),
    ("result_shape", (3, 4), {}),
    ("result_shape", (), {}),
    ("result_shape", (None, None), {}),
    ("result_shape", (None, -1), {}),
    ("result_shape", (None, 2.5), {}),
    ("result_shape", (None, np.inf, np.inf), {"write_worker_results": True}),
    ("result_shape", (None, np.inf), {"write_worker_results": False}, "np.inf"),
    ("partition", "", {}, "empty"),
    ("partition", "   ", {}, "empty"),
    ("n_workers", "x", {}),
    ("n_workers", 0, {}),
    ("mem_per_worker", "lots", {}),
    ("mem_per_worker", "0GB", {}),
    ("mem_per_worker", "-4GB", {}),
    ("setup_timeout", -1, {}),
    ("setup_timeout", 0, {}),
    ("stop_client", "x", {}),
    ("logfile", "", {}),
    ("backend", "nope", {}),
    ("timeout", 0, {}),
    ("timeout", -1, {}),
    ("timeout", float("nan"), {}),
]


def _id(case):
    name, value, extra = case[:3]
    return f"{name}={value!r}" + (f"+{extra}" if extra else "")


@pytest.mark.parametrize("case", WRONG_TYPES, ids=[_id(c) for c in WRONG_TYPES])
def test_wrong_type_is_typeerror_naming_the_parameter(case):
    name, value, extra = case
    with pytest.raises(TypeError, match=re.escape(name)) as info:
        make(**{**extra, name: value})
    assert not isinstance(info.value, ValueError) or name == "func", \
        "a wrong type must not also pass for a wrong value"
    assert shown(value) in str(info.value), f"the bad value is not shown: {info.value}"


@pytest.mark.parametrize("case", WRONG_VALUES, ids=[_id(c) for c in WRONG_VALUES])
def test_wrong_value_is_valueerror_naming_the_parameter(case):
    name, value, extra = case[:3]
    fragment = case[3] if len(case) > 3 else (repr(value) if isinstance(value, (tuple, str))
                                              else shown(value))
    with pytest.raises(ValueError, match=re.escape(name)) as info:
        make(**{**extra, name: value})
    assert fragment in str(info.value), f"{fragment!r} is not shown: {info.value}"


def test_func_not_callable():
    with pytest.raises(TypeError, match="func") as info:
        ParallelMap(42, [1, 2, 3], write_worker_results=False)
    assert "42" in str(info.value)


@pytest.mark.parametrize("dtype", ["notadtype", "float1234"])
@pytest.mark.parametrize("shape", [None, (None, 3)])
def test_result_dtype_not_a_dtype(dtype, shape):
    # numpy itself raises TypeError for an unknown dtype name; either kind is
    # accepted for a string, but the parameter has to be named.
    with pytest.raises((TypeError, ValueError), match="result_dtype"):
        make(result_shape=shape, result_dtype=dtype)


def test_result_dtype_object_rejected_for_stacked_results():
    with pytest.raises(TypeError, match="result_dtype"):
        make(result_shape=(None, 3), result_dtype=object)


def test_write_pickle_and_single_file_together():
    with pytest.raises(ValueError, match="write_pickle") as info:
        make(write_worker_results=True, write_pickle=True, single_file=True)
    assert "single_file" in str(info.value)


def test_logfile_naming_a_directory(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    with pytest.raises(ValueError, match="logfile") as info:
        make(logfile=str(folder))
    assert isinstance(info.value, OSError), "esi-acme raised IOError here"
    assert str(folder) in str(info.value)


def test_backend_unknown_lists_the_registered_names():
    with pytest.raises(ValueError, match="backend") as info:
        make(backend="nope")
    for name in registered_backends():
        assert name in str(info.value)
    assert "nope" in str(info.value)


# ------------------------------------------------------------ good values pass
@pytest.mark.parametrize("options", [
    {},
    {"n_inputs": 3},
    {"n_inputs": np.int64(3)},
    {"n_inputs": "auto"},
    {"write_worker_results": True},
    {"write_worker_results": True, "output_dir": "results"},
    {"write_worker_results": True, "result_shape": (None, np.inf)},
    {"result_shape": (None, 3), "result_dtype": "int32"},
    {"result_shape": (2, None, 3), "result_dtype": np.float32},
    {"result_shape": [None, 3]},
    {"write_worker_results": True, "single_file": True},
    {"write_worker_results": True, "write_pickle": True},
    {"partition": "8GBXS"},
    {"n_workers": 2},
    {"n_workers": np.int32(2)},
    {"n_workers": "auto"},
    {"mem_per_worker": "4GB"},
    {"mem_per_worker": "500MB"},
    {"mem_per_worker": "auto"},
    {"setup_timeout": 5},
    {"setup_timeout": 0.5},
    {"setup_interactive": False},
    {"stop_client": True},
    {"stop_client": False},
    {"stop_client": "auto"},
    {"verbose": True},
    {"verbose": False},
    {"verbose": None},
    {"dryrun": False},
    {"logfile": True},
    {"logfile": False},
    {"logfile": "run.log"},
    {"backend": "auto"},
    {"timeout": 1.5},
    {"timeout": None},
], ids=lambda o: ",".join(f"{k}={v!r}" for k, v in o.items()) or "defaults")
def test_good_values_are_accepted(options):
    pmap = make(**options)
    assert pmap.n_inputs == 3


@pytest.mark.parametrize("name", registered_backends())
def test_every_registered_backend_name_is_accepted(name):
    assert make(backend=name).n_inputs == 3


def test_mem_per_worker_is_stored():
    pmap = make(mem_per_worker="4GB")
    assert pmap.mem_per_worker == "4GB"


def test_later_backend_options_are_stored():
    pmap = make(partition="8GBXS", n_workers=2, setup_timeout=5, setup_interactive=False,
                stop_client=False, timeout=2.5)
    assert pmap.partition == "8GBXS"
    assert pmap.n_workers == 2
    assert pmap.setup_timeout == 5
    assert pmap.setup_interactive is False
    assert pmap.stop_client is False
    assert pmap.timeout == 2.5


# ------------------------------------------------ nothing starts on failure
@pytest.fixture
def starts(monkeypatch):
    """Records every process start and backend lookup."""
    seen = []
    real_start = multiprocessing.process.BaseProcess.start
    real_get = acme.backends.get_backend

    def start(self):
        seen.append(("process", self.name))
        return real_start(self)

    def get_backend(name):
        seen.append(("backend", name))
        return real_get(name)

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start)
    monkeypatch.setattr(acme.backends, "get_backend", get_backend)
    return seen


def record_call(directory, x):
    with open(os.path.join(directory, f"call-{x}"), "w"):
        pass
    return x


@pytest.mark.parametrize("bad", [
    {"timeout": 0},
    {"n_workers": 0},
    {"backend": "nope"},
    {"verbose": "yes"},
    {"result_shape": (None, None)},
    {"write_pickle": True, "single_file": True},
    {"y": 3},  # not a parameter of record_call
], ids=lambda o: ",".join(o))
@pytest.mark.timeout(30)
def test_nothing_starts_when_validation_fails(bad, starts, tmp_path, no_leftover_processes):
    calls = tmp_path / "calls"
    calls.mkdir()
    before = sorted(os.listdir(tmp_path))
    bad = dict(bad)
    with pytest.raises((TypeError, ValueError)):
        with ParallelMap(record_call, str(calls), [1, 2, 3], logfile="run.log",
                         backend=bad.pop("backend", "local"), **bad) as pmap:
            pmap.compute()
    assert starts == [], f"something was started: {starts}"
    assert os.listdir(calls) == [], "the function ran"
    assert sorted(os.listdir(tmp_path)) == before, "files or folders were created"


def test_construction_alone_starts_nothing(starts, tmp_path):
    before = sorted(os.listdir(tmp_path))
    pmap = ParallelMap(f, [1, 2, 3], backend="local")
    assert pmap.n_inputs == 3
    assert starts == []
    assert sorted(os.listdir(tmp_path)) == before
