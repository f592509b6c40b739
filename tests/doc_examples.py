"""Run the code blocks of README.rst and of the documentation (docs/) for real.

Used by tests/test_readme.py and tests/test_docs.py; the rules, for every ``.rst`` file:

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
* A ``.. code-block:: bash`` whose first line is a comment naming a "fresh clone" is
  run as one ``bash -e`` script in a fresh copy of the repository (its tracked files
  as they are in the working tree), with no virtual environment active and no
  ``PYTHONPATH``: as a new user would run it. Its ``# prints:`` lines are checked.
* Every other ``.. code-block:: bash`` runs in a folder where the nearest Python
  example above it in the same file was written to ``script.py`` and run first
  (unless a command of the block runs ``script.py`` itself), i.e. as a reader
  following the page would. Each command must exit with 0, or with N when its comment
  says ``exit code N``. ``python3``, ``acme`` and ``mpiexec`` commands run for real;
  a block of only ``srun``/``sbatch`` lines is a batch script and is submitted with
  ``sbatch --wait`` next to the script before it; ``srun``/``sbatch`` lines inside
  other blocks are not run; any other command fails the test until a rule for it is
  added here.
* No other kind of code block is allowed (:func:`check_languages`), and no literal
  block (``::``, :func:`literal_blocks`), so every block the reader sees is run.
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
from typing import Optional

import pytest

from conftest import TESTS_DIR, run_script

REPO = TESTS_DIR.parent

NEEDS = re.compile(r"^#\s*needs:\s*(\w+)\s*$")
PRINTS = re.compile(r"#\s*(?:first\s+)?prints:\s*(.*?)\s*$")
EXIT_CODE = re.compile(r"#.*\bexit code (\d+)")
FRESH_CLONE = re.compile(r"^#.*\bfresh clone\b")
LANGUAGES = ("python", "bash")


@dataclass
class Block:
    """One ``.. code-block::`` of an ``.rst`` file."""

    source: str  # the file, relative to the repository
    language: str
    code: str
    line: int  # line number of the directive (1-based)

    @property
    def id(self) -> str:
        return f"{self.source}:{self.line}"

    @property
    def needs(self) -> str:
        first = self.code.splitlines()[0] if self.code.strip() else ""
        match = NEEDS.match(first.strip())
        return match.group(1) if match else ""

    @property
    def fresh_clone(self) -> bool:
        return bool(FRESH_CLONE.match(self.code.lstrip()))

    @property
    def expected_prints(self) -> list:
        return [m.group(1) for line in self.code.splitlines()
                if (m := PRINTS.search(line))]


def read_blocks(path: Path) -> list:
    """Every ``.. code-block:: LANG`` of ``path`` with its dedented body, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    source = str(path.relative_to(REPO))
    blocks = []
    i = 0
    while i < len(lines):
        match = re.match(r"^(\s*)\.\. (?:code-block|code|sourcecode)::\s*(\S*)\s*$", lines[i])
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
        code = textwrap.dedent("\n".join(body)).strip("\n") + "\n"
        blocks.append(Block(source, language, code, start))
    return blocks


def check_languages(blocks: list) -> None:
    """Only blocks this module knows how to run (so none is shown without running)."""
    others = [f"{b.id} ({b.language or 'no language'})" for b in blocks
              if b.language not in LANGUAGES]
    assert not others, (f"code blocks that the tests cannot run: {others}; use "
                        f"{' or '.join(LANGUAGES)}, or add a rule to tests/doc_examples.py")


def literal_blocks(path: Path) -> list:
    """Lines of ``path`` that open an rST literal block (``::``), which nothing runs."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [f"{path.relative_to(REPO)}:{number}" for number, line in enumerate(lines, 1)
            if line.rstrip().endswith("::") and not line.lstrip().startswith(".. ")]


def python_block_before(block: Block, blocks: list) -> Optional[Block]:
    """The nearest Python example above ``block`` in the same file."""
    before = [b for b in blocks if b.language == "python" and b.source == block.source
              and b.line < block.line]
    return before[-1] if before else None


# ------------------------------------------------------------------ running
def check_prints(block: Block, stdout: str, what: str) -> None:
    """Every ``# prints:`` line of ``block`` appears as a line of stdout, in order."""
    out = [line.strip() for line in stdout.splitlines()]
    position = 0
    for expected in block.expected_prints:
        try:
            position = out.index(expected, position) + 1
        except ValueError:
            pytest.fail(f"example at {block.id}: {what} did not print {expected!r} "
                        f"(after the lines matched before it).\n--- stdout ---\n{stdout}")


def run_python_block(block: Block, folder: Path) -> None:
    """Write the example to ``folder/script.py`` and run it as the page says."""
    script = folder / "script.py"
    script.write_text(block.code, encoding="utf-8")
    if block.needs == "slurm":
        from mpi_helpers import require_slurm
        require_slurm()
        run = run_script(script, timeout=240, cwd=folder)
        assert run.returncode == 0, f"example at {block.id}:\n{run}"
        check_prints(block, run.stdout, "the script submitted to SLURM")
        return
    if block.needs == "mpi":
        from mpi_helpers import run_mpi
        proc = run_mpi(str(script), 3, timeout=120, cwd=folder)
        output = (f"mpiexec ... script.py exited with {proc.returncode}\n--- stdout ---\n"
                  f"{proc.stdout}\n--- stderr ---\n{proc.stderr}")
        assert proc.returncode == 0, f"example at {block.id}:\n{output}"
        check_prints(block, proc.stdout, "the script under mpiexec")
        return
    assert not block.needs, (f"example at {block.id}: unknown marker "
                             f"'# needs: {block.needs}' (known: mpi, slurm)")
    run = run_script(script, timeout=120, cwd=folder)
    assert run.returncode == 0, f"example at {block.id}:\n{run}"
    assert not run.leftovers, f"example at {block.id} left processes running:\n{run}"
    check_prints(block, run.stdout, "the script")


