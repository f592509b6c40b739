"""ParallelMap used as a user would: a script run with ``python3 script.py``, and code
typed at an interactive prompt (``python3 -`` reading stdin), each in a subprocess
with a time limit."""
from __future__ import annotations

import json
import re
import socket
import textwrap

import pytest

from conftest import run_script

pytestmark = pytest.mark.timeout(60)

SCRIPT = textwrap.dedent('''\
    import json
    import os

    from acme import ParallelMap


    def scale(x, y, taskID=None):
        return {"value": x * y, "task": taskID, "pid": os.getpid()}


    if __name__ == "__main__":
        with ParallelMap(scale, [2, 4, 6, 8], 4, write_worker_results=False,
                         n_workers=2) as pmap:
            results = pmap.compute()
        print("RESULT " + json.dumps({"results": results, "main_pid": os.getpid()}))
''')

FAILING_SCRIPT = textwrap.dedent('''\
    from acme import ParallelMap


    def check(x):
        if x == 6:
            raise ValueError("six is not allowed")  # the failing line
        return x


    if __name__ == "__main__":
        with ParallelMap(check, [2, 4, 6, 8], write_worker_results=False) as pmap:
            pmap.compute()
        print("NOT REACHED")
''')

PROMPT_CODE = textwrap.dedent('''\
    from acme import ParallelMap
    def add_one(x):
        return x + 1
    with ParallelMap(add_one, [1, 2, 3], write_worker_results=False, backend="local") as pmap:
        print("RESULT", pmap.compute())
    with ParallelMap(lambda x: x * 2, [1, 2, 3], write_worker_results=False,
                     backend="local") as pmap:
        print("RESULT", pmap.compute())
''')


def result_lines(stdout: str) -> list:
    return [line[len("RESULT "):] for line in stdout.splitlines()
            if line.startswith("RESULT ")]


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_script_with_function_defined_in_it(tmp_path, start_method):
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    run = run_script(script, timeout=50, env={"ACME_START_METHOD": start_method})
    assert run.returncode == 0, str(run)
    lines = result_lines(run.stdout)
    assert len(lines) == 1, str(run)
    out = json.loads(lines[0])
    results = out["results"]
    assert [r["value"] for r in results] == [8, 16, 24, 32]
    assert [r["task"] for r in results] == [0, 1, 2, 3]
    assert out["main_pid"] not in {r["pid"] for r in results}, "calls ran in the script"
    assert not run.leftovers, "the script left worker processes running"


def test_script_with_failing_call_reports_the_remote_traceback(tmp_path):
    script = tmp_path / "failing_script.py"
    script.write_text(FAILING_SCRIPT)
    run = run_script(script, timeout=50)
    assert run.returncode != 0, str(run)
    assert "NOT REACHED" not in run.stdout
    err = run.stderr
    assert "ParallelMapError" in err, err
    assert "ValueError: six is not allowed" in err, err
    # the worker's traceback, with the function's source line and where it ran
    assert 'raise ValueError("six is not allowed")  # the failing line' in err, err
    assert str(script) in err and "in check" in err, err
    assert re.search(r"(?i)call 2\b", err), err
    assert socket.gethostname() in err
    # printed as the cause, above the ParallelMapError
    assert err.index("six is not allowed") < err.rindex("ParallelMapError")
    assert not run.leftovers


def test_function_typed_at_the_prompt(tmp_path):
    run = run_script(PROMPT_CODE, stdin=True, timeout=50)
    assert run.returncode == 0, str(run)
    assert result_lines(run.stdout) == ["[2, 3, 4]", "[2, 4, 6]"], str(run)
    assert not run.leftovers


def test_function_in_main_without_a_file_under_spawn(tmp_path):
    """A __main__ without a file (like Jupyter) and workers that do not fork
    (macOS, Windows, ACME_START_METHOD=spawn): the function has to travel by value,
    or be refused at construction -- not fail inside every worker."""
    pytest.importorskip("cloudpickle")
    run = run_script(PROMPT_CODE, timeout=50, env={"ACME_START_METHOD": "spawn"})
    if run.returncode == 0:
        assert result_lines(run.stdout) == ["[2, 3, 4]", "[2, 4, 6]"], str(run)
    else:
        assert "TypeError" in run.stderr and "add_one" in run.stderr, str(run)
        assert ".compute()" not in run.stderr, "refused only after workers started"
    assert not run.leftovers
