"""Results on disk (issue 3, DESIGN.md section 3): esi-acme's file layout, read back
with plain h5py/pickle and compared with values computed here.

Every run passes ``output_dir`` or chdirs itself (``monkeypatch.chdir``), so nothing
depends on the suite's autouse fixture.
"""
from __future__ import annotations

import datetime
import os
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import acme
from acme import ParallelMap, ParallelMapError

from disk_helpers import (ACME_DIR_RE, acme_dirs, assert_no_tmp, decoded, dirs_under,
                          files_under, log_re, logs_in, read_root)

BACKENDS = ["sequential", "local"]
pytestmark = pytest.mark.timeout(60)


def run(func, *args, backend="sequential", **kwargs):
    """``compute()`` of a ParallelMap; returns (results, pmap)."""
    kwargs.setdefault("n_workers", 2 if backend == "local" else "auto")
    with ParallelMap(func, *args, backend=backend, **kwargs) as pmap:
        results = pmap.compute()
    return results, pmap


# Functions at module level: they reach local worker processes by reference.
def f(x):
    """Three return values: an array, a string and a scalar."""
    return np.arange(5) * x, f"call {x}", x / 2


def expected_f(x):
    return np.arange(5) * x, f"call {x}", x / 2


def one_int(x):
    return 3 * x


def one_str(x):
    return f"Grüße {x}"


def row(x, width=100, dtype="int64"):
    """A row of ``width`` values unique to ``x``, and a second value."""
    return np.arange(width, dtype=dtype) + 1000 * x, np.array([x, -x])


def expected_row(x, width=100):
    return np.arange(width) + 1000 * x


def row_pid(x):
    """A row, and the id of the process that wrote it."""
    return np.arange(50, dtype=float) + 1000 * x, os.getpid()


def ragged(n):
    return np.arange(1, n + 1, dtype=float) * 10


def sized(n):
    """``n`` values: calls with the wrong ``n`` do not fit result_shape."""
    return np.full(n, float(n))


def maybe_dict(x):
    """Some return values HDF5 cannot hold: a dict, None."""
    if x % 3 == 0:
        return {"x": x, "twice": [x, x]}
    if x == 4:
        return None
    return np.arange(3) * x


def bad_string(x):
    """Call 2's second value cannot be encoded (lone surrogate): its HDF5 write fails."""
    return np.arange(3) * x, ("bad \udcff" if x == 2 else "fine")


def smooth(x):
    """A name ending in 'h' (esi-acme's rstrip('.h5') mangled such names)."""
    return x + 0.5


def payload_names(stem, n, ext="h5"):
    return {f"{stem}_payload/{stem}_{i}.{ext}" for i in range(n)}


# ------------------------------------------------------------------ default mode
@pytest.mark.parametrize("backend", BACKENDS)
def test_default_layout_names_links_and_values(tmp_path, monkeypatch, backend):
    monkeypatch.chdir(tmp_path)
    xs = [7, 3, 11, 0]
    before = datetime.datetime.now().replace(microsecond=0)
    results, pmap = run(f, xs, backend=backend)
    after = datetime.datetime.now()

    # one ACME_<time> folder in the cwd, named after its creation time
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1 and ACME_DIR_RE.match(folders[0].name), folders
    out = folders[0]
    stamp = datetime.datetime.strptime(ACME_DIR_RE.match(out.name).group(1),
                                       "%Y%m%d-%H%M%S-%f")
    assert before <= stamp <= after

    files = files_under(out)
    logs = [p for p in files if "/" not in p and p.endswith(".log")]
    assert len(logs) == 1 and log_re("f").match(logs[0]), files
    assert files == {"f.h5", logs[0]} | payload_names("f", 4)
    assert dirs_under(out) == {"f_payload"}

    # compute() returns the payloads in input order; results_container the container
    assert results == [str(out / "f_payload" / f"f_{i}.h5") for i in range(4)]
    assert pmap.results_container == str(out / "f.h5")

    with h5py.File(out / "f.h5", "r") as h5f:
        assert set(h5f) == {f"comp_{i}" for i in range(4)}
        for i, x in enumerate(xs):
            link = h5f.get(f"comp_{i}", getlink=True)
            assert isinstance(link, h5py.ExternalLink)
            assert link.filename == f"f_payload/f_{i}.h5"  # relative
            assert link.path == "/"
            arr, text, half = expected_f(x)
            # through the link
            np.testing.assert_array_equal(h5f[f"comp_{i}/result_0"][()], arr)
            assert h5f[f"comp_{i}/result_1"].asstr()[()] == text
    for i, x in enumerate(xs):
        arr, text, half = expected_f(x)
        values = read_root(out / "f_payload" / f"f_{i}.h5")
        assert set(values) == {"result_0", "result_1", "result_2"}
        np.testing.assert_array_equal(values["result_0"], arr)
        # esi-acme's layout: beside an array, each scalar is a 0-d dataset
        assert np.shape(values["result_1"]) == () and decoded(values["result_1"]) == [text]
        assert np.shape(values["result_2"]) == () and values["result_2"] == half
    assert_no_tmp(out)


