"""The front against the real esi-acme 2026.6.2: ``cleanup_threshold_days``, the
exception types of bad parameters, open h5py datasets as arguments; and the front's
own traps: a declined dry run, warnings missing from the log, an output folder that
cannot be created, errors before any call ran.

esi-acme runs in its own venv (``ACME_ESI_VENV``, default
``~/.cache/acme-test/esi-acme``, made by scripts/esi_acme_env.sh), from a folder
outside our checkout, with failing stubs of the SLURM commands first on ``PATH``
(esi-acme takes any host where ``sinfo`` runs for a cluster).
"""
from __future__ import annotations

import datetime
import json
import os
import pty
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from acme import ParallelMap
from conftest import require, run_script

ESI_VENV = Path(os.environ.get("ACME_ESI_VENV",
                               Path.home() / ".cache" / "acme-test" / "esi-acme"))
ESI_PYTHON = ESI_VENV / "bin" / "python"
CHECKOUT = Path(__file__).resolve().parent.parent
SLURM_COMMANDS = ("sinfo", "squeue", "srun", "sbatch", "scancel", "scontrol", "sacct")


def _run_group(cmd: list, cwd, env: dict, timeout: float, stdin=None) -> tuple:
    """Run ``cmd`` in a process group of its own; on timeout kill that group (by
    the child's pid) and fail."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=stdin if stdin is not None
                            else subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{cmd} did not end within {timeout} s:\n{out}\n{err}")
    return proc.returncode, out, err


def run_esi(code: str, tmp_path: Path, timeout: float = 120.0) -> str:
    """Run ``code`` with the real esi-acme; returns its stdout."""
    require(ESI_PYTHON.exists(), f"no esi-acme venv at {ESI_VENV} "
            "(scripts/esi_acme_env.sh makes it)")
    stubs = tmp_path / "no_slurm"
    stubs.mkdir(exist_ok=True)
    for name in SLURM_COMMANDS:
        stub = stubs / name
        stub.write_text("#!/bin/sh\nexit 127\n")
        stub.chmod(0o755)
    work = tmp_path / "esi"
    work.mkdir(exist_ok=True)
    script = work / "esi_script.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_CURRENT_TEST")}
    env["PATH"] = f"{stubs}{os.pathsep}{env.get('PATH', '')}"
    code_, out, err = _run_group([str(ESI_PYTHON), "-u", str(script)], work, env, timeout)
    assert code_ == 0, f"esi-acme script failed ({code_}):\n{out}\n{err}"
    return out


def ours(code: str, tmp_path: Path, timeout: float = 120.0) -> str:
    work = tmp_path / "ours"
    work.mkdir(exist_ok=True)
    script = work / "our_script.py"
    script.write_text(code)
    result = run_script(script, timeout=timeout, cwd=work)
    assert result.returncode == 0, result
    return result.stdout


def _json_line(out: str, tag: str):
    return json.loads(next(line[len(tag):] for line in out.splitlines()
                           if line.startswith(tag)))


# ============================================================ exception types
BAD_PARAMETERS = '''
import json, logging, os, warnings
warnings.simplefilter("ignore")
logging.disable(logging.CRITICAL)
from acme import ParallelMap

def f(x, y=1):
    return x

open("a_file", "w").close()
CASES = {
    "n_inputs=3.6": dict(n_inputs=3.6),
    "n_inputs=0": dict(n_inputs=0),
    "n_inputs='x'": dict(n_inputs="x"),
    "n_inputs=True": dict(n_inputs=True),
    "write_worker_results=1": dict(write_worker_results=1),
    "output_dir=3": dict(output_dir=3),
    "output_dir under a file": dict(output_dir=os.path.abspath("a_file/sub")),
    "result_shape=(2,)": dict(result_shape=(2,)),
    "result_shape=(None, -1)": dict(result_shape=(None, -1)),
    "result_shape=(None, 2.5)": dict(result_shape=(None, 2.5)),
    "result_shape='x'": dict(result_shape="x"),
    "result_dtype='nope'": dict(result_dtype="nope", result_shape=(None,)),
    "single_file=1": dict(single_file=1),
    "write_pickle='yes'": dict(write_pickle="yes"),
    "write_pickle+single_file": dict(write_pickle=True, single_file=True),
    "n_workers=0": dict(n_workers=0),
    "n_workers=2.5": dict(n_workers=2.5),
    "n_workers='x'": dict(n_workers="x"),
    "mem_per_worker=4": dict(mem_per_worker=4),
    "setup_timeout=-1": dict(setup_timeout=-1),
    "setup_timeout='x'": dict(setup_timeout="x"),
    "setup_interactive=1": dict(setup_interactive=1),
    "stop_client='x'": dict(stop_client="x"),
    "stop_client=1": dict(stop_client=1),
    "verbose='x'": dict(verbose="x"),
    "dryrun=1": dict(dryrun=1),
    "logfile=3": dict(logfile=3),
    "logfile=a folder": dict(logfile=os.getcwd()),
}
found = {}
for name, extra in CASES.items():
    extra.setdefault("setup_interactive", False)
    try:
        ParallelMap(f, [1, 2, 3], **extra)
        found[name] = None
    except Exception as exc:
        # every base class a script may catch
        found[name] = sorted(k.__name__ for k in type(exc).__mro__
                             if k.__module__ == "builtins" and k is not object)
print("TYPES" + json.dumps(found))
'''


@pytest.mark.timeout(300)
def test_bad_parameters_raise_what_esi_acme_raises(tmp_path):
    """Each bad parameter (refused by esi-acme before it starts any worker) raises
    an error that is an instance of every exception type esi-acme's is."""
    theirs = _json_line(run_esi(BAD_PARAMETERS, tmp_path), "TYPES")
    mine = _json_line(ours(BAD_PARAMETERS, tmp_path), "TYPES")
    assert set(theirs) == set(mine)
    wrong = {}
    for name, esi_types in theirs.items():
        assert esi_types is not None, f"esi-acme accepted {name}"
        ok = mine[name] is not None and (set(esi_types) - {"BaseException", "Exception"}
                                         <= set(mine[name]))
        if not ok:
            wrong[name] = (esi_types, mine[name])
    assert not wrong, wrong


