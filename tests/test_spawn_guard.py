"""A script without ``if __name__ == "__main__":`` under spawn: one clear message.

Workers started with spawn (the default on macOS) import the script; one that starts
a map at its top level used to print a traceback per worker (252 lines) and end in
``OSError: handle is closed``.
"""
from __future__ import annotations

import pytest

from conftest import run_script

pytestmark = pytest.mark.timeout(120)

UNGUARDED = """
from acme import ParallelMap

def f(x):
    return x * 2

with ParallelMap(f, [1, 2, 3, 4], backend="local", n_workers=2) as pmap:
    print("RESULTS", pmap.compute())
"""

UNGUARDED_POOL = """
import acme
from acme import ParallelMap

def f(x):
    return x * 2

client = acme.local_cluster_setup(n_workers=2, interactive=False)
with ParallelMap(f, [1, 2, 3, 4], write_worker_results=False) as pmap:
    print("RESULTS", pmap.compute())
"""

# a guard, but the map runs outside it: found when the workers import the script
MAP_OUTSIDE_THE_GUARD = UNGUARDED + """
if __name__ == "__main__":
    print("MAIN")
"""

GUARDED = UNGUARDED.replace("with ParallelMap", 'if __name__ == "__main__":\n  with '
                            'ParallelMap').replace('    print("RESULTS"', '      print("RESULTS"')

SPAWN = {"ACME_START_METHOD": "spawn", "ACME_AUTO_SLURM": "0"}


def check_clear_message(result, script, method: str) -> None:
    """One UnguardedMainError naming the script, said once, nothing of
    multiprocessing's (the runner's console line names only the error's type)."""
    assert result.returncode == 1, result
    err = result.stderr
    assert "RESULTS" not in result.stdout, result
    before, _, raised = err.partition("Traceback (most recent call last):")
    assert raised.count('if __name__ == "__main__":') == 1, err
    assert raised.count("UnguardedMainError:") == 1, err
    assert 'if __name__ == "__main__":' not in before, err
    assert f"start with {method!r}, which imports {script} in every worker" in raised, err
    for noise in ("handle is closed", "bootstrapping phase", "did not come up",
                  "every worker process died"):
        assert noise not in err, err
    assert len(err.splitlines()) < 50, err


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
@pytest.mark.parametrize("code", [UNGUARDED, UNGUARDED_POOL], ids=["map", "pool"])
def test_unguarded_script_gets_one_message_saying_what_to_add(tmp_path, code, method):
    """A script without the guard is refused before any worker starts."""
    script = tmp_path / "unguarded.py"
    script.write_text(code)
    result = run_script(script, env=dict(SPAWN, ACME_START_METHOD=method), timeout=90)
    check_clear_message(result, script, method)
    assert not result.leftovers, result
    assert not list(tmp_path.glob("ACME_*")), list(tmp_path.iterdir())  # nothing made


def test_map_outside_the_guard_under_spawn_gets_one_message(tmp_path):
    """The script has a guard, but its map runs above it: the workers that import it
    stop quietly and the scheduler raises the message once."""
    script = tmp_path / "outside.py"
    script.write_text(MAP_OUTSIDE_THE_GUARD)
    result = run_script(script, env=SPAWN, timeout=90)
    check_clear_message(result, script, "spawn")
    assert "MAIN" not in result.stdout
    assert not result.leftovers, result
    # the workers stopped before they made output folders of their own
    assert len(list(tmp_path.glob("ACME_*"))) <= 1, list(tmp_path.iterdir())


def test_guarded_script_under_spawn_runs(tmp_path):
    script = tmp_path / "guarded.py"
    script.write_text(GUARDED)
    result = run_script(script, env=SPAWN, timeout=90)
    assert result.returncode == 0, result
    assert "UnguardedMainError" not in result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULTS")]
    assert len(lines) == 1 and lines[0].endswith(".h5']") and "f_3.h5" in lines[0], result
