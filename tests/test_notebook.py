"""The notebook tests/notebooks/acme_in_a_notebook.ipynb, executed in a real Jupyter
kernel (nbclient + ipykernel): a function defined in a cell runs in memory, to disk
and stacked with ``result_shape``; each map's cell shows its progress line (an
updating display) and prints the right results."""
from __future__ import annotations

import ast
import os
import re
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

NOTEBOOK = Path(__file__).resolve().parent / "notebooks" / "acme_in_a_notebook.ipynb"


def execute(tmp_path, env=None):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    path = tmp_path / NOTEBOOK.name
    shutil.copy(NOTEBOOK, path)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    old = dict(os.environ)
    os.environ.update(env or {})  # the kernel inherits this process's environment
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def printed(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs
                   if o.output_type == "stream" and o.get("name") == "stdout")


def progress_shown(cell) -> list:
    return [o["data"]["text/plain"] for o in cell.outputs
            if o.output_type == "display_data" and "text/plain" in o.get("data", {})]


def line(cell, tag: str):
    found = re.search(rf"^{tag} (.*)$", printed(cell), re.M)
    assert found, printed(cell)
    return found.group(1)


def test_notebook_runs_maps_with_progress_and_right_results(tmp_path):
    cells = execute(tmp_path)
    maps = cells[1:]
    assert len(maps) == 4
    for cell, (name, n) in zip(maps, [("square", 20), ("square", 20), ("row", 6),
                                      ("row", 6)]):
        shown = progress_shown(cell)
        assert len(shown) == 1, cell.outputs  # one line, updated in place
        assert shown[0].startswith(f"{name}: {n}/{n} calls (100%), 0 failed, "), shown
        assert "calls/s, done in " in shown[0], shown
        assert not any(o.output_type == "error" for o in cell.outputs), cell.outputs
    assert ast.literal_eval(line(maps[0], "IN_MEMORY")) == [x * x + 1 for x in range(20)]
    count, values = line(maps[1], "ON_DISK").split(" ", 1)
    assert int(count) == 20 and ast.literal_eval(values) == [x * x for x in range(20)]
    shape, column = line(maps[2], "STACKED").split(") ", 1)
    assert shape == "(6, 3" and ast.literal_eval(column) == [x * x for x in range(6)]
    shape, column = line(maps[3], "STACKED_IN_MEMORY").split(") ", 1)
    assert shape == "(6, 3" and ast.literal_eval(column) == [-x for x in range(6)]
    assert (tmp_path / "squares" / "square.h5").is_file()
    assert (tmp_path / "rows" / "row.h5").is_file()


def test_notebook_progress_hidden_with_acme_no_progress(tmp_path):
    cells = execute(tmp_path, {"ACME_NO_PROGRESS": "1"})
    for cell in cells[1:]:
        assert progress_shown(cell) == [], cell.outputs
    assert ast.literal_eval(line(cells[1], "IN_MEMORY")) == [x * x + 1 for x in range(20)]