def one(x):
    return x


def test_a_number_of_calls_or_workers_that_is_not_an_integer_is_a_value_error():
    """esi-acme raises ValueError for 3.6; it takes 4.0 for 4, acme refuses that too
    (with the same type) rather than guess."""
    for name in ("n_inputs", "n_workers"):
        for value in (3.6, 3.0, float("nan"), np.float64(2.0)):
            with pytest.raises(ValueError, match=f"`{name}` has to be 'auto' or an "
                               "integer"):
                ParallelMap(one, [1, 2, 3], **{name: value})
    with ParallelMap(one, 7, n_inputs=np.int64(3), write_worker_results=False,
                     backend="sequential", verbose=False) as pmap:
        assert pmap.compute() == [7, 7, 7]


# ====================================================== cleanup_threshold_days
DAY = 86400.0


def _auto_name(age_days: float, now=None) -> str:
    when = (now or datetime.datetime.now()) - datetime.timedelta(days=age_days)
    return "ACME_" + when.strftime("%Y%m%d-%H%M%S-%f")


def _aged(path: Path, age_days: float) -> Path:
    then = time.time() - age_days * DAY
    os.utime(path, (then, then), follow_symlinks=False)
    return path


def _auto_folder(base: Path, age_days: float, mtime_days=None, now=None) -> Path:
    folder = base / _auto_name(age_days, now)
    folder.mkdir()
    (folder / "f.h5").write_bytes(b"old results")
    return _aged(folder, age_days if mtime_days is None else mtime_days)


