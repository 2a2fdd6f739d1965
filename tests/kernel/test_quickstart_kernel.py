"""The quickstart, run as a newcomer runs it (every cell, no key), leaves the magics' default agent the tools
the notebook means it to have: its own map of cities then answers from one weather tool, not two that disagree
(the cassette section's get_weather belongs to its replay agent alone)."""

from __future__ import annotations

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.kernel

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[2] / "notebooks"


def outputs_text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text") or o.get("data", {}).get("text/plain", "") for o in cell.outputs)


def test_after_the_quickstart_a_map_of_cities_uses_one_weather_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MENGLONG_MODEL", "offline")
    notebook = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    notebook.cells += [
        nbformat.v4.new_code_cell("%agent_tools"),
        nbformat.v4.new_code_cell("cities = ['Paris', 'Oslo', 'Lima']\n"
                                  "%agent_map -q -o weathers cities What is the weather in {}?"),
        nbformat.v4.new_code_cell("for answer in weathers:\n    print(answer)"),
    ]
    NotebookClient(notebook, timeout=180, resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()

    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
              if o.output_type == "error"]
    assert not errors
    tools, _, answers = (outputs_text(cell) for cell in notebook.cells[-3:])
    listed = sorted(line.split()[0] for line in tools.splitlines() if line.strip())
    assert listed == ["weather", "word_count"]
    lines = answers.splitlines()
    assert len(lines) == 3, answers
    for city, line in zip(["Paris", "Oslo", "Lima"], lines, strict=True):
        assert f'"city":"{city}"' in line and '"celsius":21' in line, line
        assert "get_weather" not in line and "18 degrees" not in line, line
