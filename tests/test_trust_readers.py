"""Readers and the command line tell the truth (issue 13, items 5 and 17 and the
readers' and CLI's part of the "smaller" list and of items 4 and 7).

Every run here is made by acme itself; a kill is a real SIGKILL of the process that
runs the map (the sequential backend runs each call in that process, so the call
that kills it marks exactly where the run stops). Damage is done to the files on
disk between runs, as a crash, a full disk or a person would.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import acme
from acme import MissingResultError, ParallelMap, ParallelMapError
from acme.state import StateError
from conftest import run_script

pytestmark = pytest.mark.timeout(120)

N = 6
KILLED_AT = 3


def cli(*args, timeout: float = 60):
    """``python -m acme ARGS`` -> (exit code, stdout, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "acme", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"acme {args} did not end within {timeout} s")
    return proc.returncode, out, err


def row(x):
    return np.arange(3.0) + 10 * x


def ragged(n):
    return np.arange(1.0, n + 1)


KILLED_SCRIPT = """
import os, signal, sys
import numpy as np
from acme import ParallelMap

RESUME = sys.argv[2:] == ["resume"]
if not RESUME:
    os.environ["KILL_THE_RUN_AT"] = "{killed_at}"

def {name}(x):
    if str(x) == os.environ.get("KILL_THE_RUN_AT"):
        os.kill(os.getpid(), signal.SIGKILL)   # kill -9 of the run, mid-way
    return {body}

if __name__ == "__main__":
    with ParallelMap({name}, list(range({n})), output_dir=sys.argv[1], backend="sequential",
                     verbose=False, resume=RESUME, **{kwargs}) as pmap:
        pmap.compute()
"""


def killed_run(folder: Path, kwargs: dict, body: str = "np.arange(3.0) + 10 * x",
               name: str = "row", resume: bool = False) -> None:
    """A run of ``name`` on 0..N-1 killed (SIGKILL) when it reaches call KILLED_AT
    (with ``resume``: the same script resuming it, to the end)."""
    code = KILLED_SCRIPT.format(name=name, killed_at=KILLED_AT, body=body, n=N,
                                kwargs=repr(kwargs).replace("inf", "np.inf"))
    result = run_script(code, args=[str(folder)] + (["resume"] if resume else []),
                        timeout=60)
    assert result.returncode == (0 if resume else -signal.SIGKILL), str(result)


# ------------------------------------------------------------------ item 5
@pytest.mark.parametrize("kwargs", [
    dict(result_shape=(None, 3), single_file=True),
    dict(result_shape=(3, None), single_file=True),
    dict(result_shape=(None, 3)),
    dict(single_file=True),
    dict(write_pickle=True),
    dict(),
], ids=["single_file+shape", "single_file+columns", "files+shape", "single_file",
        "pickle", "files"])
def test_a_killed_run_reads_only_the_calls_that_finished(tmp_path, kwargs):
    """After kill -9, the never-run calls are MissingResultError, never fill values."""
    out = tmp_path / "out"
    killed_run(out, kwargs)
    for i in range(KILLED_AT):
        value = acme.load_call(out, i)  # a list of the values, in every mode
        np.testing.assert_array_equal(value[0], row(i))
    for i in range(KILLED_AT, N):
        with pytest.raises(MissingResultError) as info:
            acme.load_call(out, i)
        assert info.value.calls == [i] and "not finished" in str(info.value)
    check_stacked_and_status(out, kwargs)


def check_stacked_and_status(out: Path, kwargs: dict) -> None:
    if "result_shape" in kwargs:
        with pytest.raises(MissingResultError) as info:
            acme.load_stacked(out)
        assert info.value.calls == list(range(KILLED_AT, N)), info.value
    code, stdout, _ = cli("status", out)
    assert code == 1 and re.search(rf"missing:\s+{N - KILLED_AT}\s", stdout), stdout
    code, stdout, stderr = cli("show", out)  # write_pickle too: its files, call by call
    assert code == 1, stdout + stderr
    assert f"calls without a result: {KILLED_AT}-{N - 1}" in stdout, stdout


