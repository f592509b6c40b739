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


def test_report_counts(runs):
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
    (folder / "parity_counts.json").write_text(json.dumps(counts, indent=2) + "\n")
    (folder / "parity_report.md").write_text(
        f"# acme vs esi-acme {ESI_VERSION}\n\n```\n{json.dumps(counts, indent=2)}\n```\n\n"
        + compare.markdown(diffs) + "\n")
    print(f"\nparity: {json.dumps(counts)}\nparity report: {folder / 'parity_report.md'}")
    assert counts["cases"] == len(corpus.CASES) and shared["datasets"] > 0, counts