def _tree(base: Path) -> dict:
    """The folders acme may or may not remove, by role."""
    precious = base / "precious"
    precious.mkdir()
    (precious / "data.h5").write_bytes(b"keep me")
    link = base / _auto_name(30)
    link.symlink_to(precious, target_is_directory=True)
    _aged(link, 30)
    lookalike = base / _auto_name(31)
    lookalike.write_text("a file, not a folder")
    _aged(lookalike, 31)
    notes = base / "ACME_notes"
    notes.mkdir()
    _aged(notes, 40)
    return {
        "old": _auto_folder(base, 10),
        "older": _auto_folder(base, 400),
        "young": _auto_folder(base, 2),
        "old name, changed yesterday": _auto_folder(base, 20, mtime_days=1),
        "new name, old mtime": _auto_folder(base, 0.5, mtime_days=20),
        "link to precious": link,
        "file named like a folder": lookalike,
        "ACME_notes": notes,
        "precious": precious,
    }


@pytest.mark.timeout(120)
def test_cleanup_threshold_days_removes_only_old_auto_generated_folders(tmp_path):
    tree = _tree(tmp_path)
    held = _auto_folder(tmp_path, 15)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f'''
            import sys, time
            sys.path.insert(0, {str(CHECKOUT)!r})
            from acme.state import RunState
            RunState({str(held)!r}, "f").claim()
            print("claimed", flush=True)
            time.sleep(60)
            ''')], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        _aged(held, 15)
        with ParallelMap(one, [1, 2], cleanup_threshold_days=3, backend="sequential",
                         setup_interactive=False, verbose=False) as pmap:
            files = pmap.compute()  # before: cleanup_threshold_days went to one()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(10)
    gone = {role for role, path in tree.items() if not os.path.lexists(path)}
    assert gone == {"old", "older"}
    assert held.is_dir(), "a folder another run holds was removed"
    assert (tree["precious"] / "data.h5").read_bytes() == b"keep me"
    assert os.path.isfile(files[0])  # this run's own new folder


@pytest.mark.timeout(120)
def test_cleanup_threshold_days_zero_removes_every_auto_generated_folder(tmp_path):
    tree = _tree(tmp_path)
    with ParallelMap(one, [1, 2], cleanup_threshold_days=0, backend="sequential",
                     setup_interactive=False, verbose=False) as pmap:
        pmap.compute()
    gone = {role for role, path in tree.items() if not os.path.lexists(path)}
    assert gone == {"old", "older", "young", "old name, changed yesterday",
                    "new name, old mtime"}
    assert len(list(tmp_path.glob("ACME_2*"))) == 3  # link, file, this run's folder


CLEANUP = '''
import json, os, sys
BASE, DAYS = sys.argv[1], json.loads(sys.argv[2])
try:
    from acme.validators import _cleanup_old_acme_directories as cleanup  # esi-acme
    cleanup(BASE, DAYS, False)
except ImportError:
    from acme.validation import cleanup_old_folders
    cleanup_old_folders(BASE, DAYS, False)
print("LEFT" + json.dumps(sorted(os.listdir(BASE))))
'''


@pytest.mark.timeout(300)
@pytest.mark.parametrize("days", [None, 0, 3, 30])
def test_cleanup_removes_what_esi_acme_removes(tmp_path, days):
    """The same folders under esi-acme's own cleanup and ours: ACME_<time> folders
    whose name and mtime give the same age (esi-acme also removes any folder whose
    name starts with ACME_ and judges the age by mtime alone: see
    test_cleanup_threshold_days_removes_only_old_auto_generated_folders)."""
    left = {}
    now = datetime.datetime.now()
    for who in ("esi", "ours"):
        base = tmp_path / f"base_{who}"
        base.mkdir()
        for age in (0.2, 1.5, 2.5, 3.5, 4, 10, 31, 400):
            _auto_folder(base, age, now=now)
        for k in range(22):  # more than 20: esi-acme's "many folders" warning
            _auto_folder(base, 100 + k, now=now)
        code = f"import sys\nsys.argv[1:] = [{str(base)!r}, {json.dumps(days)!r}]\n" + CLEANUP
        out = run_esi(code, tmp_path) if who == "esi" else ours(code, tmp_path)
        left[who] = _json_line(out, "LEFT")
    assert left["ours"] == left["esi"]
    assert len(left["ours"]) == {None: 30, 0: 0, 3: 4, 30: 6}[days]


