"""Trust in values (issue 13): resume's fingerprint, result_dtype casts, in-memory
result_shape with several return values, values HDF5 cannot hold as they are, and
small input checks.

Resume tests are real runs in separate processes, each with its own PYTHONHASHSEED:
a first run in which some calls fail, then a resume with something changed (refused,
naming it, nothing touched), then the identical run (accepted; only the failed calls
run again).
"""
from __future__ import annotations

import json
import os
import re
import textwrap

import h5py
import numpy as np
import pytest

import acme
from acme import ParallelMap, ParallelMapError

from conftest import run_script

pytestmark = pytest.mark.timeout(180)

N = 6

# ---------------------------------------------------------------- resume fingerprint
RESUME_SCRIPT = textwrap.dedent('''
    """One map of a variant of the function/arguments; version "b" changes one thing."""
    import functools, json, os, sys, threading, types
    import numpy as np
    from acme import ParallelMap, ParallelMapError

    out, flag, markers, variant, version, resume = sys.argv[1:7]
    B = version == "b"
    SCALE = 3.0 if (B and variant == "global") else 2.0

    def base(x, extra=0.0, offset=0.0):
        open(os.path.join(markers, f"{x}_{os.getpid()}_{os.urandom(4).hex()}"), "w").close()
        if os.path.exists(flag) and x % 2:
            raise RuntimeError("odd calls fail while the flag file exists")
        return np.array([x * SCALE + extra + offset, x])

    def make(k):
        def closure(x):
            return base(x, k)
        return closure

    class Adder:
        def __init__(self, offset, tags):
            self.offset, self.tags = offset, tags
        def __call__(self, x):
            return base(x, len(self.tags), self.offset)

        def shifted(self, x):
            return base(x, 0.0, self.offset)

    def with_tags(x, tags):
        return base(x, len(getattr(tags, "tags", tags)))

    def with_mask(x, m):
        return base(x, float(m.sum()))

    def with_lock(x, lock):
        return base(x)

    tags = {"alpha", "beta", "gamma", "delta", "epsilon"} | ({"zeta"} if B else set())
    xs = list(range(N_CALLS))
    args, backend = (xs,), "local"
    if variant == "lambda":
        func = (lambda x: base(x, 2.0)) if B else (lambda x: base(x, 1.0))
    elif variant == "closure":
        func = make(2.0 if B else 1.0)
    elif variant == "global":
        func = base
    elif variant == "partial":
        func = functools.partial(base, offset=2.0 if B else 1.0)
    elif variant == "callable":
        func = Adder(2.0 if B else 1.0, {"x", "y", "z"})
    elif variant == "method":
        func = Adder(2.0 if B else 1.0, set()).shifted
    elif variant == "set":
        func, args = with_tags, (xs, tags)
    elif variant == "set-in-object":  # pickled, a set's order depends on the hash seed
        func, args = with_tags, (xs, types.SimpleNamespace(tags=tags))
    elif variant == "masked":
        mask = [[0, 0, 1], [0, 0, 0]] if B else [[0, 1, 0], [0, 0, 0]]  # 2-D: not split
        func, args = with_mask, (xs, np.ma.masked_array([[1.0, 2.0, 4.0], [0, 0, 0]],
                                                        mask=mask))
    elif variant == "lock":
        func, args, backend = with_lock, (xs, threading.Lock()), "sequential"
    try:
        with ParallelMap(func, *args, output_dir=out, resume=resume == "1",
                         backend=backend, n_workers=2, verbose=False,
                         setup_interactive=False) as pmap:
            pmap.compute()
    except ParallelMapError as exc:
        print("FAILED")
    print("STATS " + json.dumps({"ran": pmap.stats["ran"], "resumed": pmap.stats["resumed"]}))
''').replace("N_CALLS", str(N))

