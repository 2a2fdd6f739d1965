"""A ``--bg`` run still going when its cell ends, executed by nbclient (as papermill does): the saved notebook.

nbclient reads only the messages of the cell it is running, and stores widget state, so without care the saved
notebook keeps the live panel as it was when its cell ended ("running") and never gets the final view.
"""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.kernel

SETUP = """
%load_ext menglong_magic
import asyncio
from menglong_magic import ChatAgent, tool
from menglong_magic.models import ScriptedModel, reply, calls, call

@tool
async def slow(seconds: float) -> str:
    \"\"\"Sleep a while.\"\"\"
    await asyncio.sleep(seconds)
    return f"slept {seconds}"

def agent(answer, seconds=1.0):
    return ChatAgent(model=ScriptedModel([calls(call("slow", {"seconds": seconds})), reply(answer)]),
                     mode="auto", tools=[slow], name="bg-agent")
"""

WIDGET = "application/vnd.jupyter.widget-view+json"


def outputs_of(cell: dict) -> list[dict]:
    """The non-empty outputs of a cell (an emptied live output is saved as an output with no data)."""
    return [o for o in cell["outputs"] if o.get("data") or o.get("text")]


def html_of(cell: dict) -> str:
    return "".join(o["data"].get("text/html", "") for o in outputs_of(cell) if "data" in o)


def execute(tmp_path, *sources: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(SETUP), *(nbformat.v4.new_code_cell(s) for s in sources)]
    NotebookClient(nb, timeout=120, kernel_name="python3").execute(cwd=str(tmp_path))
    path = tmp_path / "saved.ipynb"
    nbformat.write(nb, path)
    return nbformat.read(path, as_version=4)  # what a reader of the saved file gets


def test_a_bg_run_finishing_in_a_later_cell_saves_its_final_view(tmp_path):
    saved = execute(
        tmp_path,
        "a, b = agent('first answer'), agent('second answer', 1.5)",
        "h1 = %agent_run -a a --bg research tides",
        "h2 = %agent_run -a b --bg write about tides",
        "r1, r2 = await h1, await h2\nprint(r1.final_output, '|', r2.final_output)",
    )
    assert saved.cells[4].outputs[-1]["text"].strip() == "first answer | second answer"
    for index, answer in ((2, "first answer"), (3, "second answer")):
        cell = saved.cells[index]
        kinds = [set(o.get("data", {})) for o in outputs_of(cell)]
        assert kinds == [{"text/html", "text/plain"}], kinds  # the final view, in place of the live panel
        assert answer in html_of(cell)
        assert "mm-final-completed" in html_of(cell)
        assert WIDGET not in str(cell["outputs"])


def test_a_cancelled_bg_run_saves_cancelled_and_tool_results_stay(tmp_path):
    saved = execute(
        tmp_path,
        "slowest = agent('never', 30.0)",
        "h = %agent_run -a slowest --bg search everything",
        "await asyncio.sleep(0.5)\nh.cancel()\nr = await h\nprint(r.stop_reason)",
    )
    assert saved.cells[3].outputs[-1]["text"].strip() == "cancelled"
    html = html_of(saved.cells[2])
    assert "mm-final-cancelled" in html, html[:300]
    assert WIDGET not in str(saved.cells[2]["outputs"])


def test_a_bg_run_awaited_in_its_own_cell_keeps_one_final_view(tmp_path):
    # The showing cell is still running when the run ends: the usual form (live output emptied, a new final view).
    saved = execute(tmp_path, "own = agent('own answer', 0.2)",
                    "h = %agent_run -a own --bg quick\nr = await h\nprint(r.final_output)")
    cell = saved.cells[2]
    assert cell.outputs[-1]["text"].strip() == "own answer"
    finals = [o for o in outputs_of(cell) if "text/html" in o.get("data", {})]
    assert len(finals) == 1 and "own answer" in finals[0]["data"]["text/html"]


def test_a_bg_run_still_going_when_the_notebook_ends_is_saved_as_a_live_panel(tmp_path):
    # Honest: the run had not finished when the notebook was saved; nothing claims it did.
    saved = execute(tmp_path, "late = agent('late answer', 20.0)", "h = %agent_run -a late --bg take long")
    cell = saved.cells[2]
    assert [set(o["data"]) for o in outputs_of(cell)] == [{WIDGET}]
    assert "late answer" not in str(cell["outputs"]) + str(saved.metadata.get("widgets"))