@pytest.mark.parametrize("kwargs", [dict(result_shape=(None, 3), single_file=True),
                                    dict(result_shape=(None, np.inf), single_file=True),
                                    dict(single_file=True)])
def test_a_killed_single_file_run_reads_its_unmerged_calls(tmp_path, kwargs):
    """Calls with a second return value wait in part files for the merge: after a
    kill they are read from there (the row itself may be in f.h5 already)."""
    out = tmp_path / "out"
    killed_run(out, kwargs, body="(np.arange(3.0) + 10 * x, np.array([x]))")
    for i in range(KILLED_AT):
        first, second = acme.load_call(out, i)
        np.testing.assert_array_equal(first, row(i))
        np.testing.assert_array_equal(second, [i])
    with pytest.raises(MissingResultError):
        acme.load_call(out, KILLED_AT)
    check_stacked_and_status(out, kwargs)


def test_a_killed_single_file_run_with_a_damaged_file_names_every_missing_call(tmp_path):
    """The rows of the calls that finished are in f.h5 (their other values in part
    files): with f.h5 damaged, load_stacked must name those calls too, not only the
    ones that never finished (seen under MPI after a rank was killed)."""
    out = tmp_path / "out"
    kwargs = dict(result_shape=(None, 3), single_file=True)
    killed_run(out, kwargs, body="(np.arange(3.0) + 10 * x, np.array([x]))")
    with open(out / "row.h5", "r+b") as fh:  # the HDF5 signature gone: unreadable
        fh.write(b"\0" * 8)
    with pytest.raises(MissingResultError) as info:
        acme.load_stacked(out)
    assert info.value.calls == list(range(N)), info.value
    for i in range(KILLED_AT):
        with pytest.raises(MissingResultError):
            acme.load_call(out, i)


def test_a_resumed_killed_run_reads_everything(tmp_path):
    out = tmp_path / "out"
    killed_run(out, dict(result_shape=(None, 3), single_file=True))
    killed_run(out, dict(result_shape=(None, 3), single_file=True), resume=True)
    np.testing.assert_array_equal(acme.load_stacked(out), np.stack([row(i) for i in range(N)]))
    assert cli("status", out)[0] == 0