@pytest.mark.parametrize("func, expected, check", [
    (one_int, lambda x: 3 * x, lambda v, e: v.dtype.kind == "i" and v[0] == e),
    (one_str, lambda x: f"Grüße {x}", lambda v, e: decoded(v) == [e]),
])
def test_single_return_value_is_result_0_of_shape_1(tmp_path, func, expected, check):
    out = tmp_path / "out"
    results, _ = run(func, [1, 2, 3], output_dir=out)
    for i, x in enumerate([1, 2, 3]):
        values = read_root(results[i])
        assert list(values) == ["result_0"]
        assert values["result_0"].shape == (1,)
        assert check(values["result_0"], expected(x)), values["result_0"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_file_names_for_indices_5_15_150(tmp_path, backend):
    out = tmp_path / "out"
    n = 151
    results, pmap = run(f, list(range(n)), backend=backend, output_dir=out)
    files = files_under(out)
    assert {p for p in files if p.startswith("f_payload/")} == payload_names("f", n)
    assert results == [str(out / "f_payload" / f"f_{i}.h5") for i in range(n)]
    for i in (5, 15, 150):
        np.testing.assert_array_equal(
            read_root(out / "f_payload" / f"f_{i}.h5")["result_0"], np.arange(5) * i)
    with h5py.File(out / "f.h5", "r") as h5f:
        assert len(h5f) == n
        for i in (5, 15, 150):
            assert h5f.get(f"comp_{i}", getlink=True).filename == f"f_payload/f_{i}.h5"
            np.testing.assert_array_equal(h5f[f"comp_{i}/result_0"][()], np.arange(5) * i)


# --------------------------------------------------------------- result_shape
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "int64"])
@pytest.mark.parametrize("shape", [(None, 100), (100, None)])
def test_virtual_result_0(tmp_path, backend, dtype, shape):
    out = tmp_path / "out"
    xs = [4, 1, 3, 0, 2]
    n = len(xs)
    results, pmap = run(row, xs, backend=backend, output_dir=out,
                        result_shape=shape, result_dtype=dtype)
    assert pmap.results_container == str(out / "row.h5")
    with h5py.File(out / "row.h5", "r") as h5f:
        dset = h5f["result_0"]
        assert dset.is_virtual
        assert dset.shape == ((n, 100) if shape[0] is None else (100, n))
        assert dset.dtype == np.dtype(dtype)
        assert sorted(s.file_name for s in dset.virtual_sources()) == \
            sorted(f"row_payload/row_{i}.h5" for i in range(n))  # relative sources
        data = dset[()]
        for i, x in enumerate(xs):
            got = data[i] if shape[0] is None else data[:, i]
            np.testing.assert_array_equal(got, expected_row(x).astype(dtype))
            # further values are reachable through esi-acme's per-value links
            np.testing.assert_array_equal(h5f[f"comp_{i}/result_1"][()], [x, -x])
            assert isinstance(h5f.get(f"comp_{i}", getlink=True), h5py.HardLink)
            link = h5f[f"comp_{i}"].get("result_1", getlink=True)
            assert isinstance(link, h5py.ExternalLink)
            assert (link.filename, link.path) == (f"row_payload/row_{i}.h5", "result_1")
            assert set(h5f[f"comp_{i}"]) == {"result_1"}
    assert_no_tmp(out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(None, np.inf), (np.inf, None)])
