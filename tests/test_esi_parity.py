"""The differential suite: every corpus map under acme and under the real esi-acme.

tests/parity/run_corpus.py runs every map of tests/parity/corpus.py once under our
acme and once under esi-acme 2026.6.2 (its own venv, built by scripts/esi_acme_env.sh,
with failing SLURM stubs first on PATH so that it starts local workers). The two
records are compared case by case and path by path (tests/parity/compare.py): every
difference must be listed, with its reason, in tests/parity/known_differences.py, and
every listed difference must still occur.

Without the venv the tests skip (CI, ACME_REQUIRE_INFRA=1: they fail). The counts of
what was compared are printed and written with the full table of differences to
``parity_report.md`` / ``parity_counts.json`` in the folder named by
``ACME_PARITY_REPORT`` (default: this run's pytest temporary folder).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TESTS_DIR, _kill_group, group_members, require

PARITY_DIR = TESTS_DIR / "parity"
sys.path.insert(0, str(PARITY_DIR))

import compare  # noqa: E402  (tests/parity, put on sys.path above)
import corpus  # noqa: E402
from known_differences import KNOWN  # noqa: E402

ESI_VERSION = "2026.6.2"
VENV = Path(os.environ.get("ACME_ESI_VENV", Path.home() / ".cache/acme-test/esi-acme"))
SLURM_COMMANDS = ("sinfo", "squeue", "srun", "sbatch", "scancel", "scontrol", "sacct", "salloc")
TIMEOUT = 600.0  # seconds for one package's whole corpus (esi-acme: about 20 s here)

pytestmark = pytest.mark.timeout(int(2 * TIMEOUT))


def _esi_python() -> Path:
    """esi-acme's python; skips (fails under CI) when its venv is missing or broken."""
    python = VENV / "bin" / "python"
    require(python.exists(), f"no esi-acme venv at {VENV} (run scripts/esi_acme_env.sh)")
    check = subprocess.run(
        [str(python), "-c", "from importlib import metadata; import acme; "
         "print(metadata.version('esi-acme'))"],
        capture_output=True, text=True, cwd="/", timeout=120)
    require(check.returncode == 0 and check.stdout.strip() == ESI_VERSION,
            f"{python} does not import esi-acme {ESI_VERSION}: "
            f"{(check.stdout + check.stderr).strip()[-300:]}")
    return python


def _stubs(folder: Path) -> Path:
    """The failing SLURM stubs: the venv's (scripts/esi_acme_env.sh), else made here."""
    if all((VENV / "nosl" / name).exists() for name in SLURM_COMMANDS):
        return VENV / "nosl"
    folder.mkdir()
    for name in SLURM_COMMANDS:
        stub = folder / name
        stub.write_text("#!/bin/sh\nexit 127\n")
        stub.chmod(0o755)
    return folder


def _start(python: Path, lib: Path, side: str, work: Path, env: dict) -> subprocess.Popen:
    """Start run_corpus.py for one package, in its own process group, output to files."""
    out = open(work / f"{side}.log", "w")
    return subprocess.Popen(
        [str(python), str(lib / "run_corpus.py"), str(work / f"{side}.jsonl"),
         str(work / side)],
        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=work,
        env=env, start_new_session=True)


