"""notebooks/figures.ipynb rebuilds the tables and figures from a results root alone."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).parents[1]
NOTEBOOK = REPO / "notebooks" / "figures.ipynb"
FIXTURE = Path(__file__).parent / "fixtures" / "results"


def with_parameters(notebook: nbformat.NotebookNode, **values: str) -> nbformat.NotebookNode:
    """Override the parameters cell the way papermill does: a new cell right after it."""
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(source))
    return notebook


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_notebook_rebuilds_tables_and_figures_from_a_results_root(tmp_path, monkeypatch):
    # the kernel is a separate process: make this checkout importable there without an install
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    notebook = with_parameters(nbformat.read(NOTEBOOK, as_version=4), RESULTS=str(FIXTURE), OUT=str(tmp_path))
    NotebookClient(notebook, kernel_name="python3", timeout=120,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    for name in ["runs.csv", "cells.csv", "paper_table.csv", "paper_table.md", "paper_table.tex"]:
        assert (tmp_path / "tables" / name).stat().st_size > 0
    for name in ["score_vs_storage", "score_vs_sparsity"]:
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 0
        assert (tmp_path / "figures" / f"{name}.pdf").stat().st_size > 0
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
    assert any("84.00 ± 25.41" in o.get("data", {}).get("text/markdown", "") for o in outputs)  # mean ± 95% interval