#: what differs in version "b", and words the refusal must use for it
CHANGES = {
    "lambda": "the code of <lambda> has changed",
    "closure": "the closure variable 'k' of make.<locals>.closure has changed",
    "global": "the global 'SCALE' read by base has changed",
    "partial": "what the partial binds has changed",
    "callable": "the callable Adder object has changed",
    "method": "the object the method is bound to has changed",
    "set": "positional argument 1 has changed",
    "set-in-object": "positional argument 1 has changed",
    "masked": "positional argument 1 has changed",
}


def _run(tmp_path, out, variant, version, resume, seed):
    script = tmp_path / "resume_variant.py"
    script.write_text(RESUME_SCRIPT)
    return run_script(script, timeout=90, args=[
        str(out), str(tmp_path / "flag"), str(tmp_path / "markers"), variant, version,
        "1" if resume else "0"], env={"PYTHONHASHSEED": str(seed)})


def _markers(tmp_path) -> list:
    return sorted(int(p.name.split("_")[0]) for p in (tmp_path / "markers").iterdir())


def _first_run(tmp_path, variant):
    """Odd calls fail; returns the output folder and its files' mtimes."""
    out = tmp_path / "out"
    (tmp_path / "markers").mkdir()
    (tmp_path / "flag").touch()
    first = _run(tmp_path, out, variant, "a", resume=False, seed=1)
    assert first.returncode == 0 and "FAILED" in first.stdout, str(first)
    assert _markers(tmp_path) == list(range(N)), str(first)
    os.remove(tmp_path / "flag")
    return out, _mtimes(out)


def _mtimes(out) -> dict:
    """Every file's mtime, but the claim on the folder (taken by every attempt)."""
    return {p: p.stat().st_mtime_ns for p in out.rglob("*")
            if p.is_file() and p.relative_to(out).parts != (".acme", "lock")}


