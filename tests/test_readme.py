"""The examples of README.rst, run for real so that they cannot rot.

* Every ``.. code-block:: python`` example is written to ``script.py`` in the test's
  own folder and run with ``python3 script.py`` in a subprocess with a time limit
  (:func:`conftest.run_script`). It must exit with 0, leave no process behind, and
  print, in order, every line announced in it by a comment ``# prints: TEXT`` (or
  ``# first prints: TEXT``).
* An example whose first line is ``# needs: mpi`` runs under
  ``mpiexec -n 3 python -m acme.mpi_run script.py`` (:func:`mpi_helpers.run_mpi`);
  one marked ``# needs: slurm`` is run with plain ``python3`` and submits to the
  SLURM test cluster (skipped without one, a failure under CI). No other example
  may need anything but a plain ``python3``.
* Every ``.. code-block:: bash`` block but the first (the set-up commands) runs in a
  folder where the nearest Python example above it was written to ``script.py`` and
  run first (unless a command of the block runs ``script.py`` itself), i.e. as a
  reader following the README would. Each command must exit with 0, or with N when
  its comment says ``exit code N``. ``python3``, ``acme`` and ``mpiexec`` commands run
  for real; a block of only ``srun``/``sbatch`` lines is a batch script and is
  submitted with ``sbatch --wait`` next to the script before it; ``srun``/``sbatch``
  lines inside other blocks are not run; any other command fails the test until a
  rule for it is added here.
* The benchmark commands of the Performance section are too slow to run here: each
  script must exist and accept ``--help``, and every option the README names for it
  must appear in that help.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import TESTS_DIR, run_script

REPO = TESTS_DIR.parent
README = REPO / "README.rst"

pytestmark = pytest.mark.timeout(300)

NEEDS = re.compile(r"^#\s*needs:\s*(\w+)\s*$")
PRINTS = re.compile(r"#\s*(?:first\s+)?prints:\s*(.*?)\s*$")
EXIT_CODE = re.compile(r"#.*\bexit code (\d+)")
SETUP_COMMANDS = ["python3 -m pip install . && python3 examples/quickstart.py",
                  "bash scripts/run_tests.sh"]


@dataclass
class Block:
    """One ``.. code-block::`` of the README."""

    language: str
    code: str
    line: int  # line number of the directive (1-based)

    @property
    def id(self) -> str:
        return f"{self.language}-line{self.line}"

    @property
    def needs(self) -> str:
        first = self.code.splitlines()[0] if self.code.strip() else ""
        match = NEEDS.match(first.strip())
        return match.group(1) if match else ""

    @property
    def expected_prints(self) -> list:
        return [m.group(1) for line in self.code.splitlines()
                if (m := PRINTS.search(line))]


def read_blocks(text: str) -> list:
    """Every ``.. code-block:: LANG`` with its dedented body, in README order."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        match = re.match(r"^(\s*)\.\. code-block::\s*(\w+)\s*$", lines[i])
        if not match:
            i += 1
            continue
        indent, language, start = len(match.group(1)), match.group(2), i + 1
        body = []
        i += 1
        while i < len(lines):
            line = lines[i]
            if line.strip() and len(line) - len(line.lstrip()) <= indent:
                break
            body.append(line)
            i += 1
        blocks.append(Block(language, textwrap.dedent("\n".join(body)).strip("\n") + "\n",
                            start))
    return blocks


BLOCKS = read_blocks(README.read_text(encoding="utf-8"))
PYTHON = [b for b in BLOCKS if b.language == "python"]
BASH = [b for b in BLOCKS if b.language == "bash"]


def python_block_before(block: Block):
    before = [b for b in PYTHON if b.line < block.line]
    return before[-1] if before else None


# ------------------------------------------------------------------ helpers
def check_prints(block: Block, stdout: str, what: str) -> None:
    """Every ``# prints:`` line of ``block`` appears as a line of stdout, in order."""
    out = [line.strip() for line in stdout.splitlines()]
    position = 0
    for expected in block.expected_prints:
        try:
            position = out.index(expected, position) + 1
        except ValueError:
            pytest.fail(f"README example at line {block.line}: {what} did not print "
                        f"{expected!r} (after the lines matched before it).\n"
                        f"--- stdout ---\n{stdout}")


def run_python_block(block: Block, folder: Path) -> None:
    """Write the example to ``folder/script.py`` and run it as the README says."""
    script = folder / "script.py"
    script.write_text(block.code, encoding="utf-8")
    if block.needs == "slurm":
        from mpi_helpers import require_slurm
        require_slurm()
        run = run_script(script, timeout=240, cwd=folder)
        assert run.returncode == 0, f"README example at line {block.line}:\n{run}"
        check_prints(block, run.stdout, "the script submitted to SLURM")
        return
    if block.needs == "mpi":
        from mpi_helpers import run_mpi
        proc = run_mpi(str(script), 3, timeout=120, cwd=folder)
        output = (f"mpiexec ... script.py exited with {proc.returncode}\n--- stdout ---\n"
                  f"{proc.stdout}\n--- stderr ---\n{proc.stderr}")
        assert proc.returncode == 0, f"README example at line {block.line}:\n{output}"
        check_prints(block, proc.stdout, "the script under mpiexec")
        return
    assert not block.needs, (f"README example at line {block.line}: unknown marker "
                             f"'# needs: {block.needs}' (known: mpi, slurm)")
    run = run_script(script, timeout=120, cwd=folder)
    assert run.returncode == 0, f"README example at line {block.line}:\n{run}"
    assert not run.leftovers, (f"README example at line {block.line} left processes "
                               f"running:\n{run}")
    check_prints(block, run.stdout, "the script")