# ------------------------------------------------------------------ item 17
class Planted:
    """Unpickling this creates a file: proof that a reader ran planted code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(Planted(str(marker))))


def fails_at_2(x):
    if x == 2:
        raise ValueError("call 2 fails")
    return row(x)


@pytest.mark.parametrize("kwargs", [dict(), dict(result_shape=(None, 3)),
                                    dict(single_file=True)])
def test_planted_pickles_are_never_unpickled(tmp_path, kwargs):
    out, marker = tmp_path / "out", tmp_path / "PLANTED_CODE_RAN"
    with pytest.raises(ParallelMapError):
        with ParallelMap(fails_at_2, list(range(4)), output_dir=str(out), verbose=False,
                         backend="sequential", **kwargs) as pmap:
            pmap.compute()
    for name in ("fails_at_2_payload/fails_at_2_1.pickle", "fails_at_2_payload/fails_at_2_2.pickle",
                 "fails_at_2_1.pickle", "fails_at_2_2.pickle", "evil_1.pickle",
                 "evil_2.pickle"):
        plant(out / name, marker)
    np.testing.assert_array_equal(acme.load_call(out, 1)[0], row(1))  # the HDF5 result
    with pytest.raises(MissingResultError) as info:
        acme.load_call(out, 2)  # failed: no result, whatever files lie around
    assert info.value.calls == [2] and "failed" in str(info.value)
    assert not marker.exists(), "a planted pickle was unpickled"


def test_a_planted_pickle_of_a_pickle_run_is_not_a_result(tmp_path):
    """write_pickle run killed at call 3: a pickle planted for call 4 is not read."""
    out, marker = tmp_path / "out", tmp_path / "PLANTED_CODE_RAN"
    killed_run(out, dict(write_pickle=True))
    plant(out / "row_4.pickle", marker)
    np.testing.assert_array_equal(acme.load_call(out, 1), [row(1)])
    with pytest.raises(MissingResultError):
        acme.load_call(out, 4)
    assert not marker.exists(), "a planted pickle was unpickled"
    code, stdout, _ = cli("status", out)
    assert code == 1 and re.search(r"missing:\s+3\s+\(calls 3-5\)", stdout), stdout


# ------------------------------------------------------------------ damaged files
def finished(tmp_path, **kwargs) -> Path:
    out = tmp_path / "out"
    with ParallelMap(row, list(range(4)), output_dir=str(out), backend="sequential",
                     verbose=False, **kwargs) as pmap:
        pmap.compute()
    return out


def truncate(path: Path, keep: float = 0.5) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(int(size * keep))


def scramble(path: Path) -> None:
    """Same size, other bytes (from the middle on)."""
    data = bytearray(path.read_bytes())
    for k in range(len(data) // 2, len(data)):
        data[k] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kwargs,victim", [
    (dict(), "row_payload/row_1.h5"),
    (dict(result_shape=(None, 3)), "row_payload/row_1.h5"),
    (dict(write_pickle=True), "row_1.pickle"),
])
@pytest.mark.parametrize("damage", [truncate, scramble, lambda p: p.write_bytes(b"")],
                         ids=["truncated", "scrambled", "emptied"])
def test_a_damaged_result_file_is_no_result_and_status_says_so(tmp_path, kwargs, victim,
                                                                damage):
    out = finished(tmp_path, **kwargs)
    assert cli("status", out)[0] == 0
    damage(out / victim)
    with pytest.raises(MissingResultError) as info:
        acme.load_call(out, 1)
    assert info.value.calls == [1] and victim.split("/")[-1] in str(info.value)
    if "result_shape" in kwargs:
        with pytest.raises(MissingResultError) as info:
            acme.load_stacked(out)
        assert info.value.calls == [1]
    value = acme.load_call(out, 2)
    np.testing.assert_array_equal(value[0], row(2))
    code, stdout, stderr = cli("status", out)
    assert code == 1, stdout + stderr
    assert re.search(r"missing:\s+1\s+\(calls 1\)", stdout), stdout
    assert "call 1: recorded as done, but result file" in stdout, stdout
    code, stdout, _ = cli("status", "--json", out)
    assert code == 1 and list(json.loads(stdout)["damaged"]) == ["1"], stdout


@pytest.mark.parametrize("shape", [(None, 3), None])
@pytest.mark.parametrize("damage", [truncate, scramble], ids=["truncated", "scrambled"])
def test_a_damaged_single_file_is_reported(tmp_path, shape, damage):
    out = finished(tmp_path, single_file=True, result_shape=shape)
    damage(out / "row.h5", *([0.3] if damage is truncate else []))
    with pytest.raises((MissingResultError, StateError, OSError)):
        acme.load_call(out, 0)
    if shape:
        with pytest.raises(MissingResultError):
            acme.load_stacked(out)
    code, stdout, stderr = cli("status", out)
    assert code == 1, stdout + stderr
    assert "recorded as done, but result file" in stdout, stdout
    assert cli("show", out)[0] != 0


# ------------------------------------------------------------------ smaller items
def test_zero_length_calls_with_an_inf_axis(tmp_path):
    """Not h5py's 'Not a hyperslab selection': zero-length calls are NaN rows."""
    lengths = [0, 3, 0, 1]
    for mode in (dict(), dict(single_file=True)):
        out = tmp_path / f"out{len(mode)}"
        with ParallelMap(ragged, lengths, output_dir=str(out), backend="sequential",
                         result_shape=(None, np.inf), verbose=False, **mode) as pmap:
            pmap.compute()
        stacked = acme.load_stacked(out)
        assert stacked.shape == (4, 3), mode
        for i, n in enumerate(lengths):
            np.testing.assert_array_equal(stacked[i, :n], ragged(n))
            assert np.isnan(stacked[i, n:]).all()
    out = tmp_path / "all_empty"
    with ParallelMap(ragged, [0, 0], output_dir=str(out), backend="sequential",
                     result_shape=(None, np.inf), verbose=False) as pmap:
        pmap.compute()
    assert acme.load_stacked(out).shape == (2, 0)