def _run_on_a_terminal(code: str, answers: str, cwd: Path, timeout: float = 90.0,
                       env=None) -> str:
    """Run ``code`` with a pseudo-terminal as stdin (as a user at a prompt), the
    answers typed in advance; returns stdout and stderr."""
    script = cwd / "at_terminal.py"
    script.write_text(code)
    primary, secondary = pty.openpty()
    env = dict(os.environ, **(env or {}),
               PYTHONPATH=os.pathsep.join([str(CHECKOUT), str(CHECKOUT / "tests")]))
    try:
        os.write(primary, answers.encode())
        returncode, out, err = _run_group([sys.executable, str(script)], cwd, env,
                                          timeout, stdin=secondary)
    finally:
        os.close(secondary)
        os.close(primary)
    assert returncode == 0, f"{out}\n{err}"
    return out + err


AT_TERMINAL_CLEANUP = '''
from acme import ParallelMap
def one(x):
    return x
if __name__ == "__main__":
    with ParallelMap(one, [1, 2], cleanup_threshold_days=3, backend="sequential") as pmap:
        pmap.compute()
'''


@pytest.mark.timeout(120)
@pytest.mark.parametrize("answer", ["n", "", "y"])
def test_cleanup_asks_first_on_a_terminal(tmp_path, answer):
    old = _auto_folder(tmp_path, 10)
    young = _auto_folder(tmp_path, 1)
    shown = _run_on_a_terminal(AT_TERMINAL_CLEANUP, answer + "\n", tmp_path)
    assert "Remove 1 auto-generated ACME folder(s) older than 3 days" in shown, shown
    assert old.exists() == (answer != "y"), shown  # the default is no
    assert young.exists()


def test_cleanup_threshold_days_is_checked():
    for value, error in ((-1, ValueError), (2.5, TypeError), (True, TypeError),
                         ("7", TypeError)):
        with pytest.raises(error, match="`cleanup_threshold_days`"):
            ParallelMap(one, [1, 2], cleanup_threshold_days=value)


def test_cleanup_of_a_missing_folder_only_warns(tmp_path, caplog):
    from acme.validation import cleanup_old_folders
    assert cleanup_old_folders(str(tmp_path / "nowhere"), 0, False) == []
    assert "could not look for old ACME folders" in caplog.text


# ================================================================ h5py datasets
def read_row(i, data, scale=1.0):
    """A user's function reading its row from an open dataset it was given."""
    return np.array([data[i] * scale, data.file.mode == "r", os.getpid()])


DATASET_SCRIPT = '''
import json, os, h5py, numpy as np
from acme import ParallelMap, local_cluster_setup

def read_row(i, data, scale=1.0):
    return np.array([data[i] * scale, data.file.mode == "r", os.getpid()])

if __name__ == "__main__":
    with h5py.File("data.h5", "w") as h5f:
        h5f["trials/x"] = np.arange(5.0) * 3
    opened = h5py.File("data.h5", "r")
    if hasattr(ParallelMap, "compute") and "backend" not in ParallelMap.__init__.__code__.co_varnames:
        local_cluster_setup(n_workers=1, interactive=False)  # esi-acme: one Dask worker
    with ParallelMap(read_row, [0, 2, 4], opened["trials/x"], scale=2.0,
                     write_worker_results=False, setup_interactive=False) as pmap:
        values = pmap.compute()
    print("VALUES" + json.dumps([[float(v[0]), bool(v[1]), int(v[2]) != os.getpid()]
                                 for v in values]))
'''