def _check_resumed(tmp_path, out, variant, ran_before):
    again = _run(tmp_path, out, variant, "a", resume=True, seed=2)
    assert again.returncode == 0 and "FAILED" not in again.stdout, str(again)
    stats = json.loads(again.stdout.split("STATS ", 1)[1])
    assert stats == {"ran": N // 2, "resumed": N // 2}, str(again)
    assert _markers(tmp_path) == sorted(ran_before + [1, 3, 5]), "resume re-ran done calls"
    extra = {"lambda": 1.0, "closure": 1.0, "global": 0.0, "partial": 1.0,
             "callable": 3.0 + 1.0, "method": 1.0, "set": 5.0, "set-in-object": 5.0,
             "masked": 5.0}[variant]
    for i in range(N):
        np.testing.assert_array_equal(acme.load_call(str(out), i)[0], [i * 2.0 + extra, i])


@pytest.mark.parametrize("variant", sorted(CHANGES))
def test_resume_refuses_a_change_and_accepts_the_identical_run_in_new_processes(
        tmp_path, variant):
    out, before = _first_run(tmp_path, variant)
    # changed, in a new process with another hash seed: refused, naming the change
    changed = _run(tmp_path, out, variant, "b", resume=True, seed=3)
    assert changed.returncode != 0, str(changed)
    assert "resume=True refused" in changed.stderr, str(changed)
    assert CHANGES[variant] in changed.stderr, str(changed)
    assert "cannot be compared" not in changed.stderr, str(changed)
    assert _markers(tmp_path) == list(range(N)), "a refused resume ran calls"
    assert _mtimes(out) == before, "a refused resume changed the output folder"
    # identical, another process and hash seed: accepted, only the failed calls run
    _check_resumed(tmp_path, out, variant, list(range(N)))


def test_resume_is_refused_when_an_argument_cannot_be_fingerprinted(tmp_path):
    """A lock has no content acme can digest: "unknown" is never taken as equal."""
    out, before = _first_run(tmp_path, "lock")
    same = _run(tmp_path, out, "lock", "a", resume=True, seed=2)
    assert same.returncode != 0 and "resume=True refused" in same.stderr, str(same)
    assert re.search(r"positional argument 1 cannot be compared.*_thread\.lock",
                     same.stderr), str(same)
    assert _markers(tmp_path) == list(range(N))
    assert _mtimes(out) == before


# ---------------------------------------------------------------- result_dtype casts
CASTS = {  # result_dtype: (a value it holds, a value it cannot hold, how that one would end)
    "int8": (100, 1000, "-24"),
    "float32": (0.1, 1e300, "inf"),
    "S3": (b"abc", b"abcd", "b'abc'"),
}


def two_values(x, dtype):
    """Call 1 returns a value ``dtype`` cannot hold; the others one it can."""
    good, bad, _ = CASTS[dtype]
    return np.array([good, bad if x == 1 else good])


def _mode_options(mode: str, out) -> dict:
    if mode == "memory":
        return {"write_worker_results": False}
    return {"output_dir": str(out), "single_file": mode == "single_file"}


@pytest.mark.parametrize("mode", ["memory", "files", "single_file"])
@pytest.mark.parametrize("dtype", sorted(CASTS))
def test_a_value_result_dtype_cannot_hold_fails_its_call(tmp_path, dtype, mode):
    good, bad, became = CASTS[dtype]
    out = tmp_path / "out"
    with pytest.raises(ParallelMapError) as info:
        with ParallelMap(two_values, list(range(4)), dtype, result_shape=(None, 2),
                         result_dtype=dtype, backend="local", n_workers=2, verbose=False,
                         **_mode_options(mode, out)) as pmap:
            pmap.compute()
    assert info.value.failed == [1], str(info.value)
    message = str(info.value)
    assert "call 1 " in message and repr(bad) in message and dtype in message, message
    assert became in message, message
    if mode == "memory":
        return
    for i in (0, 2, 3):  # the other calls are stored exactly as returned
        stored = acme.load_call(str(out), i)[0]
        returned = two_values(i, dtype)
        if mode == "files":  # the payload keeps the value's own dtype (esi-acme)
            np.testing.assert_array_equal(stored, returned)
            assert stored.dtype == returned.dtype
        else:  # a row of the stacked dataset
            np.testing.assert_array_equal(stored, np.array([good, good], dtype=dtype))
            assert stored.dtype == np.dtype(dtype)
    with pytest.raises(acme.MissingResultError):
        acme.load_call(str(out), 1)
    with pytest.raises(acme.MissingResultError):
        acme.load_stacked(str(out))


def test_lower_precision_floats_are_what_result_dtype_float32_is_for(tmp_path):
    """0.1 is not exact in float32, but finite: stored rounded, no error."""
    with ParallelMap(two_values, [0, 2, 3], "float32", result_shape=(None, 2),
                     result_dtype="float32", write_worker_results=False,
                     backend="local", n_workers=2, verbose=False) as pmap:
        values = pmap.compute()
    np.testing.assert_array_equal(values, np.full((3, 2), 0.1, dtype="float32"))


def test_an_integer_that_float64_cannot_hold_exactly_is_refused():
    with pytest.raises(ParallelMapError, match=r"9007199254740993.*9007199254740992"):
        ParallelMap(lambda x: x, [1, 2 ** 53 + 1], result_shape=(None,),
                    write_worker_results=False, backend="sequential",
                    verbose=False).compute()


def test_a_structured_result_dtype_is_refused_up_front():
    with pytest.raises(TypeError, match="result_dtype.*structured"):
        ParallelMap(lambda x: x, [1, 2], result_shape=(None,),
                    result_dtype=[("a", "f8"), ("b", "i4")])


# ---------------------------------------------------------------- in memory, result_shape
def three_values(x):
    return np.arange(3.0) + x, f"label {x}", {"x": x}


def test_in_memory_result_shape_keeps_the_other_return_values_as_esi_acme_does():
    """esi-acme returns [stacked array, call 0's other values..., call 1's ...]."""
    with ParallelMap(three_values, [0, 1, 2], write_worker_results=False,
                     result_shape=(None, 3), backend="local", n_workers=2,
                     verbose=False) as pmap:
        result = pmap.compute()
    assert isinstance(result, list) and len(result) == 1 + 2 * 3, result
    np.testing.assert_array_equal(result[0], [[0, 1, 2], [1, 2, 3], [2, 3, 4]])
    assert result[1:] == ["label 0", {"x": 0}, "label 1", {"x": 1}, "label 2", {"x": 2}]
    # one return value: the array alone, as before
    with ParallelMap(lambda x: np.arange(3.0) + x, [0, 1], write_worker_results=False,
                     result_shape=(None, 3), backend="sequential", verbose=False) as pmap:
        alone = pmap.compute()
    assert isinstance(alone, np.ndarray) and alone.shape == (2, 3)


# ---------------------------------------------------------------- values HDF5 would change
def _pandas():
    return pytest.importorskip("pandas", reason="pandas is not installed")


def changed_by_arrays(kind):
    if kind == "masked":
        return np.ma.masked_array([1.0, 2.0, 3.0], mask=[0, 1, 0], fill_value=-1.0)
    if kind == "dataframe":
        return _pandas().DataFrame({"a": [1.0, 2.0]}, index=["r", "s"])
    if kind == "series":
        return _pandas().Series([1.0, 2.0], index=["p", "q"], name="s")
    if kind == "bool-and-int":
        return [True, 2]
    if kind == "big-int-and-float":  # as floats: 2**60 + 1 would become 2**60
        return [2 ** 60 + 1, 0.5]
    if kind == "bytes-ending-in-nul":  # fixed-size bytes drop trailing NULs
        return [b"a", b"b\0"]
    raise ValueError(kind)


def _same(kind, got, want) -> None:
    if kind == "masked":
        assert isinstance(got, np.ma.MaskedArray)
        np.testing.assert_array_equal(np.ma.getmaskarray(got), np.ma.getmaskarray(want))
        np.testing.assert_array_equal(got.data, want.data)
        assert got.fill_value == want.fill_value
    elif kind in ("dataframe", "series"):
        assert type(got) is type(want) and got.equals(want)
        assert list(got.index) == list(want.index)
    else:
        assert got == want and [type(v) for v in got] == [type(v) for v in want]


@pytest.mark.parametrize("mode", ["files", "single_file"])
@pytest.mark.parametrize("kind", ["masked", "dataframe", "series", "bytes-ending-in-nul"])
def test_a_value_an_array_would_change_is_pickled_with_a_warning(tmp_path, kind, mode):
    want = changed_by_arrays(kind)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="pickled instead"):
        with ParallelMap(changed_by_arrays, [kind, kind], output_dir=str(out),
                         single_file=mode == "single_file", backend="local",
                         n_workers=2, verbose=False) as pmap:
            files = pmap.compute()
    for i in range(2):
        got = acme.load_call(str(out), i)  # a list of the values, also for a pickle
        if isinstance(want, list):  # a returned list is several values (esi-acme)
            _same(kind, got, want)
        else:
            assert len(got) == 1
            _same(kind, got[0], want)
        if mode == "files":
            assert files[i] == str(out / f"changed_by_arrays_{i}.pickle"), files
            assert not (out / "changed_by_arrays_payload" / f"changed_by_arrays_{i}.h5").exists()
    with h5py.File(out / "changed_by_arrays.h5", "r") as h5f:  # nothing changed in HDF5
        names = [name for name in h5f if name.startswith("comp_")]
        assert sorted(names) == ["comp_0", "comp_1"]  # esi-acme: one per call ...
        for name in names:  # ... dangling (files) or empty (single_file)
            if mode == "files":
                with pytest.raises(KeyError):
                    h5f[name]
            else:
                assert len(h5f[name]) == 0