@pytest.mark.parametrize("name", ["sweep[1]", "a*b?c", "x[!y]"])
def test_glob_characters_in_output_dir(tmp_path, name):
    out = tmp_path / name
    with pytest.raises(ParallelMapError):
        with ParallelMap(fails_at_2, list(range(4)), output_dir=str(out), verbose=False,
                         backend="sequential", result_shape=(None, 3)) as pmap:
            pmap.compute()
    np.testing.assert_array_equal(acme.load_call(out, 3)[0], row(3))
    assert acme.find_container(out) == str(out / "fails_at_2.h5")
    with pytest.raises(MissingResultError) as info:
        acme.load_stacked(out)
    assert info.value.calls == [2]
    code, stdout, stderr = cli("errors", out)
    assert code == 1 and "ValueError: call 2 fails" in stdout, stdout + stderr
    code, stdout, stderr = cli("show", out)
    assert code == 1 and "calls without a result: 2" in stdout, stdout + stderr
    # one return value: esi-acme's container holds result_0 only, no comp_i links
    assert "comp_3" not in stdout, stdout


def records_damage():
    return {
        "truncated run.json": lambda out: truncate(out / ".acme" / "run.json"),
        "garbage failure record": lambda out: (out / ".acme" / "failures" /
                                               "call_3.json").write_bytes(b"\x00{garbage"),
        "garbage in the journal": lambda out: (out / ".acme" / "done").write_text(
            "0 row_payload/row_0.h5 100\nnot a line\n1 row_payload/row_1.h5 100\n"),
    }


@pytest.mark.parametrize("damage", list(records_damage()))
@pytest.mark.parametrize("command", ["status", "errors", "show"])
def test_damaged_records_are_one_line_and_exit_code_2(tmp_path, damage, command):
    out = finished(tmp_path)
    records_damage()[damage](out)
    code, stdout, stderr = cli(command, out)
    assert code == 2, f"exit {code}\n{stdout}\n{stderr}"
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith(f"acme {command}: ") and ".acme/" in stderr, stderr
    if damage != "garbage failure record":  # call 0 has a result: no failures read
        with pytest.raises(StateError):
            acme.load_call(out, 0)


HOSTILE = "\x1b[2J\x1b[31mred\x07\rover\x9b\u202egnp"


def hostile(x):
    if x == 1:
        raise ValueError(HOSTILE + "\nsecond line \x1b[0m")
    return float(x)


def test_the_cli_escapes_control_characters_of_call_messages(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ParallelMapError):
        with ParallelMap(hostile, [0, 1, 2], output_dir=str(out), backend="sequential",
                         verbose=False) as pmap:
            pmap.compute()
    for command in ("status", "errors"):
        code, stdout, stderr = cli(command, out)
        assert code == 1, stdout + stderr
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]", stdout), repr(stdout)
        assert r"\x1b[2J\x1b[31mred\x07\rover\x9b\u202egnp" in stdout, stdout
    assert "second line \\x1b[0m" in cli("errors", out)[1]


# ------------------------------------------------------------------ esi-acme folders
def as_esi_acme(out: Path) -> None:
    """The same files without acme's records: what esi-acme leaves (no journal)."""
    shutil.rmtree(out / ".acme")


def test_esi_acme_folder_is_read_through_the_container(tmp_path, monkeypatch):
    out = finished(tmp_path, result_shape=(None, 3))
    as_esi_acme(out)
    marker = tmp_path / "PLANTED_CODE_RAN"
    plant(out / "row_payload" / "row_1.pickle", marker)
    plant(out / "row_1.pickle", marker)

    def forbidden(self):
        raise AssertionError("Dataset.virtual_sources() called (DESIGN.md section 7)")

    monkeypatch.setattr(h5py.Dataset, "virtual_sources", forbidden)
    expected = np.stack([row(i) for i in range(4)])
    np.testing.assert_array_equal(acme.load_stacked(out), expected)
    np.testing.assert_array_equal(acme.load_call(out, 1)[0], row(1))
    os.remove(out / "row_payload" / "row_2.h5")
    with pytest.raises(MissingResultError) as info:
        acme.load_stacked(out)
    assert info.value.calls == [2]
    with pytest.raises(MissingResultError):
        acme.load_call(out, 2)
    assert not marker.exists()


