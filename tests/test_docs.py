"""The documentation site (docs/): it builds with warnings as errors, its API pages cover
the public API, and every code block in it runs (rules: tests/doc_examples.py)."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

import doc_examples as dx
from conftest import run_script

DOCS = dx.REPO / "docs"
PAGES = sorted(DOCS.rglob("*.rst"))
BLOCKS = [block for page in PAGES for block in dx.read_blocks(page)]
PYTHON = [b for b in BLOCKS if b.language == "python"]
BASH = [b for b in BLOCKS if b.language == "bash"]
EXAMPLES = sorted((dx.REPO / "examples").glob("*.py"))

pytestmark = pytest.mark.timeout(600)


def test_the_docs_build_with_warnings_as_errors(tmp_path):
    # -E: no saved environment; -n: every cross-reference must resolve.
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-n",
                           "-b", "html", str(DOCS), str(tmp_path / "html")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (f"sphinx-build -W failed:\n{proc.stdout[-3000:]}\n"
                                  f"--- stderr ---\n{proc.stderr}")
    # (a page that no toctree lists is a warning, so every page is reachable)
    for page in ("index", "migration", "api", "guide/index", "tutorials/index"):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page


def test_the_api_pages_cover_the_public_api():
    import acme
    text = (DOCS / "api.rst").read_text(encoding="utf-8")
    documented = {name for name in re.findall(r"^\.\. (?:auto\w+|data)::\s+([\w.]+)", text, re.M)
                  if "." not in name}  # acme.backends.* is documented there too
    missing = sorted(set(acme.__all__) - documented)
    assert not missing, f"names in acme.__all__ without an entry in docs/api.rst: {missing}"
    extra = sorted(documented - set(acme.__all__))
    assert not extra, f"docs/api.rst documents names that acme does not export: {extra}"


def test_the_docs_have_runnable_examples():
    dx.check_languages(BLOCKS)
    literal = [where for page in PAGES for where in dx.literal_blocks(page)]
    assert not literal, f"literal blocks (::) that no test runs; use a code-block: {literal}"
    assert len(PYTHON) >= 15 and len(BASH) >= 4, [b.id for b in BLOCKS]
    for block in PYTHON:
        compile(block.code, block.id, "exec")
    # the tutorials are code the reader runs: each has some
    for page in sorted((DOCS / "tutorials").glob("*.rst")):
        if page.name != "index.rst":
            assert any(b.source.endswith(page.name) for b in PYTHON), page


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_example(block, tmp_path):
    dx.run_python_block(block, tmp_path)


@pytest.mark.parametrize("block", BASH, ids=[b.id for b in BASH])
def test_shell_example(block, tmp_path):
    dx.run_shell_block(block, BLOCKS, tmp_path)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_the_examples_folder_runs(example, tmp_path):
    run = run_script(example, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, f"{example.name}:\n{run}"
    assert not run.leftovers, f"{example.name} left processes running:\n{run}"


def test_the_performance_commands_exist_with_the_options_the_docs_name(tmp_path):
    text = (DOCS / "guide" / "performance.rst").read_text(encoding="utf-8")
    dx.check_benchmark_commands(dx.benchmark_bullets(text), tmp_path)