@pytest.mark.parametrize("mode", ["files", "single_file"])
@pytest.mark.parametrize("kind", ["bool-and-int", "big-int-and-float"])
def test_numbers_one_dataset_would_change_are_datasets_of_their_own(tmp_path, kind, mode):
    """esi-acme stores a returned list or tuple of numbers as one dataset; where that
    would change a value (a bool among ints, an int a float cannot hold), acme stores
    each value as a 0-d dataset of its own type instead (esi-acme's layout for values
    that are not all numbers)."""
    want = changed_by_arrays(kind)
    out = tmp_path / "out"
    with ParallelMap(changed_by_arrays, [kind, kind], output_dir=str(out),
                     single_file=mode == "single_file", backend="local",
                     n_workers=2, verbose=False) as pmap:
        pmap.compute()
    for i in range(2):
        got = acme.load_call(str(out), i)
        assert [np.shape(v) for v in got] == [(), ()]
        assert [v.item() for v in got] == want
        assert [type(v.item()) for v in got] == [type(v) for v in want]


def bools(x):
    return True, np.bool_(False), np.array([True, False, x == 1])


@pytest.mark.parametrize("mode", ["files", "single_file"])
def test_bools_are_stored_as_hdf5_enums_that_read_back_as_bool(tmp_path, mode):
    """h5py stores numpy bool as an HDF5 enum (FALSE=0, TRUE=1) and reads it back as
    bool: checked with plain h5py and with acme.load_call."""
    out = tmp_path / "out"
    with ParallelMap(bools, [0, 1], output_dir=str(out), single_file=mode == "single_file",
                     backend="local", n_workers=2, verbose=False) as pmap:
        pmap.compute()
        container = pmap.results_container
    with h5py.File(container, "r") as h5f:
        for k in range(3):
            dset = h5f[f"comp_1/result_{k}"]
            assert dset.dtype == np.bool_, (k, dset.dtype)
            assert isinstance(dset.id.get_type(), h5py.h5t.TypeEnumID)
        np.testing.assert_array_equal(h5f["comp_1/result_2"][()], [True, False, True])
    values = acme.load_call(str(out), 1)
    assert [v.dtype for v in values] == [np.bool_] * 3
    # beside an array, each scalar is a 0-d dataset (esi-acme's layout)
    assert values[0].shape == () and values[0].tolist() is True
    assert values[1].shape == () and values[1].tolist() is False