def test_esi_acme_pickle_folder_by_exact_names(tmp_path):
    out = tmp_path / "pick[1]"
    with ParallelMap(row, list(range(4)), output_dir=str(out), backend="sequential",
                     write_pickle=True, verbose=False) as pmap:
        pmap.compute()
    as_esi_acme(out)
    np.testing.assert_array_equal(acme.load_call(out, 3), [row(3)])
    os.remove(out / "row_3.pickle")
    with pytest.raises(MissingResultError):
        acme.load_call(out, 3)
    plant(out / "other_3.pickle", tmp_path / "PLANTED_CODE_RAN")
    with pytest.raises(MissingResultError, match="several functions"):
        acme.load_call(out, 3)
    assert not (tmp_path / "PLANTED_CODE_RAN").exists()


def test_a_result_file_reached_through_a_link_is_no_result(tmp_path):
    """A payload folder replaced by a link to another folder with same-named files."""
    out = finished(tmp_path, result_shape=(None, 3))
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(out / "row_payload", elsewhere)
    shutil.rmtree(out / "row_payload")
    os.symlink(elsewhere, out / "row_payload")
    with pytest.raises(MissingResultError, match="leads out of the output folder"):
        acme.load_call(out, 1)
    with pytest.raises(MissingResultError) as info:
        acme.load_stacked(out)
    assert info.value.calls == [0, 1, 2, 3]


LOCAL_KILL_SCRIPT = """
import os, signal, sys, time
import numpy as np
from acme import ParallelMap

def slow_row(x):
    time.sleep(0.05)
    if x == 7:
        os.kill(os.getppid(), signal.SIGKILL)   # a worker kills the run's parent
        time.sleep(0.5)
    return np.arange(3.0) + 10 * x

if __name__ == "__main__":
    with ParallelMap(slow_row, list(range(16)), output_dir=sys.argv[1], backend="local",
                     n_workers=2, verbose=False, result_shape=(None, 3),
                     single_file=sys.argv[2] == "single") as pmap:
        pmap.compute()
"""


@pytest.mark.parametrize("mode", ["files", "single"])
def test_after_a_kill_on_the_local_backend_every_read_is_a_result_or_refused(tmp_path,
                                                                              mode):
    out = tmp_path / "out"
    result = run_script(LOCAL_KILL_SCRIPT, args=[str(out), mode], timeout=60)
    assert result.returncode == -signal.SIGKILL, str(result)
    have = []
    for i in range(16):
        try:
            value = acme.load_call(out, i)
        except MissingResultError as exc:
            assert exc.calls == [i]
            continue
        np.testing.assert_array_equal(value[0], np.arange(3.0) + 10 * i)
        have.append(i)
    assert 7 not in have and len(have) < 16
    with pytest.raises(MissingResultError) as info:
        acme.load_stacked(out)
    assert info.value.calls == sorted(set(range(16)) - set(have))
    code, stdout, _ = cli("status", out)
    assert code == 1 and re.search(rf"done:\s+{len(have)}$", stdout, re.M), stdout


def test_load_call_names_a_bad_index(tmp_path):
    out = finished(tmp_path)
    np.testing.assert_array_equal(acme.load_call(out, np.int64(2))[0], row(2))
    for bad, kind in ((4, IndexError), (-1, IndexError), ("1", TypeError),
                      (True, TypeError), (1.0, TypeError)):
        with pytest.raises(kind, match="`index`"):
            acme.load_call(out, bad)


def test_esi_acme_folder_with_an_inf_axis_and_zero_length_calls(tmp_path):
    out = tmp_path / "out"
    lengths = [2, 0, 4]
    with ParallelMap(ragged, lengths, output_dir=str(out), backend="sequential",
                     result_shape=(None, np.inf), verbose=False) as pmap:
        pmap.compute()
    expected = acme.load_stacked(out)
    as_esi_acme(out)
    stacked = acme.load_stacked(out)
    np.testing.assert_array_equal(stacked, expected)
    assert stacked.shape == (3, 4) and np.isnan(stacked[1]).all()
