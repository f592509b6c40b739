"""Run one ParallelMap in a given result mode and save a normalized copy of what
came out (read back with plain h5py/pickle), so tests can compare backends.

usage: modes.py MODE OUTDIR SUMMARY.pkl [backend]
"""
import os
import pickle
import sys

import numpy as np

from acme import ParallelMap

N = 13


def work(x, scale, taskID=None):
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMIX_RANK", "-1")))
    return np.arange(8, dtype=float) * x * scale, float(taskID), rank


def single(x, scale):
    return np.arange(8, dtype=float) * x * scale


MODES = {
    "memory": (work, dict(write_worker_results=False)),
    "memory_shape": (single, dict(write_worker_results=False, result_shape=(None, 8))),
    "files": (work, dict()),
    "vds": (work, dict(result_shape=(None, 8))),
    "single_shape": (work, dict(single_file=True, result_shape=(8, None))),
    "single_groups": (work, dict(single_file=True)),
    "pickle": (work, dict(write_pickle=True)),
}


def _read_h5(node):
    import h5py
    out = {}
    for key in node:
        item = node[key]
        out[key] = _read_h5(item) if isinstance(item, h5py.Group) else item[()]
    return out


def normalize(mode, results, container):
    """A plain structure of everything the run produced (ranks kept separately)."""
    import h5py
    if mode.startswith("memory"):
        return {"values": results}
    if mode == "pickle":
        values = []
        for path in results:
            with open(path, "rb") as fh:
                values.append(pickle.load(fh))
        return {"names": [os.path.basename(p) for p in results], "values": values}
    with h5py.File(container, "r") as h5f:
        content = _read_h5(h5f)
        virtual = "result_0" in h5f and h5f["result_0"].is_virtual
    return {"names": [os.path.relpath(p, os.path.dirname(container)) for p in results],
            "container": os.path.basename(container), "content": content,
            "virtual": virtual}


def split_ranks(mode, data):
    """Take out the rank each call reported (it differs between backends); return
    (data, ranks)."""
    ranks = []
    if mode in ("memory", "pickle"):
        data["values"] = [(a, t, ranks.append(r)) for a, t, r in data["values"]]
    elif mode in ("files", "vds", "single_shape", "single_groups"):
        for name, group in data["content"].items():
            if name.startswith("comp_"):
                ranks.append(int(np.asarray(group.pop("result_2")).reshape(-1)[0]))  # 0-d or (1,)
    return data, ranks


def assert_same(a, b):
    """Two normalized summaries hold the same names and values."""
    if isinstance(a, dict):
        assert set(a) == set(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


def main(mode, outdir, summary, backend="auto"):
    func, kwargs = MODES[mode]
    if kwargs.get("write_worker_results", True):
        kwargs = dict(kwargs, output_dir=outdir)
    with ParallelMap(func, list(range(N)), 2.0, backend=backend, verbose=False,
                     **kwargs) as pmap:
        results = pmap.compute()
    data = normalize(mode, results, pmap.results_container)
    with open(summary, "wb") as fh:
        pickle.dump(data, fh)


if __name__ == "__main__":
    main(*sys.argv[1:])