# ---------------------------------------------------------------- small input checks
def nothing(x):
    return ()


def test_a_call_returning_an_empty_tuple(tmp_path):
    """Without result_shape () is kept (pickled, no HDF5 value to write); with
    result_shape it is a clear error of that call."""
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="pickled instead"):
        with ParallelMap(nothing, [0, 1], output_dir=str(out), backend="local",
                         n_workers=2, verbose=False) as pmap:
            pmap.compute()
    assert acme.load_call(str(out), 1) == []  # the list of its values: none
    for options in ({"write_worker_results": False}, {"output_dir": str(tmp_path / "o2")}):
        with pytest.raises(ParallelMapError, match=r"call 0 returned an empty tuple .*"
                                                   r"result_shape=\(None, 3\)"):
            ParallelMap(nothing, [0, 1], result_shape=(None, 3), backend="sequential",
                        verbose=False, **options).compute()


def test_a_masked_value_is_not_stacked_as_if_valid():
    with pytest.raises(ParallelMapError, match="call 1 returned a masked array") as info:
        ParallelMap(lambda x: np.ma.masked_array([1.0, 2.0], mask=[0, x]), [0, 1],
                    result_shape=(None, 2), write_worker_results=False,
                    backend="sequential", verbose=False).compute()
    assert info.value.failed == [1]


def test_a_one_element_array_is_one_call_like_a_one_element_list():
    seen = []
    for arg in ([5], np.array([5]), np.array([[5]])):
        with ParallelMap(lambda x: seen.append(x) or x, arg, write_worker_results=False,
                         backend="sequential", verbose=False) as pmap:
            assert pmap.n_inputs == 1
            assert pmap.compute() == [5]
    assert seen == [5, 5, 5]
    # next to a longer list it stays the same for every call, as before
    with ParallelMap(lambda x, a: a, [1, 2, 3], np.array([5]), write_worker_results=False,
                     backend="sequential", verbose=False) as pmap:
        assert [a.tolist() for a in pmap.compute()] == [[5]] * 3


