"""One acme per interpreter: source checkouts, editable installs, esi-acme side by side.

Everything here is real: ``git clone``s of this repository (with the working tree's
package files copied over, so uncommitted changes are what is tested), virtual
environments made with ``python3 -m venv``, pip installs into them, and esi-acme's own
wheel from PyPI (pip's cache after the first download). Nothing is installed into the
Python running the tests. To keep this quick the venvs see the system site-packages
(numpy, h5py) and installs use ``--no-deps --no-build-isolation``; esi-acme is installed
without its dependencies (Dask) because only its files matter here, never its code.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require

REPO = Path(__file__).resolve().parents[1]
ESI_ACME = "esi-acme==2026.6.2"
#: What a clone takes from the working tree instead of its commit.
PACKAGE_FILES = ("acme", "backends", "setup.cfg", "setup.py", "pyproject.toml",
                 "MANIFEST.in")

# Prints where acme, its backends and one backend module came from, then runs a small
# map on local worker processes: the quick start, as a user runs it in a checkout.
PROBE = """
import json
import acme, acme.backends, acme.backends.local
from acme import ParallelMap

def square(x):
    return x * x

if __name__ == "__main__":
    with ParallelMap(square, [1, 2, 3], n_workers=2, backend="local",
                     write_worker_results=False, logfile=False) as pmap:
        results = pmap.compute()
    print(json.dumps({"acme": acme.__file__, "backends": acme.backends.__file__,
                      "local": acme.backends.local.__file__, "results": results}))
"""


def run(cmd: list, cwd: Path, timeout: float = 120.0,
        pythonpath: str = "") -> subprocess.CompletedProcess:
    """Run ``cmd`` without this checkout on PYTHONPATH (``pythonpath`` instead); on
    timeout kill its process group (by its PID) and fail."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_ROOT_USER_ACTION="ignore", ACME_AUTO_SLURM="0")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def ok(cmd: list, cwd: Path, timeout: float = 120.0) -> str:
    result = run(cmd, cwd, timeout)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def clone(dst: Path) -> Path:
    """A real ``git clone`` of this repository, with the working tree's package files."""
    require(shutil.which("git") is not None, "git is not installed")
    ok(["git", "clone", "-q", "--no-hardlinks", REPO, dst], REPO.parent)
    for name in PACKAGE_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.rmtree(dst / name)
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.is_file():
            shutil.copy2(src, dst / name)
    return dst


def probe(python: Path, cwd: Path) -> dict:
    """Run PROBE as ``python script.py`` in ``cwd``; where its acme came from."""
    (cwd / "script.py").write_text(PROBE)
    out = ok([python, "script.py"], cwd)
    return json.loads(out.strip().splitlines()[-1])


