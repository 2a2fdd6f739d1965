"""Record the data_analysis notebook's cassette: its cells run in a real kernel, the scripted server plays the model.

    .venv/bin/python scripts/record_data_analysis.py   # writes notebooks/cassettes/data_analysis.jsonl
    MENGLONG_MODEL=offline .venv/bin/python scripts/make_notebooks.py data_analysis.ipynb   # then the notebook

The stand-in model (a responder of :class:`ScriptedOpenAIServer`, reached over HTTP by the real ``openai`` client)
works like an analyst: it lists the variables, inspects ``sales``, runs an aggregation (approved by the
notebook's ``approve_read_only``), draws a figure, proposes a cell, and answers from the aggregation's output as
the kernel tools returned it. The notebook's cells up to the run are executed as they are, except that the agent
talks to the stand-in through a ``Recorder``; the cassette replaces the committed one only if the run completed
with every step ok.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import sys
import tempfile
from typing import Any

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CASSETTE = NOTEBOOKS / "cassettes" / "data_analysis.jsonl"
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from make_notebooks import DATA_ANALYSIS, DATA_ANALYSIS_AGENT  # noqa: E402

from menglong_magic.testing.server import ScriptedOpenAIServer, call_tools, reply, tool_call  # noqa: E402

AGGREGATE = ("by_region = (sales.groupby(\"region\")\n"
             "             .agg(units=(\"units\", \"sum\"), avg_price=(\"price\", \"mean\"))\n"
             "             .sort_values(\"units\", ascending=False))\n"
             "by_region")
FIGURE = ("import matplotlib.pyplot as plt\n\n"
          "ax = by_region[\"units\"].plot.bar(title=\"Units sold by region\", color=\"#1f6feb\")\n"
          "ax.set_ylabel(\"units\")\n"
          "plt.tight_layout()")
PROPOSAL = ("monthly = sales.pivot_table(index=\"month\", columns=\"region\", values=\"units\", aggfunc=\"sum\", "
            "fill_value=0)\nmonthly")
STEPS: list[tuple[str, dict[str, Any], str]] = [
    ("list_variables", {}, "Let me see what is in the notebook."),
    ("inspect_variable", {"name": "sales"}, "`sales` looks like the data; let me inspect it."),
    ("run_code", {"code": AGGREGATE}, "Units per region and the average price:"),
    ("run_code", {"code": FIGURE}, "Now the chart."),
    ("propose_cell", {"code": PROPOSAL}, "And a cell for monthly totals."),
]


def analyst(body: dict[str, Any]) -> Any:
    """The stand-in model: the next step of the plan, then an answer read from the aggregation's output."""
    results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    if len(results) < len(STEPS):
        name, arguments, text = STEPS[len(results)]
        return call_tools(tool_call(name, arguments), text=text)
    table = results[2].split("value:\n", 1)[1].splitlines()
    rows = [line.split() for line in table if re.match(r"^[a-z]+\s+\d", line)]
    region, units, price = rows[0][0], rows[0][1], float(rows[0][2])
    cheapest = min(rows, key=lambda r: float(r[2]) if r[2] != "NaN" else float("inf"))
    return reply(f"**{region.capitalize()}** sells the most: {units} units at an average price of {price:.2f}. "
                 f"{cheapest[0].capitalize()} has the lowest average price ({float(cheapest[2]):.2f}). "
                 "The chart is on the `run_code` card, and the monthly totals cell is below this one.")


def main() -> None:
    run_index = next(i for i, c in enumerate(DATA_ANALYSIS) if c.source.startswith("%agent_run -a analyst"))
    cells = [nbformat.from_dict(dict(c)) for c in DATA_ANALYSIS[: run_index + 1] if c.cell_type == "code"]
    with ScriptedOpenAIServer(responder=analyst) as server, tempfile.TemporaryDirectory() as tmp:
        recording = pathlib.Path(tmp) / "data_analysis.jsonl"
        stand_in = (f"Recorder(OpenAIModel(\"analyst-stand-in\", base_url={server.base_url!r}, "
                    f"api_key=\"not-needed\"), {str(recording)!r}, mode=\"w\")")
        agent_cell = next(c for c in cells if c.source == DATA_ANALYSIS_AGENT)
        agent_cell.source = ("from menglong_magic.models import OpenAIModel, Recorder\n" + DATA_ANALYSIS_AGENT.replace(
            'model="replay:cassettes/data_analysis.jsonl"', f"model={stand_in}"))
        cells.append(nbformat.v4.new_code_cell(
            "import json\nr = _agent_last\nprint(json.dumps({'stop_reason': r.stop_reason, "
            "'calls': [(c.name, c.status) for c in r.tool_calls]}))"))
        nb = nbformat.v4.new_notebook(cells=cells)
        NotebookClient(nb, timeout=120, kernel_name="python3").execute(cwd=str(NOTEBOOKS))
        summary = json.loads(nb.cells[-1].outputs[0]["text"])
        expected = [[name, "ok"] for name, _, _ in STEPS]
        if summary != {"stop_reason": "completed", "calls": expected}:
            raise SystemExit(f"the recorded run is not the expected one; cassette not replaced: {summary}")
        shutil.copyfile(recording, CASSETTE)
    print(f"wrote {CASSETTE} ({len(CASSETTE.read_text().splitlines())} requests)")


if __name__ == "__main__":
    main()