def test_a_huge_n_inputs_is_refused_before_anything_is_built():
    with pytest.raises(ValueError, match=r"`n_inputs` is 1000000000000.*GiB of memory"):
        ParallelMap(lambda x, y: x, 2, 3, n_inputs=10 ** 12)


def test_a_tilde_in_output_dir_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with ParallelMap(nothing_but, [1, 2], output_dir="~/runs/one", backend="sequential",
                     verbose=False) as pmap:
        files = pmap.compute()
    assert files[0].startswith(str(tmp_path / "home" / "runs" / "one")), files
    assert not (tmp_path / "~").exists()
    assert acme.load_call(str(tmp_path / "home" / "runs" / "one"), 1)[0].tolist() == [2]


def nothing_but(x):
    return x


GLOBAL_LOCK = __import__("threading").Lock()


def reads_a_global_lock(x):
    with GLOBAL_LOCK:
        return x


def test_a_fingerprint_names_what_it_cannot_digest():
    from acme.fingerprint import UNKNOWN, digest
    found = digest(reads_a_global_lock)
    assert found.startswith(UNKNOWN) and "the global 'GLOBAL_LOCK' read by" in found, found
    assert digest(np.zeros(2, dtype=[("a", "f8")])) != digest(np.zeros(2, dtype=[("b", "f8")]))


MPI_CAST_SCRIPT = textwrap.dedent('''
    """Under mpiexec: a value result_dtype int8 cannot hold, in a single file written
    by every rank (parallel HDF5 where h5py has it) and in per-call files."""
    import json, sys
    import numpy as np
    from acme import ParallelMap, ParallelMapError, load_call

    def values(x):
        return np.array([x, 1000 if x == 2 else x])

    if __name__ == "__main__":
        report = {}
        for single in (True, False):
            out = sys.argv[1] + ("_single" if single else "_files")
            try:
                with ParallelMap(values, list(range(5)), output_dir=out, backend="mpi",
                                 result_shape=(None, 2), result_dtype="int8",
                                 single_file=single, verbose=False) as pmap:
                    pmap.compute()
                report[out] = {"failed": []}
            except ParallelMapError as exc:
                report[out] = {"failed": exc.failed, "message": str(exc),
                               "others": [load_call(out, i)[0].tolist() for i in (0, 1, 3, 4)]}
        print("REPORT " + json.dumps(report))
''')


def test_a_value_result_dtype_cannot_hold_fails_its_call_under_mpi(tmp_path):
    from mpi_helpers import run_mpi
    script = tmp_path / "mpi_cast.py"
    script.write_text(MPI_CAST_SCRIPT)
    proc = run_mpi(str(script), 3, str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout.split("REPORT ", 1)[1])
    assert len(report) == 2, report
    for out, found in report.items():
        assert found["failed"] == [2], (out, found)
        assert "1000" in found["message"] and "int8" in found["message"], found
        assert found["others"] == [[i, i] for i in (0, 1, 3, 4)], found


def bool_row(x):
    return np.array([True, False, x == 1])


@pytest.mark.parametrize("single_file", [False, True])
def test_stacked_bools_stay_bools(tmp_path, single_file):
    """result_dtype=bool: the stacked dataset (virtual, or written as raw rows into a
    dataset made up front) is an HDF5 enum that reads back as bool."""
    out = tmp_path / "out"
    with ParallelMap(bool_row, [0, 1], output_dir=str(out), result_shape=(None, 3),
                     result_dtype=bool, single_file=single_file, backend="local",
                     n_workers=2, verbose=False) as pmap:
        pmap.compute()
        container = pmap.results_container
    want = [[True, False, False], [True, False, True]]
    with h5py.File(container, "r") as h5f:
        assert h5f["result_0"].dtype == np.bool_
        assert h5f["result_0"][()].tolist() == want
    stacked = acme.load_stacked(str(out))
    assert stacked.dtype == np.bool_ and stacked.tolist() == want
