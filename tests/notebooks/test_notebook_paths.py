"""Notebooks find the shipped files wherever they run (a copy opened outside the repository included): no path
is derived from the working directory, and every `ROOT / ...` path they read exists when evaluated elsewhere."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
ROOT_PATH = re.compile(r"ROOT(?:\s*/\s*\"[^\"]+\")+")


def _code(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_paths_do_not_depend_on_the_working_directory(path, tmp_path):
    code = _code(path)
    assert "Path.cwd()" not in code and "os.getcwd()" not in code, path.name
    root_line = next((line for line in code.splitlines() if line.startswith("ROOT =")), None)
    if root_line is None:
        return
    reads = sorted(set(ROOT_PATH.findall(code)))
    assert reads, f"{path.name} defines ROOT but reads nothing through it"
    script = "\n".join(["from pathlib import Path", "from workbench.models.registry import data_root", root_line,
                        *[f"assert ({expression}).exists(), {expression!r}" for expression in reads]])
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-800:]