@pytest.mark.timeout(400)
def test_an_open_dataset_argument_gives_what_esi_acme_gives(tmp_path):
    """esi-acme (Dask) sends an open h5py dataset by file name and path and opens it
    read-only in the worker; so does acme."""
    theirs = _json_line(run_esi(DATASET_SCRIPT, tmp_path, timeout=360), "VALUES")
    mine = _json_line(ours(DATASET_SCRIPT, tmp_path), "VALUES")
    assert mine == theirs == [[0.0, True, True], [12.0, True, True], [24.0, True, True]]


@pytest.mark.timeout(120)
def test_an_open_dataset_reaches_local_workers_and_resume_sees_its_content(tmp_path):
    with h5py.File(tmp_path / "data.h5", "w") as h5f:
        h5f["x"] = np.arange(4.0) + 10
        h5f["list/a"] = np.arange(4.0) + 100
    out = tmp_path / "out"
    with h5py.File(tmp_path / "data.h5", "r") as h5f:
        with ParallelMap(read_row, [0, 1, 2, 3], h5f["x"], output_dir=str(out),
                         backend="local", n_workers=2, verbose=False) as pmap:
            files = pmap.compute()
        for i, name in enumerate(files):
            with h5py.File(name, "r") as result:
                value, read_only, pid = result["result_0"][()]
                assert (value, read_only) == (10.0 + i, 1.0) and pid != os.getpid()
        with ParallelMap(read_row, [0, 1, 2, 3], h5f["x"], output_dir=str(out),
                         resume=True, backend="local", verbose=False) as pmap:
            pmap.compute()
            assert pmap.stats["resumed"] == 4
    with h5py.File(tmp_path / "data.h5", "r+") as h5f:
        h5f["x"][0] = -1.0
    with h5py.File(tmp_path / "data.h5", "r") as h5f:
        with pytest.raises(ValueError, match="positional argument 1 has changed"):
            ParallelMap(read_row, [0, 1, 2, 3], h5f["x"], output_dir=str(out),
                        resume=True, backend="local", verbose=False).compute()


def test_a_dataset_a_worker_cannot_open_by_name_is_refused_clearly(tmp_path):
    writing = h5py.File(tmp_path / "w.h5", "w")
    writing["x"] = np.arange(3.0)
    memory = h5py.File("mem.h5", "w", driver="core", backing_store=False)
    memory["x"] = np.arange(3.0)
    closed = h5py.File(tmp_path / "c.h5", "w")
    closed["x"] = np.arange(3.0)
    gone = closed["x"]
    closed.close()
    try:
        for data, problem in ((writing["x"], "is open for writing"),
                              (memory["x"], "is not a file on disk"),
                              (gone, "of a closed file")):
            with pytest.raises(TypeError) as info:
                ParallelMap(read_row, [0, 1], data=data)
            message = str(info.value)
            assert problem in message and "keyword argument 'data'" in message, message
            assert "h5py.File(file_name, 'r')" in message, message
            assert "cloudpickle" not in message, message
    finally:
        writing.close()
        memory.close()


# ====================================================== the dry run declined
AT_TERMINAL_DRYRUN = '''
import os
from acme import ParallelMap
def one(x):
    if x == 3 and os.environ.get("ACME_TEST_FAIL"):
        raise ValueError("call 2 fails in the first run")
    return x
if __name__ == "__main__":
    with ParallelMap(one, [1, 2, 3], dryrun=True, output_dir=OUT, backend="local") as pmap:
        try:
            print("RETURNED", pmap.compute())
        except Exception as exc:
            print("RAISED", type(exc).__name__)
'''


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["auto", "new", "existing empty", "existing"])
def test_declining_after_a_dry_run_removes_what_the_run_created(tmp_path, where):
    out = {"auto": None, "new": tmp_path / "new" / "out",
           "existing empty": tmp_path / "empty", "existing": tmp_path / "old"}[where]
    if where.startswith("existing"):
        out.mkdir()
    code = AT_TERMINAL_DRYRUN.replace("OUT", repr(None if out is None else str(out)))
    if where == "existing":  # a folder of an earlier run: resume, then decline
        first = _run_on_a_terminal(code, "y\n", tmp_path, env={"ACME_TEST_FAIL": "1"})
        assert "RAISED ParallelMapError" in first, first  # calls 0 and 1 have results
        code = code.replace("dryrun=True,", "dryrun=True, resume=True,")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")
                    if p.name != "at_terminal.py")
    shown = _run_on_a_terminal(code, "n\n", tmp_path)
    assert "RETURNED None" in shown, shown
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")
                   if p.name != "at_terminal.py")
    if where == "existing":  # a resumed run's folder: all kept, the log tells
        assert set(before) <= set(after), shown
        assert all(p.suffix == ".log" for p in set(after) - set(before)), shown
        assert len(list((out / "one_payload").glob("one_*.h5"))) == 2
    else:
        assert after == before, shown  # not even an empty folder or a log is left