def test_inf_axis_takes_the_longest_call_and_pads_with_nan(tmp_path, backend, shape):
    out = tmp_path / "out"
    lengths = [3, 7, 5, 1]
    run(ragged, lengths, backend=backend, output_dir=out, result_shape=shape)
    with h5py.File(out / "ragged.h5", "r") as h5f:
        dset = h5f["result_0"]
        assert dset.is_virtual
        data = dset[()] if shape[0] is None else dset[()].T
    assert data.shape == (4, 7)
    for i, n in enumerate(lengths):
        np.testing.assert_array_equal(data[i, :n], ragged(n))
        assert np.isnan(data[i, n:]).all(), data[i]


@pytest.mark.parametrize("backend", BACKENDS)
def test_shape_mismatch_fails_that_call_only(tmp_path, backend):
    out = tmp_path / "out"
    sizes = [100, 100, 50, 100]
    with ParallelMap(sized, sizes, backend=backend, output_dir=out,
                     result_shape=(None, 100), n_workers=2) as pmap:
        with pytest.raises(ParallelMapError) as info:
            pmap.compute()
    err = info.value
    assert err.failed == [2]
    assert "(50,)" in str(err) and "(100,)" in str(err), str(err)
    cause = err.__cause__
    assert isinstance(cause, acme.ResultShapeError)
    assert "(50,)" in str(cause) and "(100,)" in str(cause)

    # the other calls' files exist; the failed call left none
    files = files_under(out)
    assert {p for p in files if p.startswith("sized_payload/")} == \
        {f"sized_payload/sized_{i}.h5" for i in (0, 1, 3)}
    assert_no_tmp(out)
    # the container is valid: one return value, so only result_0 (esi-acme's layout);
    # call 2's rows read as NaN fill
    assert pmap.results_container == str(out / "sized.h5")
    with h5py.File(out / "sized.h5", "r") as h5f:
        assert set(h5f) == {"result_0"}
        data = h5f["result_0"][()]
    assert data.shape == (4, 100)
    assert np.isnan(data[2]).all()
    for i in (0, 1, 3):
        np.testing.assert_array_equal(data[i], np.full(100, 100.0))


def floats_on_1(x):
    return np.arange(4) * x if x != 1 else np.arange(4) * 0.5


def test_dtype_mismatch_fails_that_call_only(tmp_path):
    out = tmp_path / "out"
    with ParallelMap(floats_on_1, [0, 1, 2], backend="sequential", output_dir=out,
                     result_shape=(None, 4), result_dtype="int64") as pmap:
        with pytest.raises(ParallelMapError) as info:
            pmap.compute()
    assert info.value.failed == [1]
    assert isinstance(info.value.__cause__, acme.ResultShapeError)
    assert "float64" in str(info.value) and "int64" in str(info.value)
    assert {p for p in files_under(out) if "payload" in p} == \
        {"floats_on_1_payload/floats_on_1_0.h5", "floats_on_1_payload/floats_on_1_2.h5"}
    with h5py.File(out / "floats_on_1.h5", "r") as h5f:
        assert h5f["result_0"].dtype == np.int64
        np.testing.assert_array_equal(h5f["result_0"][2], np.arange(4) * 2)


def test_moved_folder_still_reads_from_another_cwd(tmp_path, monkeypatch):
    out = tmp_path / "run" / "out"
    xs = [5, 6, 7]
    run(row, xs, output_dir=out, result_shape=(None, 10), width=10)
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(str(out), str(moved))
    shutil.rmtree(tmp_path / "run")
    # the new cwd holds a same-named decoy payload: it must not be read instead
    other = tmp_path / "unrelated"
    (other / "row_payload").mkdir(parents=True)
    with h5py.File(other / "row_payload" / "row_0.h5", "w") as decoy:
        decoy["result_0"] = np.full(10, -1)
        decoy["result_1"] = np.array([-1, -1])
    monkeypatch.chdir(other)
    with h5py.File(moved / "row.h5", "r") as h5f:
        data = h5f["result_0"][()]
        for i, x in enumerate(xs):
            np.testing.assert_array_equal(data[i], expected_row(x, 10))
            np.testing.assert_array_equal(h5f[f"comp_{i}/result_1"][()], [x, -x])
    np.testing.assert_array_equal(acme.load_stacked(str(moved)),
                                  np.stack([expected_row(x, 10) for x in xs]))


