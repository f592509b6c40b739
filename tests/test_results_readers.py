"""``acme.load_call`` / ``acme.load_stacked``: reading results back without knowing
the layout, and loud errors where a result is missing (issue 3, item 9)."""
from __future__ import annotations

import os
import pickle

import h5py
import numpy as np
import pytest

import acme
from acme import MissingResultError, ParallelMap, ParallelMapError

pytestmark = pytest.mark.timeout(60)


def pair(x):
    return np.arange(10.0) + 100 * x, np.array([x, x * x])


def values_of(x):
    a, b = pair(x)
    return [a, b]


def only_row(x):
    if x == 2:
        raise RuntimeError("call with x=2 fails")
    return np.arange(10.0) + 100 * x


def odd_one(x):
    return {"x": x} if x == 1 else np.arange(4) * x


XS = [3, 1, 4, 0]
STACKED = np.stack([pair(x)[0] for x in XS])


def compute(func, xs, out, **kwargs):
    with ParallelMap(func, xs, backend="sequential", output_dir=out, **kwargs) as pmap:
        return pmap.compute(), pmap


def assert_values(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("mode", [
    dict(result_shape=(None, 10)),
    dict(result_shape=(None, 10), single_file=True),
])
def test_load_stacked_and_load_call(tmp_path, mode):
    out = tmp_path / "out"
    _, pmap = compute(pair, XS, out, **mode)
    stacked = acme.load_stacked(str(out))
    np.testing.assert_array_equal(stacked, STACKED)
    np.testing.assert_array_equal(acme.load_stacked(pmap.results_container), STACKED)
    for i, x in enumerate(XS):
        assert_values(acme.load_call(str(out), i), values_of(x))
    assert acme.find_container(str(out)) == pmap.results_container


def test_load_stacked_with_columns_as_calls(tmp_path):
    out = tmp_path / "out"
    compute(pair, XS, out, result_shape=(10, None))
    np.testing.assert_array_equal(acme.load_stacked(out), STACKED.T)
    assert_values(acme.load_call(out, 2), values_of(4))


@pytest.mark.parametrize("mode", [dict(), dict(single_file=True)])
def test_load_call_without_result_shape(tmp_path, mode):
    out = tmp_path / "out"
    compute(pair, XS, out, **mode)
    for i, x in enumerate(XS):
        assert_values(acme.load_call(out, i), values_of(x))
    with pytest.raises(KeyError, match="result_shape"):
        acme.load_stacked(out)


def test_load_call_reads_pickles(tmp_path):
    out = tmp_path / "out"
    compute(pair, XS, out, write_pickle=True)
    value = acme.load_call(out, 2)
    assert isinstance(value, list)  # always a list of the values, also for pickles
    assert_values(value, values_of(4))

    os.remove(out / "pair_2.pickle")
    with pytest.raises(MissingResultError) as info:
        acme.load_call(out, 2)
    assert info.value.calls == [2] and "2" in str(info.value)

    out2 = tmp_path / "fallback"
    with pytest.warns(UserWarning):
        compute(odd_one, [0, 1, 2], out2)
    assert acme.load_call(out2, 1) == [{"x": 1}]
    assert_values(acme.load_call(out2, 2), [np.arange(4) * 2])


def test_deleted_payload_is_named(tmp_path):
    out = tmp_path / "out"
    results, _ = compute(pair, XS, out, result_shape=(None, 10))
    os.remove(results[2])
    # plain h5py silently reads fill values here; the readers must not
    with pytest.raises(MissingResultError) as info:
        acme.load_stacked(out)
    assert info.value.calls == [2] and "2" in str(info.value)
    with pytest.raises(MissingResultError) as info:
        acme.load_call(out, 2)
    assert info.value.calls == [2] and "2" in str(info.value)
    assert_values(acme.load_call(out, 1), values_of(1))


@pytest.mark.parametrize("mode", [
    dict(result_shape=(None, 10)),
    dict(result_shape=(None, 10), single_file=True),
    dict(),
])
def test_failed_call_is_missing_not_fill(tmp_path, mode):
    out = tmp_path / "out"
    with pytest.raises(ParallelMapError):
        compute(only_row, [0, 1, 2, 3], out, **mode)
    with pytest.raises(MissingResultError) as info:
        acme.load_call(out, 2)
    assert info.value.calls == [2]
    np.testing.assert_array_equal(acme.load_call(out, 3)[0], np.arange(10.0) + 300)
    if mode:
        with pytest.raises(MissingResultError) as info:
            acme.load_stacked(out)
        assert info.value.calls == [2]


def ragged(n):
    return np.arange(1.0, n + 1)


@pytest.mark.parametrize("mode", [
    dict(result_shape=(None, np.inf)),
    dict(result_shape=(np.inf, None)),
    dict(result_shape=(None, np.inf), single_file=True),
])
def test_load_stacked_pads_inf_axis_with_nan(tmp_path, mode):
    out = tmp_path / "out"
    lengths = [3, 700, 1]
    compute(ragged, lengths, out, **mode)
    stacked = acme.load_stacked(out)
    rows = stacked if mode["result_shape"][0] is None else stacked.T
    assert rows.shape == (3, 700)
    for i, n in enumerate(lengths):
        np.testing.assert_array_equal(rows[i, :n], ragged(n))
        assert np.isnan(rows[i, n:]).all(), rows[i, n:n + 5]
    with h5py.File(out / "ragged.h5", "r") as h5f:  # the same as plain h5py reads
        np.testing.assert_array_equal(stacked, h5f["result_0"][()])