# ==================================================== warnings in the run's log
def test_warnings_about_ignored_options_are_in_the_log_file(tmp_path):
    logfile = tmp_path / "run.log"
    with pytest.warns(UserWarning) as caught:
        pmap = ParallelMap(one, [1, 2], write_worker_results=False, single_file=True,
                           write_pickle=False, logfile=str(logfile), backend="sequential",
                           verbose=False)
    with pmap:
        assert pmap.compute() == [1, 2]
    text = logfile.read_text()
    for warning in caught:
        assert str(warning.message) in text, text
    assert "`single_file=True` has no effect with write_worker_results=False" in text


# ================================================= an output folder that can't be
def test_an_output_folder_under_a_file_is_refused_by_the_constructor(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OSError) as info:
        ParallelMap(one, [1, 2], output_dir=str(tmp_path / "a_file" / "sub"))
    message = str(info.value)
    assert "`output_dir`" in message and "a_file" in message and "not a folder" in message
    assert isinstance(info.value, ValueError)  # both, for either except clause


@pytest.mark.timeout(60)
def test_an_output_folder_on_a_read_only_file_system_is_refused_by_the_constructor(
        tmp_path):
    target = tmp_path / "ro"
    target.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(target)],
                          capture_output=True, text=True, timeout=30)
    require(proc.returncode == 0, f"cannot mount a tmpfs ({proc.stderr.strip()}); "
            "this test needs root")
    try:
        for output_dir in (target, target / "out"):
            with pytest.raises(OSError, match="Read-only file system") as info:
                ParallelMap(one, [1, 2], output_dir=str(output_dir))
            assert "`output_dir`" in str(info.value)
        os.chdir(target)  # the default ACME_<time> folder would go here
        with pytest.raises(OSError, match="`output_dir`.*Read-only file system"):
            ParallelMap(one, [1, 2])
        ParallelMap(one, [1, 2], write_worker_results=False)  # nothing to write: fine
    finally:
        os.chdir(tmp_path)
        subprocess.run(["umount", str(target)], capture_output=True, timeout=30)


# ============================================ errors raised before any call ran
NOT_LOADABLE = '''
from acme import ParallelMap

def _refuse():
    raise RuntimeError("this object cannot be loaded in another process")

class LoadsNowhere:
    def __reduce__(self):
        return (_refuse, ())

def one(x, extra=None):
    return x

if __name__ == "__main__":
    with ParallelMap(one, [1, 2, 3], extra=LoadsNowhere(), output_dir="out",
                     backend="local", n_workers=2) as pmap:
        pmap.compute()
'''


@pytest.mark.timeout(120)
def test_an_error_before_any_call_ran_is_not_called_an_interruption(tmp_path):
    script = tmp_path / "not_loadable.py"
    script.write_text(NOT_LOADABLE)
    result = run_script(script, timeout=90)
    assert result.returncode != 0, result
    log = next((tmp_path / "out").glob("ACME_one_*.log")).read_text()
    for text in (log, result.stderr):
        assert "the run failed before any call finished: RuntimeError" in text, text
        assert "interrupted" not in text and "resume=True" not in text, text
    assert "this object cannot be loaded in another process" in result.stderr, result