def _finish(proc: subprocess.Popen, deadline: float) -> None:
    """Wait for one runner; on the deadline kill its process group (by its PID)."""
    try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        # Workers left behind (or the runner itself, on a timeout) are killed by PID.
        if proc.poll() is None or group_members(proc.pid):
            _kill_group(proc.pid)
        proc.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Both packages' records of the whole corpus: ``{"ours": ..., "esi": ..., "work"}``."""
    python = _esi_python()
    work = tmp_path_factory.mktemp("parity")
    # The runner and corpus are copied out of the checkout: esi-acme puts auto-named
    # output folders next to the function's source file, and neither python may find
    # our tree through its script's folder.
    lib = work / "lib"
    lib.mkdir()
    for name in ("corpus.py", "run_corpus.py"):
        shutil.copy(PARITY_DIR / name, lib / name)
    base = {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    base.update(PYTHONPATH=str(lib), PYTHONUNBUFFERED="1", ACME_AUTO_SLURM="0")
    theirs_env = dict(base, PATH=f"{_stubs(work / 'nosl')}{os.pathsep}{base.get('PATH', '')}")
    started = time.monotonic()
    procs = {"esi": _start(python, lib, "esi", work, theirs_env),
             "ours": _start(Path(sys.executable), lib, "ours", work, base)}
    for proc in procs.values():
        _finish(proc, started + TIMEOUT)
    found: dict = {"work": work, "seconds": time.monotonic() - started}
    for side, proc in procs.items():
        records = work / f"{side}.jsonl"
        found[side] = compare.load(str(records)) if records.exists() else {}
        found[f"{side}_rc"] = proc.returncode
        log = (work / f"{side}.log").read_text(errors="replace")
        found[f"{side}_log"] = log[-4000:]
        found[f"{side}_from"] = next((line for line in log.splitlines()
                                      if line.startswith("run_corpus: acme from")), "")
    return found


def _differences(runs: dict, case: str) -> list[compare.Difference]:
    return compare.differences(case, runs["ours"][case], runs["esi"][case])


def test_both_packages_ran_the_whole_corpus(runs):
    for side in ("ours", "esi"):
        missing = [c.name for c in corpus.CASES if c.name not in runs[side]]
        assert runs[f"{side}_rc"] == 0 and not missing, (
            f"run_corpus.py under {side} exited with {runs[side + '_rc']}, cases without "
            f"a record: {missing}\n--- its output (end) ---\n{runs[side + '_log']}")
    # Each side really ran under its own package (a mix-up would compare acme with itself).
    assert str(VENV) in runs["esi_from"] and "site-packages" in runs["esi_from"], (
        runs["esi_from"])
    assert runs["ours_from"] == f"run_corpus: acme from {TESTS_DIR.parent / 'acme'}", (
        runs["ours_from"])


@pytest.mark.parametrize("case", [c.name for c in corpus.CASES])
def test_case_matches_esi_acme(runs, case):
    if case not in runs["ours"] or case not in runs["esi"]:
        pytest.fail(f"{case}: no record from "
                    f"{'acme' if case not in runs['ours'] else 'esi-acme'} "
                    "(see test_both_packages_ran_the_whole_corpus)")
    unexplained, _ = compare.split_known(_differences(runs, case), KNOWN)
    assert not unexplained, (
        f"{len(unexplained)} difference(s) from esi-acme {ESI_VERSION} in case {case!r} "
        "(fix them, or list them with the reason in tests/parity/known_differences.py):\n"
        + "\n".join(str(d) for d in unexplained[:40]))


def test_every_known_difference_still_occurs(runs):
    diffs = [d for case in runs["esi"] if case in runs["ours"]
             for d in _differences(runs, case)]
    _, stale = compare.split_known(diffs, KNOWN)
    assert not stale, ("entries of tests/parity/known_differences.py that match no "
                       "difference any more (remove them):\n"
                       + "\n".join(json.dumps(e) for e in stale))


def test_report_counts(runs, capsys):
    """Write what was compared (counts) and every difference (the table) to files."""
    both = [c for c in runs["esi"] if c in runs["ours"]]
    diffs = [d for case in both for d in _differences(runs, case)]
    shared = compare.compared(runs["ours"], runs["esi"])
    counts = {"cases": len(both), "compared": shared,
              "acme": compare.counts(runs["ours"]), "esi-acme": compare.counts(runs["esi"]),
              "differing_fields": len(diffs),
              "cases_with_differences": len({d.case for d in diffs}),
              "explained_by_known_differences": sum(
                  any(compare.matches(e, d) for e in KNOWN) for d in diffs),
              "seconds_both_runs": round(runs["seconds"], 1)}
    folder = Path(os.environ.get("ACME_PARITY_REPORT", runs["work"]))
    folder.mkdir(parents=True, exist_ok=True)
    for side in ("ours", "esi"):  # the raw records, for whoever reads the report
        if (runs["work"] / f"{side}.jsonl").exists() and folder != runs["work"]:
            shutil.copy(runs["work"] / f"{side}.jsonl", folder / f"{side}.jsonl")
    (folder / "parity_counts.json").write_text(json.dumps(counts, indent=2) + "\n")
    (folder / "parity_report.md").write_text(
        f"# acme vs esi-acme {ESI_VERSION}\n\n```\n{json.dumps(counts, indent=2)}\n```\n\n"
        + "## Not explained by tests/parity/known_differences.py\n\n"
        + compare.markdown([d for d in diffs if not any(compare.matches(e, d) for e in KNOWN)])
        + "\n\n## Explained (listed with their reason)\n\n"
        + compare.markdown([d for d in diffs if any(compare.matches(e, d) for e in KNOWN)])
        + "\n")
    with capsys.disabled():  # the counts are wanted in CI logs too, not only with -s
        print(f"\nparity: {json.dumps(counts)}\nparity report: {folder / 'parity_report.md'}")
    assert counts["cases"] == len(corpus.CASES) and shared["datasets"] > 0, counts


# ------------------------------------------------------------------ the suite's own parts
# These need no esi-acme: they show that the recorder and the comparison can fail.
def _record(files: dict, raised: dict = None, returned=None) -> dict:
    return {"case": "c", "returned": returned, "raised": raised, "container": None,
            "files": files}


def test_walker_records_links_virtual_sources_and_pickles(tmp_path):
    import pickle

    import h5py
    import numpy as np
    import run_corpus

    (tmp_path / "f_payload").mkdir()
    with h5py.File(tmp_path / "f_payload" / "f_0.h5", "w") as h5f:
        h5f["result_0"] = np.arange(3, dtype=np.int16)
    layout = h5py.VirtualLayout(shape=(1, 3), dtype=np.int16, maxshape=(None, 3))
    layout[0] = h5py.VirtualSource("f_payload/f_0.h5", "result_0", shape=(3,))
    with h5py.File(tmp_path / "f.h5", "w") as h5f:
        h5f["comp_0"] = h5py.ExternalLink("f_payload/f_0.h5", "/")
        h5f["comp_1"] = h5py.ExternalLink("f_payload/f_1.h5", "/")  # never written
        h5f["alias"] = h5py.SoftLink("/comp_0")
        h5f.create_virtual_dataset("result_0", layout, fillvalue=-1)
    with open(tmp_path / "f_2.pickle", "wb") as handle:
        pickle.dump([{"x": None}], handle)
    (tmp_path / ".acme").mkdir()  # our run records: ignored
    found = run_corpus.walk_folder(str(tmp_path))
    assert sorted(found) == ["f.h5", "f_2.pickle", "f_payload", "f_payload/f_0.h5"]
    objects = found["f.h5"]["objects"]
    assert objects["/comp_0"] == {"kind": "external", "file": "f_payload/f_0.h5",
                                  "target": "/", "dangling": False}
    assert objects["/comp_1"]["dangling"] is True
    assert objects["/alias"] == {"kind": "soft", "target": "/comp_0", "dangling": False}
    vds = objects["/result_0"]
    assert (vds["virtual"], vds["shape"], vds["maxshape"], vds["dtype"]) == (
        True, [1, 3], [None, 3], "<i2")
    assert vds["sources"] == [["f_payload/f_0.h5", "result_0"]]
    assert vds["fillvalue"] == {"npscalar": "<i2", "value": -1}
    assert vds["values"] == {"ndarray": "<i2", "shape": [1, 3], "values": [[0, 1, 2]]}
    assert found["f_2.pickle"]["value"] == {"list": [{"dict": [["x", None]]}]}


def test_comparison_finds_what_differs_and_only_that():
    dataset = {"kind": "dataset", "shape": [1], "dtype": "<i8", "values": [1]}
    theirs = _record({"out": {"kind": "dir"},
                      "out/f.h5": {"kind": "hdf5", "objects": {"/": {"kind": "group"},
                                                               "/result_0": dataset}},
                      "out/f_0.pickle": {"kind": "pickle", "value": 1}})
    assert compare.differences("c", theirs, theirs) == []
    ours = json.loads(json.dumps(theirs))
    ours["files"]["out/f.h5"]["objects"]["/result_0"]["dtype"] = "<f8"
    del ours["files"]["out/f_0.pickle"]
    ours["files"]["out/f_payload/f_0.pickle"] = {"kind": "pickle", "value": 1}
    found = {(d.path, d.field, d.ours, d.theirs)
             for d in compare.differences("c", ours, theirs)}
    assert found == {("out/f.h5:/result_0", "dtype", "<f8", "<i8"),
                     ("out/f_0.pickle", "exists", False, True),
                     ("out/f_payload/f_0.pickle", "exists", True, False)}


def test_exceptions_compare_by_type_and_subclass():
    ours = _record({}, raised={"type": "ParallelMapError",
                               "mro": ["ParallelMapError", "RuntimeError", "Exception"]})
    theirs = _record({}, raised={"type": "RuntimeError", "mro": ["RuntimeError"]})
    assert compare.differences("c", ours, theirs) == []
    assert [d.field for d in compare.differences("c", theirs, ours)] == ["raised"]
    returned = compare.differences("c", _record({}, returned=1), theirs)
    assert [(d.field, d.ours, d.theirs) for d in returned] == [
        ("raised", None, "RuntimeError"), ("value", 1, None)]


def test_known_differences_match_by_pattern_and_go_stale():
    diff = compare.Difference("fail_shape", "out/f.h5:/result_0", "fillvalue", 1, 0)
    entry = {"case": "fail_*", "path": "*.h5:/result_0", "field": "fillvalue", "reason": "r"}
    other = {"case": "fail_*", "path": "*.h5:/result_0", "field": "dtype", "reason": "r"}
    unexplained, stale = compare.split_known([diff], [entry, other])
    assert (unexplained, stale) == ([], [other])
    assert compare.split_known([diff], []) == ([diff], [])


def test_every_known_difference_has_a_reason():
    for entry in KNOWN:
        assert set(entry) == {"case", "path", "field", "reason"}, entry
        assert len(entry["reason"]) > 20, entry