def dies_on_2(x):
    if x == 2:
        os._exit(3)  # the worker process vanishes mid-run
    return np.arange(4.0) * x


def interrupted_at_2(x):
    if x == 2:
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C during call 2
    return np.arange(4.0) * x


def test_container_valid_after_a_worker_died(tmp_path):
    out = tmp_path / "out"
    with ParallelMap(dies_on_2, [0, 1, 2, 3, 4], backend="local", n_workers=2,
                     output_dir=out, result_shape=(None, 4)) as pmap:
        with pytest.raises(ParallelMapError) as info:
            pmap.compute()
    assert info.value.failed == [2]
    assert_no_tmp(out)
    with h5py.File(out / "dies_on_2.h5", "r") as h5f:
        assert set(h5f) == {"result_0"}  # one return value: no comp_i (esi-acme)
        data = h5f["result_0"][()]
    assert np.isnan(data[2]).all()
    for i in (0, 1, 3, 4):
        np.testing.assert_array_equal(data[i], np.arange(4.0) * i)


def test_container_valid_after_an_interrupted_run(tmp_path):
    out = tmp_path / "out"
    with ParallelMap(interrupted_at_2, [0, 1, 2, 3], backend="sequential",
                     output_dir=out, result_shape=(None, 4)) as pmap:
        with pytest.raises(KeyboardInterrupt):
            pmap.compute()
    assert pmap.results_container == str(out / "interrupted_at_2.h5")
    assert_no_tmp(out)
    with h5py.File(out / "interrupted_at_2.h5", "r") as h5f:
        assert set(h5f) == {"result_0"}  # one return value: no comp_i (esi-acme)
        data = h5f["result_0"][()]
    np.testing.assert_array_equal(data[1], np.arange(4.0))
    assert np.isnan(data[2:]).all()


# ------------------------------------------------------------------ single file
@pytest.mark.parametrize("backend", BACKENDS)
def test_single_file_with_result_shape_is_one_real_dataset(tmp_path, backend):
    out = tmp_path / "out"
    xs = [2, 0, 5, 1, 3, 4]
    results, pmap = run(row, xs, backend=backend, output_dir=out, single_file=True,
                        result_shape=(None, 20), width=20)
    container = str(out / "row.h5")
    assert results == [container] and pmap.results_container == container
    files = files_under(out)
    assert {p for p in files if not p.endswith(".log")} == {"row.h5"}, files
    assert dirs_under(out) == set()  # no payload folder, no leftover part folder
    with h5py.File(container, "r") as h5f:
        dset = h5f["result_0"]
        assert not dset.is_virtual
        assert dset.shape == (6, 20) and dset.dtype == np.float64
        for i, x in enumerate(xs):
            np.testing.assert_array_equal(dset[i], expected_row(x, 20))
            assert isinstance(h5f.get(f"comp_{i}", getlink=True), h5py.HardLink)
            np.testing.assert_array_equal(h5f[f"comp_{i}/result_1"][()], [x, -x])


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_file_without_result_shape_has_groups(tmp_path, backend):
    out = tmp_path / "out"
    xs = [3, 9, 1]
    results, pmap = run(f, xs, backend=backend, output_dir=out, single_file=True)
    assert results == [str(out / "f.h5")]
    assert {p for p in files_under(out) if not p.endswith(".log")} == {"f.h5"}
    assert dirs_under(out) == set()
    with h5py.File(out / "f.h5", "r") as h5f:
        assert set(h5f) == {f"comp_{i}" for i in range(3)}
        for i, x in enumerate(xs):
            arr, text, half = expected_f(x)
            group = h5f[f"comp_{i}"]
            assert isinstance(h5f.get(f"comp_{i}", getlink=True), h5py.HardLink)
            assert set(group) == {"result_0", "result_1", "result_2"}
            np.testing.assert_array_equal(group["result_0"][()], arr)
            assert group["result_1"].asstr()[()] == text  # 0-d, as esi-acme
            assert group["result_2"].shape == () and group["result_2"][()] == half


