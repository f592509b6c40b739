"""Arguments that are the same for every call reach each worker once, not once per
call; only the values that differ travel with each call.

``pmap.stats["bytes_to_workers"]`` counts the bytes the local backend really wrote
to the workers' pipes.
"""
from __future__ import annotations

import numpy as np
import pytest

from acme import ParallelMap

MB = 2 ** 20
BIG_BYTES = 50 * MB
N_CALLS = 40
#: what may travel besides the big constant: the function, call messages, pickling
MARGIN = 1 * MB

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def big():
    """A 50 MB constant, 2-D so that it is not split (element k is k)."""
    return np.arange(BIG_BYTES // 8, dtype=np.float64).reshape(-1, 1024)


def pick(i, data):
    return float(data.flat[i * 1000]) + i


def pick_with_blob(i, data, blob):
    # what this call received: its index, a value from the constant, its own blob
    return i, float(data.flat[i * 1000]), len(blob), blob[:1]


def run(func, *args, **kwargs):
    with ParallelMap(func, *args, write_worker_results=False, backend="local",
                     n_workers=2, **kwargs) as pmap:
        results = pmap.compute()
        return results, dict(pmap.stats)


@pytest.mark.parametrize("layout", ["2-D", "1-D with n_inputs"])
def test_big_constant_is_sent_once_per_worker(big, layout, no_leftover_processes):
    assert big.nbytes == BIG_BYTES
    if layout == "2-D":
        results, stats = run(pick, list(range(N_CALLS)), big)
    else:  # a 1-D array of another length than n_inputs is the same for every call
        results, stats = run(pick, list(range(N_CALLS)), big.ravel(), n_inputs=N_CALLS)
    assert results == [i * 1000.0 + i for i in range(N_CALLS)]
    sent = stats["bytes_to_workers"]
    workers = stats["workers_started"]
    assert workers == 2
    # it did travel (once per worker) ...
    assert sent >= workers * BIG_BYTES
    # ... but not per call: 40 calls would be 2 GB
    assert sent < workers * BIG_BYTES + MARGIN, \
        f"{sent / MB:.1f} MB sent to {workers} workers for a 50 MB constant"
    assert sent < N_CALLS * BIG_BYTES / 10


def test_varying_argument_is_sent_per_call_only(big, no_leftover_processes):
    """Bytes grow with the per-call values, not with the constant."""
    def blobs(size):
        return [bytes([i]) * size for i in range(N_CALLS)]

    small_size, large_size = 10_000, 200_000
    out_small, small = run(pick_with_blob, list(range(N_CALLS)), big, blobs(small_size))
    out_large, large = run(pick_with_blob, list(range(N_CALLS)), big, blobs(large_size))

    for out, size in ((out_small, small_size), (out_large, large_size)):
        assert out == [(i, i * 1000.0, size, bytes([i])) for i in range(N_CALLS)]
    assert small["workers_started"] == large["workers_started"] == 2

    # every blob travelled once: the difference is the difference of the blobs
    growth = large["bytes_to_workers"] - small["bytes_to_workers"]
    expected = N_CALLS * (large_size - small_size)
    assert expected <= growth < expected + 64 * 1024, (growth, expected)

    # and the constant still only once per worker
    constant_part = large["bytes_to_workers"] - N_CALLS * large_size
    assert 2 * BIG_BYTES <= constant_part < 2 * BIG_BYTES + MARGIN


def test_constant_cost_grows_with_workers_not_calls(no_leftover_processes):
    """Doubling the calls adds (almost) nothing; the per-worker copy dominates."""
    data = np.arange(5 * MB // 8, dtype=np.float64).reshape(-1, 1024)
    _, few = run(pick, list(range(10)), data)
    _, many = run(pick, list(range(80)), data)
    assert few["workers_started"] == many["workers_started"] == 2
    assert many["bytes_to_workers"] - few["bytes_to_workers"] < 64 * 1024