def _env() -> dict:
    from mpi_helpers import mpi_env
    env = mpi_env()  # oversubscription and root for mpiexec; the checkout on PYTHONPATH
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS_DIR)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_command(argv: list, folder: Path, timeout: float = 120.0,
                env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Run a command with a time limit; on timeout its whole process group is killed."""
    proc = subprocess.Popen(argv, cwd=folder, env=_env() if env is None else env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{argv} did not end within {timeout} s (killed)\n--- stdout ---\n"
                    f"{out}\n--- stderr ---\n{err}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def command_argv(words: list) -> Optional[list]:
    """The argv to run for a shell command of a page, or None when it needs SLURM."""
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
    pytest.fail(f"a page runs {program!r}, which tests/doc_examples.py does not know "
                "how to run: add a rule for it in command_argv()")


def run_batch_script(block: Block, blocks: list, folder: Path) -> None:
    """A batch script (``#SBATCH`` lines, then ``srun ...``) submitted for real with
    ``sbatch --wait`` next to the script of the example before it."""
    from mpi_helpers import require_slurm
    require_slurm()
    script_block = python_block_before(block, blocks)
    assert script_block is not None, f"the batch script at {block.id} runs no script"
    (folder / "script.py").write_text(script_block.code, encoding="utf-8")
    (folder / "job.sh").write_text(block.code, encoding="utf-8")
    proc = run_command(["sbatch", "--wait", "--overcommit", "--output", "job.out", "job.sh"],
                       folder, timeout=180)
    log = (folder / "job.out").read_text() if (folder / "job.out").exists() else ""
    assert proc.returncode == 0, (f"the batch script at {block.id} failed:\n"
                                  f"{proc.stdout}\n{proc.stderr}\n--- job.out ---\n{log}")
    check_prints(script_block, log, "the batch job")


def fresh_copy(folder: Path) -> Path:
    """A copy of the repository's tracked files (as in the working tree) in ``folder``."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    copy = folder / "acme-clone"
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is skipped
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


def clean_user_env() -> dict:
    """This process's environment without any virtual environment or PYTHONPATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                      if not p.startswith(venv))
    return env


def run_in_fresh_clone(block: Block, code: str, folder: Path, timeout: float = 600) -> None:
    """Run ``code`` (commands of ``block``) with ``bash -e`` in a fresh copy of the repo."""
    copy = fresh_copy(folder)
    (copy / "setup-commands.sh").write_text(code, encoding="utf-8")
    proc = run_command(["bash", "-e", "setup-commands.sh"], copy, timeout=timeout,
                       env=clean_user_env())
    assert proc.returncode == 0, (f"the commands at {block.id} failed in a fresh clone "
                                  f"(exit code {proc.returncode}):\n--- stdout ---\n"
                                  f"{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    check_prints(block, proc.stdout, "the commands in a fresh clone")


def run_shell_block(block: Block, blocks: list, folder: Path) -> None:
    """Run a bash block of a page by the rules in this module's docstring."""
    if block.fresh_clone:
        run_in_fresh_clone(block, block.code, folder)
        return
    lines = [line for line in block.code.splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert lines, f"the shell block at {block.id} has no command"
    commands = [(line, shlex.split(line, comments=True)) for line in lines]
    if all(words[0] in ("srun", "sbatch", "salloc") for _, words in commands):
        run_batch_script(block, blocks, folder)
        return

    script_block = python_block_before(block, blocks)
    runs_script = any("script.py" in words for _, words in commands)
    if script_block is not None:
        if runs_script:
            (folder / "script.py").write_text(script_block.code, encoding="utf-8")
        else:
            run_python_block(script_block, folder)

    ran = 0
    for line, words in commands:
        argv = command_argv(words)
        if argv is None:
            continue
        match = EXIT_CODE.search(line)
        expected = int(match.group(1)) if match else 0
        proc = run_command(argv, folder)
        assert proc.returncode == expected, (
            f"{block.id}: `{line.strip()}` exited with {proc.returncode}, the page says "
            f"{expected}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
        if "script.py" in words and script_block is not None:
            check_prints(script_block, proc.stdout, f"`{line.strip()}`")
        ran += 1
    assert ran, f"no command of the shell block at {block.id} ran"


def benchmark_bullets(text: str) -> list:
    """``(script, [options])`` for each ``python3 benchmarks/...py`` bullet of ``text``."""
    found = []
    for bullet in re.split(r"\n\* ", "\n" + text):
        script = re.search(r"``python3 (benchmarks/\S+\.py)", bullet)
        if script:
            found.append((script.group(1), re.findall(r"(--[a-z][\w-]*)", bullet)))
    return found


def check_benchmark_commands(bullets: list, folder: Path) -> None:
    """Each named benchmark exists and accepts ``--help`` listing the options named."""
    assert {script for script, _ in bullets} >= {"benchmarks/bench_peers.py",
                                                 "benchmarks/bench_mpi.py",
                                                 "benchmarks/bench_results.py"}, bullets
    for script, options in bullets:
        path = REPO / script
        assert path.is_file(), f"the docs name {script}, which does not exist"
        proc = run_command([sys.executable, str(path), "--help"], folder, timeout=60)
        assert proc.returncode == 0, f"{script} --help failed:\n{proc.stderr}"
        for option in options:
            assert option in proc.stdout, f"{script} has no option {option}:\n{proc.stdout}"