class Venv:
    """A throwaway virtual environment (seeing the system site-packages), driven by the
    test Python's pip (``pip --python``), so it needs no pip of its own."""

    def __init__(self, path: Path) -> None:
        ok([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", path],
           path.parent)
        self.path = path
        self.python = path / "bin" / "python"
        self.site = Path(ok([self.python, "-c", "import sysconfig; "
                             "print(sysconfig.get_paths()['purelib'])"], path).strip())

    def pip(self, *args: str) -> str:
        return ok([sys.executable, "-m", "pip", "--python", self.python, *args],
                  self.path, timeout=240)

    def python_c(self, code: str, cwd: Path,
                 pythonpath: str = "") -> subprocess.CompletedProcess:
        return run([self.python, "-c", code], cwd, pythonpath=pythonpath)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("install_layout")


@pytest.fixture(scope="module")
def clone_a(work) -> Path:
    return clone(work / "clone_a")


@pytest.fixture(scope="module")
def wheels(work, clone_a) -> dict:
    """esi-acme's wheel (from PyPI, no dependencies) and a wheel of clone A."""
    dist = work / "wheels"
    result = run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                  "--only-binary=:all:", "-d", dist, ESI_ACME], work, timeout=240)
    require(result.returncode == 0, f"cannot download {ESI_ACME}: {result.stderr[-500:]}")
    ok([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", dist, clone_a], work, timeout=240)
    (esi,) = dist.glob("esi_acme-*.whl")
    (ours,) = dist.glob("acme-*.whl")
    return {"esi": esi, "ours": ours}


def fix_commands(stderr: str) -> list:
    """The commands the message tells the user to run (the lines that start with this
    venv's ``python -m pip``)."""
    return [line.split() for line in stderr.splitlines()
            if line.startswith("    ") and " -m pip " in line]


# --- issue 17: a source checkout imports its own backends -------------------------------

def test_script_in_a_checkout_imports_that_checkouts_backends(clone_a, work):
    # The test Python has some acme installed (an editable install of the checkout
    # under test, in CI): a clone's script must still get the clone's backends.
    found = probe(Path(sys.executable), clone_a)
    for key in ("acme", "backends", "local"):
        assert Path(found[key]).resolve().is_relative_to(clone_a.resolve()), found
    assert found["backends"] == str(clone_a / "backends" / "__init__.py")
    assert found["results"] == [1, 4, 9]
    # A notebook started in the checkout: code run with the checkout as its cwd.
    code = PROBE.replace('if __name__ == "__main__":', "if True:")
    result = run([sys.executable, "-c", code], clone_a)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["local"] == str(
        clone_a / "backends" / "local.py")



def test_a_notebook_started_in_a_checkout_uses_its_backends(clone_a):
    """A real Jupyter kernel (nbclient) whose working directory is the checkout."""
    try:
        import nbclient
        import nbformat
    except ImportError as exc:
        require(False, f"nbclient/nbformat are not installed: {exc}")
    definition, run_map = PROBE.split('if __name__ == "__main__":')
    run_map = "\n".join(line[4:] for line in run_map.splitlines())  # dedent the block
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(definition),
                                         nbformat.v4.new_code_cell(run_map)])
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(clone_a)}}).execute()
    text = "".join(out.get("text", "") for out in nb.cells[1].outputs)
    found = json.loads(text.strip().splitlines()[-1])
    assert found["local"] == str(clone_a / "backends" / "local.py"), found
    assert found["acme"] == str(clone_a / "acme" / "__init__.py"), found
    assert found["results"] == [1, 4, 9]

def test_two_editable_clones_each_see_their_own(work, clone_a):
    clone_b = clone(work / "clone_b")
    venv = Venv(work / "venv_editable")
    # the build's own log too: setuptools reports (and then ignores) a failing build step
    result = run([sys.executable, "-m", "pip", "--python", venv.python, "install", "-v",
                  "--no-deps", "--no-build-isolation", "-e", clone_a], work, timeout=240)
    log = result.stdout + result.stderr
    assert result.returncode == 0 and "Successfully installed acme" in log, log
    assert "Traceback" not in log, log
    # Installing B in editable mode re-points the environment's acme.backends to B:
    # this is how a script in A used to get B's backends.
    venv.pip("install", "-q", "--no-deps", "--no-build-isolation", "-e", clone_b)
    for checkout in (clone_a, clone_b):
        found = probe(venv.python, checkout)
        for key in ("acme", "backends", "local"):
            assert Path(found[key]).resolve().is_relative_to(checkout.resolve()), found
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    found = probe(venv.python, elsewhere)  # outside any checkout: the installed one, B
    for key in ("acme", "backends", "local"):
        assert Path(found[key]).resolve().is_relative_to(clone_b.resolve()), found


def test_a_wheel_keeps_the_installed_layout(work, wheels):
    venv = Venv(work / "venv_wheel")
    venv.pip("install", "-q", "--no-deps", wheels["ours"])
    elsewhere = work / "elsewhere_wheel"
    elsewhere.mkdir()
    found = probe(venv.python, elsewhere)
    assert found["backends"] == str(venv.site / "acme" / "backends" / "__init__.py")
    assert found["local"] == str(venv.site / "acme" / "backends" / "local.py")
    assert not (venv.site / "backends").exists()  # no stray top-level package
    assert {p.name for p in (venv.site / "acme" / "backends").glob("*.py")} == {
        p.name for p in (REPO / "backends").glob("*.py")}


