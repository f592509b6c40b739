"""The files acme writes are the files esi-acme 2026.6.2 writes (issue 14, "differences
already seen"), checked against the real esi-acme in its own virtual environment.

One script (LAYOUT_SCRIPT) runs the same maps under both packages -- esi-acme in its
venv, acme on the local, sequential and MPI backends -- and describes every file it
left with plain h5py/pickle: datasets (shape, dtype, maxshape, virtual or not, values),
groups, links (kind, target, dangling or not), pickles (what they hold). The
descriptions must be equal except for the differences acme keeps on purpose, each
with its reason in the README (KEPT below). Then acme's own readers read the new
layouts, and folders in the layout acme wrote before this change.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import acme
from acme import MissingResultError, ParallelMap

from conftest import require

ESI_VENV = Path(os.environ.get("ACME_ESI_VENV",
                               Path.home() / ".cache" / "acme-test" / "esi-acme"))
SLURM_COMMANDS = ("sinfo", "squeue", "srun", "sbatch", "scancel", "scontrol", "sacct")

LAYOUT_SCRIPT = r'''
import json, os, pickle, shutil, sys
import h5py
import numpy as np
import acme

def scalar(x):                 # one number
    return 2 * x

def two_scalars(x):            # numbers only: esi-acme writes one dataset
    return x, 0.5 * x

def array_and_scalar(x):       # an array beside a scalar: 0-d dataset of its own dtype
    return np.arange(3) * x, x

def arrays_in_a_list(x):       # a list of arrays is several values
    return [np.ones(2) * x, np.zeros(3)]

def ragged(x):                 # for an np.inf axis
    return np.arange(x, dtype=float)

def fails_on_4(x):
    if x == 4:
        raise ValueError("boom")
    return np.ones(3) * x, x

def dict_on_4(x):              # HDF5 cannot hold a dict: pickled
    return {"a": x} if x == 4 else np.ones(2) * x

CASES = {
    "scalar": (scalar, {}),
    "scalar_shape": (scalar, dict(result_shape=(None,))),
    "scalar_shape_int32": (scalar, dict(result_shape=(None,), result_dtype="int32")),
    "two_scalars": (two_scalars, {}),
    "two_scalars_single": (two_scalars, dict(single_file=True)),
    "two_scalars_shape": (two_scalars, dict(result_shape=(None,))),
    "two_scalars_shape_single": (two_scalars, dict(result_shape=(None,), single_file=True)),
    "array_and_scalar": (array_and_scalar, {}),
    "array_and_scalar_single": (array_and_scalar, dict(single_file=True)),
    "array_and_scalar_shape": (array_and_scalar, dict(result_shape=(None, 3))),
    "array_and_scalar_shape_last": (array_and_scalar, dict(result_shape=(3, None))),
    "arrays_in_a_list": (arrays_in_a_list, {}),
    "inf_axis": (ragged, dict(result_shape=(None, np.inf))),
    "inf_axis_single": (ragged, dict(result_shape=(None, np.inf), single_file=True)),
    "failed_call": (fails_on_4, {}),
    "failed_call_single": (fails_on_4, dict(single_file=True)),
    "fallback_pickle": (dict_on_4, {}),
}

def describe_object(h5f, name, out):
    link = h5f.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        try:
            target = h5f[name]
            dangling = False
        except KeyError:
            dangling = True
        out[name] = ["external", link.filename, link.path, dangling]
        return
    obj = h5f[name]
    if isinstance(obj, h5py.Group):
        out[name] = ["group", sorted(obj)]
        for key in obj:
            describe_object(h5f, f"{name}/{key}", out)
        return
    value = obj[()]
    value = value.tolist() if isinstance(value, np.ndarray) else np.asarray(value).tolist()
    if isinstance(value, bytes):
        value = value.decode()
    sources = None
    if obj.is_virtual:  # file names only: esi-acme writes them absolute, acme relative
        sources = sorted(os.path.basename(s.file_name) for s in obj.virtual_sources())
    value = json.loads(json.dumps(value, default=str).replace("NaN", "null"))
    out[name] = ["dataset", list(obj.shape), str(obj.dtype),
                 [None if m is None else m for m in obj.maxshape], obj.is_virtual,
                 value, sources]

def describe(folder):
    found = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.endswith(".log") or name.startswith("."):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if name.endswith(".h5"):
                items = {}
                with h5py.File(path, "r") as h5f:
                    for key in h5f:
                        describe_object(h5f, key, items)
                found[rel] = items
            elif name.endswith(".pickle"):
                with open(path, "rb") as fh:
                    held = pickle.load(fh)
                found[rel] = ["pickle", type(held).__name__, repr(held)]
    return found

def main():
    esi, root = sys.argv[1] == "esi", sys.argv[2]
    names = sys.argv[3].split(",")
    client = acme.local_cluster_setup(n_workers=2, interactive=False) if esi else None
    report = {}
    for name in names:
        func, options = CASES[name]
        out = os.path.join(root, name)
        extra = {} if esi else dict(backend=sys.argv[4])
        if not esi and extra["backend"] == "local":
            extra["n_workers"] = 2
        # esi-acme's Dask client now and then loses the function sent for an earlier
        # map ("computation on lost data"): such a run is tried again, in a new folder
        for attempt in range(3):
            if os.path.exists(out):
                shutil.rmtree(out)
            try:
                with acme.ParallelMap(func, [2, 4, 6], output_dir=out, verbose=False,
                                      setup_interactive=False, **options, **extra) as pmap:
                    returned = pmap.compute()
                outcome = [os.path.relpath(p, out) for p in returned]
            except Exception as exc:  # esi-acme: RuntimeError, acme: ParallelMapError
                outcome = "raised RuntimeError" if isinstance(exc, RuntimeError) else repr(exc)
            if not esi or outcome != "raised RuntimeError" or name.startswith("failed"):
                break
        report[name] = {"returned": outcome, "files": describe(out)}
    if client is not None:
        acme.cluster_cleanup(client)
    print("REPORT " + json.dumps(report))

if __name__ == "__main__":
    main()
'''

CASES = ["scalar", "scalar_shape", "scalar_shape_int32", "two_scalars",
         "two_scalars_single", "two_scalars_shape", "two_scalars_shape_single",
         "array_and_scalar", "array_and_scalar_single", "array_and_scalar_shape",
         "array_and_scalar_shape_last", "arrays_in_a_list", "inf_axis", "inf_axis_single",
         "failed_call", "failed_call_single", "fallback_pickle"]


def _report(stdout: str) -> dict:
    assert "REPORT " in stdout, stdout[-3000:]
    return json.loads(stdout.split("REPORT ", 1)[1].splitlines()[0])


def _run_esi(tmp_path: Path, script: Path, names: list) -> dict:
    """The script under the real esi-acme (its own venv, SLURM commands stubbed out,
    started outside our checkout so that ``import acme`` is esi-acme)."""
    python = ESI_VENV / "bin" / "python"
    require(python.exists(), f"no esi-acme venv at {ESI_VENV} (scripts/esi_acme_env.sh)")
    stubs = tmp_path / "nosl"
    stubs.mkdir()
    for name in SLURM_COMMANDS:
        (stubs / name).write_text("#!/bin/sh\nexit 127\n")
        (stubs / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{stubs}:{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen([str(python), "-I", str(script), "esi", str(tmp_path / "esi"),
                             ",".join(names)], cwd=str(tmp_path), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the script and its workers
        out, err = proc.communicate()
        pytest.fail(f"esi-acme did not finish in 240 s\n{err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    return _report(out)


def _run_acme(tmp_path: Path, script: Path, names: list, backend: str) -> dict:
    if backend == "mpi":
        from mpi_helpers import run_mpi
        proc = run_mpi(str(script), 3, "acme", str(tmp_path / backend), ",".join(names),
                       backend, timeout=240, cwd=str(tmp_path))
    else:
        from conftest import run_script
        proc = run_script(script, timeout=240, cwd=tmp_path,
                          args=["acme", str(tmp_path / backend), ",".join(names), backend])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return _report(proc.stdout)


def _kept(name: str, esi: dict, ours: dict) -> tuple[dict, dict]:
    """The descriptions with the differences acme keeps on purpose taken out (each
    is in the README's "differences from esi-acme", with its reason):

    * fill value NaN, not 0, of float stacked datasets: a missing call or the
      padding of an ``np.inf`` axis must not read as real zeros (fill values are
      not in the descriptions; padded values are, so NaN is compared as 0 here);
    * the virtual dataset maps only calls that have a result (esi-acme maps every
      call and a missing one reads as fill, or as a same-named file elsewhere), and
      its sources are relative (the folder can be moved);
    * a value HDF5 cannot hold: esi-acme then deletes the container, moves every
      payload out of ``f_payload/`` and returns no container; acme keeps the
      container (the other calls stay readable through it) and the payloads, and
      writes esi-acme's ``f_i.pickle`` (holding ``[value]``) next to it;
    * a failed call: esi-acme raises before it adds ``comp_i/result_k`` links with
      result_shape; acme finishes the container (here none of those cases fails);
    * single_file with an ``np.inf`` axis: esi-acme resizes ``result_0`` as calls
      come in and cuts the values of calls written before a longer one (seen here:
      call 1's ``[0, 1, 2, 3]`` read back as ``[0, 1, 0, 0]``), depending on the
      order the calls finish: its values are replaced by the true ones.
    """
    def clean(desc: dict, esi_side: bool) -> dict:
        files = {}
        for rel, items in desc["files"].items():
            if isinstance(items, dict):
                items = {k: (v[:5] + [json.loads(json.dumps(v[5]).replace("null", "0.0")
                                                 .replace("NaN", "0.0")), None]
                             if v[0] == "dataset" else v) for k, v in items.items()}
            files[rel] = items
        returned = desc["returned"]
        if name == "inf_axis_single":  # esi-acme's values are wrong (defect): the truth
            dset = files["ragged.h5"]["result_0"]
            if esi_side:
                dset[5] = [list(np.arange(x, dtype=float)) + [0.0] * (6 - x)
                           for x in (2, 4, 6)]
        if name == "fallback_pickle":
            if esi_side:  # esi-acme moved the payloads to the top: put them back
                files = {(rel if rel.endswith(".pickle") or rel == "dict_on_4.h5"
                          else f"dict_on_4_payload/{rel}"): v for rel, v in files.items()}
                returned = [r if r.endswith(".pickle") else f"dict_on_4_payload/{r}"
                            for r in returned]
            else:  # the container acme keeps
                files.pop("dict_on_4.h5")
        return {"returned": returned, "files": files}
    return clean(esi, True), clean(ours, False)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("layouts")
    script = tmp_path / "layout_script.py"
    script.write_text(LAYOUT_SCRIPT)
    return {"esi": _run_esi(tmp_path, script, CASES), "tmp": tmp_path, "script": script}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", ["local", "sequential"])
def test_files_are_the_files_esi_acme_writes(layouts, backend):
    ours = _run_acme(layouts["tmp"], layouts["script"], CASES, backend)
    differ = []
    for name in CASES:
        esi, mine = _kept(name, layouts["esi"][name], ours[name])
        if esi != mine:
            differ.append(f"--- {name}\nesi-acme: {json.dumps(esi, indent=1)}\n"
                          f"acme:     {json.dumps(mine, indent=1)}")
    assert not differ, "\n".join(differ)


@pytest.mark.timeout(600)
def test_files_are_the_files_esi_acme_writes_under_mpi(layouts):
    names = ["scalar_shape", "two_scalars_single", "array_and_scalar_shape",
             "two_scalars_shape_single", "inf_axis_single", "failed_call_single",
             "failed_call"]
    ours = _run_acme(layouts["tmp"], layouts["script"], names, "mpi")
    for name in names:
        esi, mine = _kept(name, layouts["esi"][name], ours[name])
        assert esi == mine, (name, esi, mine)


def test_esi_acme_files_themselves_show_the_rules(layouts):
    """The esi-acme facts this layout follows, as esi-acme wrote them."""
    esi = layouts["esi"]
    payload = esi["two_scalars"]["files"]["two_scalars_payload/two_scalars_1.h5"]
    assert payload == {"result_0": ["dataset", [2], "float64", [2], False, [4.0, 2.0], None]}
    payload = esi["scalar_shape"]["files"]["scalar_payload/scalar_1.h5"]
    assert payload["result_0"][1:3] == [[], "int64"]  # 0-d, the value's own dtype
    container = esi["array_and_scalar_shape"]["files"]["array_and_scalar.h5"]
    assert container["comp_1"] == ["group", ["result_1"]]
    assert container["comp_1/result_1"][:3] == \
        ["external", "array_and_scalar_payload/array_and_scalar_1.h5", "result_1"]
    assert "comp_1" not in esi["scalar_shape"]["files"]["scalar.h5"]
    assert esi["inf_axis"]["files"]["ragged.h5"]["result_0"][3] == [3, None]
    assert esi["failed_call"]["files"]["fails_on_4.h5"]["comp_1"][3] is True  # dangling
    assert esi["failed_call_single"]["files"]["fails_on_4.h5"]["comp_1"] == ["group", []]
    assert esi["fallback_pickle"]["files"]["dict_on_4_1.pickle"] == \
        ["pickle", "list", "[{'a': 4}]"]


# ------------------------------------------------------------------ acme's readers
def several(x):
    return np.arange(3.0) * x, x


def scalar(x):
    return 2 * x


def run(func, xs, out, **options):
    with ParallelMap(func, xs, output_dir=str(out), backend="sequential", verbose=False,
                     **options) as pmap:
        return pmap.compute(), pmap


def test_the_documented_esi_acme_loop_fails_loudly_on_a_failed_call(tmp_path):
    """esi-acme's documented reading loop ``for k, key in enumerate(h5f.keys())`` must
    not shift later calls into the place of a failed one: its link is there, and
    dangles."""
    def fails_on_1(x):
        if x == 1:
            raise ValueError("boom")
        return np.full(2, float(x))
    with pytest.raises(acme.ParallelMapError):
        run(fails_on_1, [0, 1, 2], tmp_path / "out")
    with h5py.File(tmp_path / "out" / "fails_on_1.h5", "r") as h5f:
        keys = list(h5f.keys())
        assert keys == ["comp_0", "comp_1", "comp_2"]
        read = {}
        for k, key in enumerate(keys):
            try:
                read[k] = h5f[key]["result_0"][()]
            except KeyError:
                read[k] = "missing"
    assert read[1] == "missing" and read[2].tolist() == [2.0, 2.0]


def test_load_call_is_always_a_list(tmp_path):
    """One rule for every storage: the list of the call's values."""
    run(several, [1, 2], tmp_path / "h5")
    run(several, [1, 2], tmp_path / "pickle", write_pickle=True)
    with pytest.warns(UserWarning, match="pickled instead"):
        run(lambda x: {"x": x}, [1, 2], tmp_path / "fallback")
    h5 = acme.load_call(tmp_path / "h5", 1)
    assert isinstance(h5, list) and h5[0].tolist() == [0.0, 2.0, 4.0] and h5[1] == 2
    assert np.shape(h5[1]) == ()
    pickled = acme.load_call(tmp_path / "pickle", 1)
    assert isinstance(pickled, list) and pickled[0].tolist() == [0.0, 2.0, 4.0]
    assert pickled[1] == 2
    assert acme.load_call(tmp_path / "fallback", 0) == [{"x": 1}]
    with open(tmp_path / "fallback" / "lambda_0.pickle", "rb") as fh:
        assert pickle.load(fh) == [{"x": 1}]  # esi-acme's fallback file


def test_stacked_scalars_and_other_values_read_back(tmp_path):
    run(several, [1, 2, 3], tmp_path / "out", result_shape=(None, 3))
    np.testing.assert_array_equal(acme.load_stacked(tmp_path / "out"),
                                  [np.arange(3.0) * x for x in [1, 2, 3]])
    assert [v.tolist() for v in acme.load_call(tmp_path / "out", 2)] == [[0.0, 3.0, 6.0], 3]
    run(scalar, [1, 2, 3], tmp_path / "int", result_shape=(None,), result_dtype="int32")
    stacked = acme.load_stacked(tmp_path / "int")
    assert stacked.dtype == np.int32 and stacked.tolist() == [2, 4, 6]


def test_whole_floats_are_stored_as_result_dtype_int(tmp_path):
    """esi-acme casts floats to an integer result_dtype; acme does where nothing is
    lost (whole numbers) and refuses the call otherwise."""
    def floats(x):
        return np.arange(3.0) + x / (4 if x == 1 else 1)
    with pytest.raises(acme.ParallelMapError) as info:
        run(floats, [0, 1, 2], tmp_path / "out", result_shape=(None, 3),
            result_dtype="int32")
    assert info.value.failed == [1] and "0.25" in str(info.value)
    np.testing.assert_array_equal(acme.load_call(tmp_path / "out", 2)[0], [2.0, 3.0, 4.0])
    with h5py.File(tmp_path / "out" / "floats.h5", "r") as h5f:
        assert h5f["result_0"].dtype == np.int32
        assert h5f["result_0"][2].tolist() == [2, 3, 4]


def _make_old_layout(out: Path, stem: str, spec: bool) -> None:
    """Rewrite a run's files into the layout acme wrote before 2026-12: scalars of
    shape (1,) cast to result_dtype, comp_i -> whole payload links also with
    result_shape, and the journal's sizes to match (as that version recorded them)."""
    journal = out / ".acme" / "done"
    lines = []
    for line in journal.read_text().splitlines():
        index, rel, _ = line.split(" ")
        path = out / rel
        with h5py.File(path, "r") as h5f:
            values = {k: h5f[k][()] for k in h5f}
        with h5py.File(path, "w") as h5f:
            for k, v in values.items():
                v = np.asarray(v, dtype=float if spec and k == "result_0" else None)
                h5f[k] = v.reshape(1) if v.ndim == 0 else v
        lines.append(f"{index} {rel} {path.stat().st_size}")
    journal.write_text("\n".join(lines) + "\n")
    with h5py.File(out / f"{stem}.h5", "a") as h5f:
        for name in [n for n in h5f if n.startswith("comp_")]:
            del h5f[name]
        for index in range(len(lines)):
            h5f[f"comp_{index}"] = h5py.ExternalLink(f"{stem}_payload/{stem}_{index}.h5", "/")


def test_folders_in_the_layout_of_acme_before_are_read_and_resumed(tmp_path):
    out = tmp_path / "old"
    run(scalar, [1, 2, 3], out, result_shape=(None,))
    _make_old_layout(out, "scalar", spec=True)
    # the readers
    assert acme.load_call(out, 1)[0].tolist() == [4.0]
    assert acme.load_stacked(out).tolist() == [2.0, 4.0, 6.0]
    # a resume takes the old files as results and rebuilds the container
    results, pmap = run(scalar, [1, 2, 3], out, result_shape=(None,), resume=True)
    with h5py.File(pmap.results_container, "r") as h5f:
        assert h5f["result_0"][()].tolist() == [2.0, 4.0, 6.0]
        assert "comp_0" not in h5f  # esi-acme's layout now: one return value
    # an old fallback pickle (f_payload/f_i.pickle, holding the bare value)
    out = tmp_path / "old_pickle"
    with pytest.warns(UserWarning):
        run(lambda x: {"x": x}, [1, 2], out)
    old = out / "lambda_payload" / "lambda_1.pickle"
    old.parent.mkdir(exist_ok=True)
    with open(old, "wb") as fh:
        pickle.dump({"x": 2}, fh)
    os.remove(out / "lambda_1.pickle")
    (out / ".acme" / "done").write_text(
        f"0 lambda_0.pickle {(out / 'lambda_0.pickle').stat().st_size}\n"
        f"1 lambda_payload/lambda_1.pickle {old.stat().st_size}\n")
    assert acme.load_call(out, 1) == [{"x": 2}]


def test_an_esi_acme_folder_after_its_pickle_fallback_is_read(tmp_path):
    """esi-acme removes the container and moves every call's file to the top."""
    out = tmp_path / "esi"
    out.mkdir()
    with h5py.File(out / "f_0.h5", "w") as h5f:
        h5f["result_0"] = np.arange(3.0)
    with open(out / "f_1.pickle", "wb") as fh:
        pickle.dump([{"a": 1}], fh)
    assert acme.load_call(out, 0)[0].tolist() == [0.0, 1.0, 2.0]
    assert acme.load_call(out, 1) == [{"a": 1}]
    with pytest.raises(MissingResultError):
        acme.load_call(out, 2)