def _env() -> dict:
    from mpi_helpers import mpi_env
    env = mpi_env()  # oversubscription and root for mpiexec; the checkout on PYTHONPATH
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS_DIR)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_command(argv: list, folder: Path, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run a command with a time limit; on timeout its whole process group is killed."""
    proc = subprocess.Popen(argv, cwd=folder, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{argv} did not end within {timeout} s (killed)\n--- stdout ---\n"
                    f"{out}\n--- stderr ---\n{err}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def command_argv(words: list):
    """The argv to run for a README shell command, or None when it needs SLURM."""
    program = words[0]
    if program in ("srun", "sbatch", "salloc"):
        return None
    python = [sys.executable if w == "python3" else w for w in words]
    if program == "python3":
        return python
    if program == "acme":
        script = shutil.which("acme")
        return ([script] if script else [sys.executable, "-m", "acme"]) + words[1:]
    if program == "mpiexec":
        from mpi_helpers import require_mpi
        require_mpi()
        return python
    pytest.fail(f"the README runs {program!r}, which tests/test_readme.py does not know "
                "how to run: add a rule for it in command_argv()")


def run_batch_script(block: Block, folder: Path) -> None:
    """A README batch script (``#SBATCH`` lines, then ``srun ...``) submitted for real
    with ``sbatch --wait`` next to the script of the example before it."""
    from mpi_helpers import require_slurm
    require_slurm()
    script_block = python_block_before(block)
    assert script_block is not None, f"the batch script at line {block.line} runs no script"
    (folder / "script.py").write_text(script_block.code, encoding="utf-8")
    (folder / "job.sh").write_text(block.code, encoding="utf-8")
    proc = run_command(["sbatch", "--wait", "--overcommit", "--output", "job.out", "job.sh"],
                       folder, timeout=180)
    log = (folder / "job.out").read_text() if (folder / "job.out").exists() else ""
    assert proc.returncode == 0, (f"the batch script at line {block.line} failed:\n"
                                  f"{proc.stdout}\n{proc.stderr}\n--- job.out ---\n{log}")
    check_prints(script_block, log, "the batch job")


# ------------------------------------------------------------------ tests
def test_the_readme_starts_with_the_two_set_up_commands():
    first = BLOCKS[0]
    assert first.language == "bash"
    commands = [line.strip() for line in first.code.splitlines() if line.strip()]
    assert commands == SETUP_COMMANDS


def test_the_readme_has_examples_to_run():
    assert len(PYTHON) >= 10 and len(BASH) >= 3, [b.id for b in BLOCKS]
    for block in PYTHON:
        assert block.needs in ("", "mpi", "slurm"), block.id
        compile(block.code, f"README.rst:{block.line}", "exec")


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_example(block, tmp_path):
    run_python_block(block, tmp_path)


@pytest.mark.parametrize("block", BASH[1:], ids=[b.id for b in BASH[1:]])
def test_shell_example(block, tmp_path):
    lines = [line for line in block.code.splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert lines, f"the shell block at line {block.line} has no command"
    commands = [(line, shlex.split(line, comments=True)) for line in lines]
    if all(words[0] in ("srun", "sbatch", "salloc") for _, words in commands):
        run_batch_script(block, tmp_path)
        return

    script_block = python_block_before(block)
    runs_script = any("script.py" in words for _, words in commands)
    if script_block is not None:
        if runs_script:
            (tmp_path / "script.py").write_text(script_block.code, encoding="utf-8")
        else:
            run_python_block(script_block, tmp_path)

    ran = 0
    for line, words in commands:
        argv = command_argv(words)
        if argv is None:
            continue
        match = EXIT_CODE.search(line)
        expected = int(match.group(1)) if match else 0
        proc = run_command(argv, tmp_path)
        assert proc.returncode == expected, (
            f"README line {block.line}: `{line.strip()}` exited with {proc.returncode}, "
            f"the README says {expected}\n--- stdout ---\n{proc.stdout}\n"
            f"--- stderr ---\n{proc.stderr}")
        if "script.py" in words and script_block is not None:
            check_prints(script_block, proc.stdout, f"`{line.strip()}`")
        ran += 1
    assert ran, f"no command of the shell block at line {block.line} ran"


def _performance_bullets() -> list:
    text = README.read_text(encoding="utf-8")
    section = text.split("\nPerformance\n-----------\n", 1)[1].split("\n-----", 1)[0]
    bullets = re.split(r"\n\* ", "\n" + section)
    found = []
    for bullet in bullets:
        script = re.search(r"``python3 (benchmarks/\S+\.py)", bullet)
        if script:
            found.append((script.group(1), re.findall(r"(--[a-z][\w-]*)", bullet)))
    return found


def test_the_performance_commands_exist_with_the_options_the_readme_names(tmp_path):
    bullets = _performance_bullets()
    assert {script for script, _ in bullets} >= {"benchmarks/bench_peers.py",
                                                 "benchmarks/bench_mpi.py",
                                                 "benchmarks/bench_results.py"}
    for script, options in bullets:
        path = REPO / script
        assert path.is_file(), f"the README names {script}, which does not exist"
        proc = run_command([sys.executable, str(path), "--help"], tmp_path, timeout=60)
        assert proc.returncode == 0, f"{script} --help failed:\n{proc.stderr}"
        for option in options:
            assert option in proc.stdout, f"{script} has no option {option}:\n{proc.stdout}"