# --- issue 14: living side by side with esi-acme ----------------------------------------

def test_ours_installed_over_esi_acme_is_refused_with_the_commands_that_fix_it(
        work, wheels):
    venv = Venv(work / "venv_over_esi")
    venv.pip("install", "-q", "--no-deps", wheels["esi"])
    venv.pip("install", "-q", "--no-deps", wheels["ours"])
    # pip mixes both trees in one folder, silently:
    assert (venv.site / "acme" / "frontend.py").is_file()
    assert (venv.site / "acme" / "parallel_map.py").is_file()
    result = venv.python_c("from acme import ParallelMap", work)
    assert result.returncode != 0
    assert "MixedInstallError" in result.stderr
    assert "esi-acme's files (frontend.py, dask_helpers.py" in result.stderr
    assert "Installed there: acme 0.1.0, esi-acme 2026.6.2" in result.stderr
    commands = fix_commands(result.stderr)
    assert commands == [
        [str(venv.python), "-m", "pip", "uninstall", "-y", "esi-acme", "acme"],
        [str(venv.python), "-m", "pip", "install", str(wheels["ours"])]], result.stderr
    _follow(venv, commands, work)


def test_esi_acme_uninstalled_after_ours_gives_a_clear_message(work, wheels):
    venv = Venv(work / "venv_esi_uninstalled")
    venv.pip("install", "-q", "--no-deps", wheels["esi"])
    venv.pip("install", "-q", "--no-deps", wheels["ours"])
    venv.pip("uninstall", "-q", "-y", "esi-acme")
    assert not (venv.site / "acme" / "__init__.py").exists()  # esi-acme took ours along
    result = venv.python_c("from acme import ParallelMap", work)
    assert result.returncode != 0
    assert "MixedInstallError: acme's __init__.py is missing" in result.stderr
    assert "uninstalling esi-acme deletes it" in result.stderr
    _follow(venv, fix_commands(result.stderr), work)


def test_esi_acme_installed_over_ours_is_refused(work, wheels):
    venv = Venv(work / "venv_esi_over_ours")
    venv.pip("install", "-q", "--no-deps", wheels["ours"])
    venv.pip("install", "-q", "--no-deps", wheels["esi"])
    result = venv.python_c("import acme", work)
    assert result.returncode != 0
    assert "esi-acme's __init__.py over acme's files" in result.stderr
    _follow(venv, fix_commands(result.stderr), work)


def test_an_esi_acme_found_before_ours_is_refused(work, wheels):
    venv = Venv(work / "venv_esi_first")
    venv.pip("install", "-q", "--no-deps", wheels["ours"])
    elsewhere = work / "esi_target"
    venv.pip("install", "-q", "--no-deps", "--target", str(elsewhere), wheels["esi"])
    result = venv.python_c("import acme", work, pythonpath=str(elsewhere))
    assert result.returncode != 0
    assert "finds esi-acme's package, which comes before acme's" in result.stderr
    assert f"    remove {elsewhere} from PYTHONPATH\n" in result.stderr
    assert probe(venv.python, work)["results"] == [1, 4, 9]  # ours, without it


def _follow(venv: Venv, commands: list, cwd: Path) -> None:
    """Run the commands the message gave; then there is one acme, ours, and it works."""
    assert len(commands) == 2, commands
    for command in commands:
        ok([sys.executable, "-m", "pip", "--python", *command[:1], *command[3:]], cwd,
           timeout=240)
    assert not (venv.site / "acme" / "frontend.py").exists()
    found = probe(venv.python, cwd)
    assert found["acme"] == str(venv.site / "acme" / "__init__.py")
    assert found["results"] == [1, 4, 9]
