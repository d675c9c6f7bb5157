"""The notebooks: committed without outputs, and each one runs top to bottom within the 3-minute budget.

Executed with nbclient in a fresh kernel whose working directory is notebooks/ (as Jupyter opens them), with
one torch/OpenMP thread (the notebooks also pin it).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
EXPECTED = ["01_quickstart", "02_visual_sinks_and_vhd", "03_routes_and_circuits", "04_hallucination_probes",
            "05_long_context", "06_causal_tools"]
BUDGET_S = 180


def _read(path: Path):
    import nbformat

    return nbformat.read(path, as_version=4)


def test_the_six_notebooks_are_there():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == EXPECTED


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_committed_notebook_has_no_outputs(path):
    stale = [index for index, cell in enumerate(_read(path).cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not stale, f"{path.name}: cells {stale} carry outputs; clear them before committing (Jupyter: " \
                      "Edit > Clear All Outputs, or `jupyter nbconvert --clear-output --inplace`)"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_uses_only_the_public_api(path):
    """Internals are underscored: a notebook importing one needs a public function instead."""
    for cell in _read(path).cells:
        if cell.cell_type == "code":
            for line in cell.source.splitlines():
                if line.lstrip().startswith(("import ", "from ")):
                    assert "._" not in line and " _" not in line.split("import", 1)[-1], f"{path.name}: {line}"


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_runs_within_budget(path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = _read(path)
    started = time.perf_counter()
    NotebookClient(notebook, timeout=BUDGET_S, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    elapsed = time.perf_counter() - started
    print(f"{path.stem}: {elapsed:.1f} s")
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert elapsed < BUDGET_S, f"{path.name} took {elapsed:.0f} s, over the {BUDGET_S} s budget per notebook"