def test_single_file_inf_axis_is_real_and_padded(tmp_path):
    out = tmp_path / "out"
    lengths = [2, 6, 4]
    run(ragged, lengths, backend="local", output_dir=out, single_file=True,
        result_shape=(None, np.inf))
    assert {p for p in files_under(out) if not p.endswith(".log")} == {"ragged.h5"}
    assert dirs_under(out) == set()
    with h5py.File(out / "ragged.h5", "r") as h5f:
        assert not h5f["result_0"].is_virtual
        data = h5f["result_0"][()]
    assert data.shape == (3, 6)
    for i, n in enumerate(lengths):
        np.testing.assert_array_equal(data[i, :n], ragged(n))
        assert np.isnan(data[i, n:]).all()


def test_single_file_concurrent_writers_every_row_right(tmp_path):
    out = tmp_path / "out"
    n = 500
    results, _ = run(row_pid, list(range(n)), backend="local", n_workers=2,
                     output_dir=out, single_file=True, result_shape=(None, 50))
    expected = np.arange(50)[None, :] + 1000 * np.arange(n)[:, None]
    with h5py.File(results[0], "r") as h5f:
        np.testing.assert_array_equal(h5f["result_0"][()], expected)
        assert len([k for k in h5f if k.startswith("comp_")]) == n
        writers = {int(h5f[f"comp_{i}/result_1"][()]) for i in range(n)}
    assert len(writers) == 2 and os.getpid() not in writers  # both workers wrote
    assert dirs_under(out) == set()


# ------------------------------------------------------------------ pickle
@pytest.mark.parametrize("backend", BACKENDS)
def test_write_pickle_one_file_per_call_no_container(tmp_path, backend):
    out = tmp_path / "out"
    xs = [4, 8, 1]
    results, pmap = run(f, xs, backend=backend, output_dir=out, write_pickle=True)
    files = files_under(out)
    assert {p for p in files if not p.endswith(".log")} == {f"f_{i}.pickle" for i in range(3)}
    assert pmap.results_container is None
    assert results == [str(out / f"f_{i}.pickle") for i in range(3)]
    for i, x in enumerate(xs):
        with open(out / f"f_{i}.pickle", "rb") as fh:
            value = pickle.load(fh)
        arr, text, half = expected_f(x)
        assert isinstance(value, tuple) and len(value) == 3
        np.testing.assert_array_equal(value[0], arr)
        assert value[1:] == (text, half)
    assert_no_tmp(out)


@pytest.mark.parametrize("func", [f, smooth])
def test_write_pickle_names_for_indices_5_15_150(tmp_path, func):
    out = tmp_path / "out"
    n = 151
    results, _ = run(func, list(range(n)), output_dir=out, write_pickle=True)
    stem = func.__name__
    assert {p for p in files_under(out) if not p.endswith(".log")} == \
        {f"{stem}_{i}.pickle" for i in range(n)}
    for i in (5, 15, 150):
        assert results[i] == str(out / f"{stem}_{i}.pickle")
        with open(results[i], "rb") as fh:
            value = pickle.load(fh)
        if func is smooth:
            assert value == i + 0.5
        else:
            np.testing.assert_array_equal(value[0], np.arange(5) * i)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unstorable_values_fall_back_to_pickle(tmp_path, backend):
    out = tmp_path / "out"
    xs = list(range(6))  # 0, 3: dict; 4: None; 1, 2, 5: arrays
    with pytest.warns(UserWarning, match="pickle"):
        results, pmap = run(maybe_dict, xs, backend=backend, output_dir=out)
    pickled = {0, 3, 4}
    files = files_under(out)
    # esi-acme's pickle files (f_i.pickle next to the container, holding [value]);
    # unlike esi-acme the container and the payloads of the other calls stay
    assert {p for p in files if p.startswith("maybe_dict_payload/")} == \
        {f"maybe_dict_payload/maybe_dict_{i}.h5" for i in set(xs) - pickled}
    assert {p for p in files if p.endswith(".pickle")} == \
        {f"maybe_dict_{i}.pickle" for i in pickled}
    for i in xs:
        if i in pickled:
            assert results[i] == str(out / f"maybe_dict_{i}.pickle")
            with open(results[i], "rb") as fh:
                assert pickle.load(fh) == [maybe_dict(i)]
        else:
            assert results[i] == str(out / "maybe_dict_payload" / f"maybe_dict_{i}.h5")
    with h5py.File(pmap.results_container, "r") as h5f:
        assert set(h5f) == {f"comp_{i}" for i in xs}  # a link for every call
        for i in (1, 2, 5):
            np.testing.assert_array_equal(h5f[f"comp_{i}/result_0"][()], np.arange(3) * i)
        for i in pickled:  # dangling: an index-based reader fails loudly
            with pytest.raises(KeyError):
                h5f[f"comp_{i}"]
    assert_no_tmp(out)


