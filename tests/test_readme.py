"""README.rst: it starts with the two set-up commands, the first of which really works in
a fresh clone, and every example in it runs (rules: tests/doc_examples.py).

The README is one screen; the rest lives in docs/ (tests/test_docs.py)."""
from __future__ import annotations

import pytest

import doc_examples as dx

README = dx.REPO / "README.rst"

pytestmark = pytest.mark.timeout(300)

#: The two set-up commands the README starts with (the project's rule): the first installs
#: acme into a virtual environment and runs a real example, the second installs what the
#: tests need and runs the whole suite (as .ci/run does).
SETUP_COMMANDS = ["python3 -m venv .venv && . .venv/bin/activate && pip install . && "
                  "python examples/quickstart.py",
                  "bash scripts/run_tests.sh"]
#: What examples/quickstart.py prints when it worked (its last line is checked in code).
QUICKSTART_PRINTS = "stacked power spectrum: shape (64, 1001), dtype float64"

BLOCKS = dx.read_blocks(README)
PYTHON = [b for b in BLOCKS if b.language == "python"]
BASH = [b for b in BLOCKS if b.language == "bash"]


def test_the_readme_starts_with_the_two_set_up_commands():
    first = BLOCKS[0]
    assert first.language == "bash"
    commands = [line.strip() for line in first.code.splitlines() if line.strip()]
    assert commands == SETUP_COMMANDS


def test_the_readme_is_one_screen():
    # What it is, the set-up commands, the quick start, where to read on, and the short
    # list of differences from esi-acme: the rest is in docs/.
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 120, f"README.rst has {len(lines)} lines; move text to docs/"


@pytest.mark.timeout(660)
def test_the_first_set_up_command_works_in_a_fresh_clone(tmp_path):
    # For real: a new virtual environment, `pip install .` from PyPI (numpy, h5py), and
    # examples/quickstart.py on local workers, in a copy of the repository's files.
    block = dx.Block("README.rst", "bash", SETUP_COMMANDS[0] + f"  # prints: {QUICKSTART_PRINTS}\n",
                     BLOCKS[0].line)
    dx.run_in_fresh_clone(block, SETUP_COMMANDS[0] + "\n", tmp_path)


def test_the_readme_has_examples_to_run():
    dx.check_languages(BLOCKS)
    assert not dx.literal_blocks(README), "literal blocks (::) that no test runs"
    assert PYTHON, [b.id for b in BLOCKS]
    for block in PYTHON:
        assert block.needs in ("", "mpi", "slurm"), block.id
        compile(block.code, block.id, "exec")


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_example(block, tmp_path):
    dx.run_python_block(block, tmp_path)


def test_shell_examples(tmp_path):
    # every bash block after the set-up commands (the README has none today)
    for number, block in enumerate(BASH[1:]):
        folder = tmp_path / str(number)
        folder.mkdir()
        dx.run_shell_block(block, BLOCKS, folder)
