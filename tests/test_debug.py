"""Debugging a map: ``compute(debug=True)`` (esi-acme's debugging path) and the
sequential backend put a post-mortem debugger in the user's function.

Each test runs a real ``pdb`` (fed its commands from a string) on the traceback a
user gets, in a subprocess or in a real Jupyter kernel, and checks the frame it
lands in: the user's line, not acme's runner.
"""
from __future__ import annotations

import os
import re
import textwrap

import h5py
import numpy as np
import pytest

from acme import ParallelMap, ParallelMapError
from conftest import require, run_script

#: A user's function: call 2 divides by zero on the line marked below.
USER_FUNCTION = '''
def f(x, scale=1.0):
    y = x * scale
    return 10 / (x - 2)  # the failing line
'''

#: pdb commands: print the locals of the frame pdb lands in, then quit.
COMMANDS = "p (x, y)\\nq\\n"


def _script(tmp_path, compute: str, backend: str = "sequential",
            output: str = "write_worker_results=False") -> str:
    code = USER_FUNCTION + textwrap.dedent(f'''
        import io, pdb, sys
        from acme import ParallelMap

        if __name__ == "__main__":
            try:
                with ParallelMap(f, [0, 1, 2, 3], {output}, backend={backend!r},
                                 setup_interactive=False) as pmap:
                    {compute}
            except Exception as exc:
                print("RAISED", type(exc).__name__, flush=True)
                debugger = pdb.Pdb(stdin=io.StringIO("{COMMANDS}"), stdout=sys.stdout)
                debugger.reset()
                debugger.interaction(None, exc.__traceback__)
        ''')
    path = tmp_path / "user_script.py"
    path.write_text(code)
    return str(path)


def _failing_line(path: str) -> int:
    with open(path) as fh:
        return next(n for n, line in enumerate(fh, 1) if "the failing line" in line)


def _assert_lands_in_user_function(result, path: str) -> None:
    assert result.returncode == 0, result
    where = re.findall(r"^> (.*)\((\d+)\)(\w+)\(\)$", result.stdout, re.M)
    assert where, result
    file, line, function = where[0]
    assert (file, int(line), function) == (path, _failing_line(path), "f"), result
    assert "(2, 2.0)" in result.stdout, result  # the locals of the failed call


@pytest.mark.timeout(120)
def test_compute_debug_true_post_mortem_lands_in_the_users_function(tmp_path):
    path = _script(tmp_path, "pmap.compute(debug=True)", backend="local")
    result = run_script(path, timeout=90)
    assert "RAISED ZeroDivisionError" in result.stdout, result  # the call's own error
    _assert_lands_in_user_function(result, path)


@pytest.mark.timeout(120)
def test_sequential_backend_post_mortem_lands_in_the_users_function(tmp_path):
    path = _script(tmp_path, "pmap.compute()", backend="sequential")
    result = run_script(path, timeout=90)
    assert "RAISED ParallelMapError" in result.stdout, result  # all calls ran
    _assert_lands_in_user_function(result, path)


@pytest.mark.timeout(180)
def test_percent_debug_in_a_jupyter_kernel_lands_in_the_users_function(tmp_path):
    """What ``%debug`` reads (``sys.last_traceback``) after a failing cell, in a
    real kernel; pdb is fed its commands from a string (a kernel has no terminal)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    cells = [
        "import os, sys\nsys.path.insert(0, %r)\nos.environ['ACME_AUTO_SLURM'] = '0'"
        % os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        USER_FUNCTION,
        "from acme import ParallelMap\n"
        "with ParallelMap(f, [0, 1, 2, 3], write_worker_results=False) as pmap:\n"
        "    pmap.compute(debug=True)",
        "import io, pdb\n"
        f"debugger = pdb.Pdb(stdin=io.StringIO('{COMMANDS}'), stdout=sys.stdout)\n"
        "debugger.reset()\n"
        "debugger.interaction(None, sys.last_traceback)",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     allow_errors=True, resources={"metadata": {
                                         "path": str(tmp_path)}})
    try:
        client.execute()
    except Exception as exc:  # noqa: BLE001 - no kernel here
        require(False, f"cannot run a Jupyter kernel: {exc}")
    failed = nb.cells[2].outputs
    assert any(o.get("ename") == "ZeroDivisionError" for o in failed), failed
    text = "".join(o.get("text", "") for o in nb.cells[3].outputs)
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # IPython's pdb colours its output
    first = re.search(r"^> (.*)\((\d+)\)(\w+)\(\)$", text, re.M)
    assert first and first.group(3) == "f", text
    current = re.search(r"^-+> +(\d+) (.*)$", text, re.M)  # the line pdb shows
    assert current and "the failing line" in current.group(2), text
    assert current.group(1) == first.group(2), text
    assert "(2, 2.0)" in text, text


def touch(x, scale=1.0):
    y = x * scale
    return np.full(3, 10 / (x - 2)) + 0 * y


def square(x):
    return np.array([x * x, os.getpid()])


@pytest.mark.timeout(120)
def test_debug_true_raises_the_calls_own_error_and_keeps_earlier_results(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ZeroDivisionError) as info:
        with ParallelMap(touch, [0, 1, 2, 3], output_dir=str(out), backend="local",
                         setup_interactive=False) as pmap:
            pmap.compute(debug=True)
    assert not isinstance(info.value, ParallelMapError)
    assert "call 2" in " ".join(getattr(info.value, "__notes__", ["call 2"]))
    for i in (0, 1):  # the calls before the failure: results on disk, readable
        with h5py.File(out / "touch_payload" / f"touch_{i}.h5", "r") as h5f:
            np.testing.assert_array_equal(h5f["result_0"][()], np.full(3, 10 / (i - 2)))
    assert not (out / "touch_payload" / "touch_3.h5").exists()  # stopped at call 2
    with h5py.File(out / "touch.h5", "r") as h5f:  # the container links them
        for i in (0, 1):
            np.testing.assert_array_equal(h5f[f"comp_{i}/result_0"][()],
                                          np.full(3, 10 / (i - 2)))
    log = next(out.glob("ACME_touch_*.log")).read_text()
    assert "ZeroDivisionError" in log and "debug=True" in log, log
    assert "resume=True" in log, log  # two calls are kept: resume finishes the rest


@pytest.mark.timeout(120)
def test_debug_true_runs_every_call_in_this_process_with_the_same_results(tmp_path):
    with ParallelMap(square, [1, 2, 3], write_worker_results=False, backend="local",
                     n_workers=2, setup_interactive=False) as pmap:
        debugged = pmap.compute(debug=True)
    assert [int(v[0]) for v in debugged] == [1, 4, 9]
    assert {int(v[1]) for v in debugged} == {os.getpid()}
    with ParallelMap(square, [1, 2, 3], output_dir=str(tmp_path / "disk"),
                     setup_interactive=False) as pmap:
        files = pmap.compute(debug=True)
    for i, name in enumerate(files):
        with h5py.File(name, "r") as h5f:
            assert h5f["result_0"][()].tolist() == [(i + 1) ** 2, os.getpid()]


def test_debug_has_to_be_a_bool():
    with ParallelMap(square, [1, 2], write_worker_results=False) as pmap:
        with pytest.raises(TypeError, match="`debug` has to be True or False"):
            pmap.compute(debug="yes")