# ------------------------------------------------------------------ output_dir
def test_output_dir_is_created_nested(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "a" / "b" / "c"
    results, pmap = run(one_int, [1, 2], output_dir=str(out))
    assert out.is_dir()
    assert pmap.results_container == str(out / "one_int.h5")
    assert payload_names("one_int", 2) <= files_under(out)
    assert acme_dirs(tmp_path) == []  # no default folder besides


def test_output_dir_existing_empty_is_used(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    results, _ = run(one_int, [1, 2], output_dir=out)
    assert read_root(out / "one_int_payload" / "one_int_1.h5")["result_0"][0] == 6


def test_output_dir_non_empty_is_refused_at_construction(tmp_path):
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("earlier run")
    with pytest.raises(ValueError, match=r"resume=True"):
        ParallelMap(one_int, [1, 2], output_dir=out, backend="sequential")
    assert files_under(out, with_state=True) == {"keep.txt"}
    assert (out / "keep.txt").read_text() == "earlier run"


# ------------------------------------------------------------------ never half-written
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_write_leaves_no_file(tmp_path, backend):
    out = tmp_path / "out"
    with ParallelMap(bad_string, [0, 1, 2, 3], backend=backend, output_dir=out,
                     n_workers=2) as pmap:
        with pytest.raises(ParallelMapError) as info:
            pmap.compute()
    assert info.value.failed == [2]
    assert {p for p in files_under(out) if p.startswith("bad_string_payload/")} == \
        {f"bad_string_payload/bad_string_{i}.h5" for i in (0, 1, 3)}
    assert_no_tmp(out)
    with h5py.File(out / "bad_string.h5", "r") as h5f:
        assert set(h5f) == {f"comp_{i}" for i in range(4)}  # esi-acme: one per call
        with pytest.raises(KeyError):  # call 2's link dangles
            h5f["comp_2"]
        assert h5f["comp_3/result_1"].asstr()[()] == "fine"


# ------------------------------------------------------------------ value types
ROUND_TRIP = [
    # (value, the values of its datasets result_0, result_1, ... or None: pickled).
    # esi-acme's layout: numbers and strings together are one dataset; a list of
    # anything else is several values, one dataset each
    (True, [[True]]),
    (1 + 2j, [[1 + 2j]]),
    (np.float16(2.5), [np.array([2.5], dtype=np.float16)]),
    (np.uint64(2 ** 63), [np.array([2 ** 63], dtype=np.uint64)]),
    (np.zeros(0), [np.zeros(0)]),
    ([[1, 2], [3, 4]], [[1, 2], [3, 4]]),
    ("", [[""]]),
    (["a", "bcd"], [["a", "bcd"]]),
    (np.array(["x", "yz"]), [["x", "yz"]]),
    (b"\xffraw", [b"\xffraw"]),       # not a str: a 0-d dataset of its own
    (b"nul\x00inside", None),         # a variable-length HDF5 string ends at NUL
    ([1, "a"], [1, "a"]),             # one dataset would turn 1 into "1": two
    ([1.5, b"b"], [1.5, b"b"]),
    (2 ** 70, None),                  # no HDF5 integer that wide
    (np.datetime64("2020-01-01"), None),
    ([np.zeros(2), np.zeros(3)], [np.zeros(2), np.zeros(3)]),
]


def typed(i):
    return ROUND_TRIP[i][0]


def _same(got, value):
    """Whether the dataset value ``got`` holds ``value`` (h5py reads strings as bytes)."""
    if isinstance(value, bytes):
        return got == value
    if isinstance(value, str):
        return decoded(got) == [value]
    expected = np.asarray(value)
    if expected.dtype.kind == "U":
        return decoded(got) == expected.ravel().tolist()
    return np.asarray(got).dtype == expected.dtype and np.array_equal(got, expected) \
        and np.shape(got) == expected.shape


def test_values_keep_their_type_or_are_pickled(tmp_path):
    out = tmp_path / "out"
    n = len(ROUND_TRIP)
    with pytest.warns(UserWarning, match="pickle"):
        results, pmap = run(typed, list(range(n)), output_dir=out)
    for i, (value, datasets) in enumerate(ROUND_TRIP):
        if datasets is not None:
            assert results[i].endswith(f"typed_{i}.h5"), (value, results[i])
            got = read_root(results[i])
            assert list(got) == [f"result_{k}" for k in range(len(datasets))], (value, got)
            for k, want in enumerate(datasets):
                assert _same(got[f"result_{k}"], want), (value, k, got)
        else:
            assert results[i] == str(out / f"typed_{i}.pickle"), (value, results[i])
            with open(results[i], "rb") as fh:
                got = pickle.load(fh)  # esi-acme's fallback pickle: [value]
            assert got == [value] and type(got[0]) is type(value)


def matrix(x):
    return np.arange(6.0).reshape(2, 3) + 10 * x


def scalar(x):
    return x * 1.5


@pytest.mark.parametrize("single_file", [False, True])
def test_stacking_axis_in_the_middle_and_scalar_calls(tmp_path, single_file):
    xs = [0, 1, 2, 3]
    out = tmp_path / "matrix"
    run(matrix, xs, backend="local", output_dir=out, single_file=single_file,
        result_shape=(2, None, 3))
    expected = np.stack([matrix(x) for x in xs], axis=1)
    with h5py.File(out / "matrix.h5", "r") as h5f:
        assert h5f["result_0"].is_virtual is not single_file
        np.testing.assert_array_equal(h5f["result_0"][()], expected)

    # result_shape=(None,): each call returns one number (a 0-d payload, as esi-acme)
    out = tmp_path / "scalar"
    run(scalar, xs, output_dir=out, single_file=single_file, result_shape=(None,))
    with h5py.File(out / "scalar.h5", "r") as h5f:
        assert h5f["result_0"].is_virtual is not single_file
        np.testing.assert_array_equal(h5f["result_0"][()], [0.0, 1.5, 3.0, 4.5])
    if not single_file:
        assert read_root(out / "scalar_payload" / "scalar_3.h5")["result_0"].shape == ()


# ------------------------------------------------------------------ write-then-rename
@pytest.mark.parametrize("mode", [dict(result_shape=(None, 5)), dict(write_pickle=True)])
def test_results_are_written_under_a_temporary_name_then_renamed(tmp_path, monkeypatch,
                                                                  mode):
    """Every HDF5 file or pickle acme writes is created under a temporary name in the
    final folder (so the rename is atomic); the final name never holds a partial file."""
    writes = []
    real_file = h5py.File

    class RecordingFile(real_file):
        def __init__(self, name, mode="r", *args, **kwargs):
            if mode != "r":
                writes.append((os.fspath(name), os.path.exists(name)))
            super().__init__(name, mode, *args, **kwargs)

    real_dump = pickle.dump

    def recording_dump(obj, fh, *args, **kwargs):
        writes.append((fh.name, os.path.exists(fh.name) and os.path.getsize(fh.name) > 0))
        return real_dump(obj, fh, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", RecordingFile)
    monkeypatch.setattr(pickle, "dump", recording_dump)
    out = tmp_path / "out"
    results, pmap = run(f, [1, 2, 3], output_dir=out, **mode)
    monkeypatch.undo()

    final = set(results) | ({pmap.results_container} if pmap.results_container else set())
    assert len(writes) == len(final), writes
    for path, existed_before in writes:
        assert path not in final, f"{path} was written in place"
        name = os.path.basename(path)
        assert name.startswith(".") and name.endswith(".tmp"), path
        assert os.path.dirname(path) in {os.path.dirname(p) for p in final}
        assert not existed_before
        assert not os.path.exists(path)  # renamed away
    assert all(os.path.isfile(p) for p in final)
