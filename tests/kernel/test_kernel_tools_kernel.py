"""Issue #28: the kernel toolset in a real ipykernel, against the scripted server over HTTP.

The scripted server plays the model: it asks for one kernel tool, then answers. What the toolset sent back
is read from the server's recorded requests (the next request's tool message), as the model would see it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from menglong_magic.secrets import secret_forms
from menglong_magic.testing.server import ScriptedOpenAIServer, call_tools, reply, tool_call

pytestmark = pytest.mark.kernel

DB_PASSWORD = "pw-KTSECRET-4f3e2d1c9b"
HIDDEN_TOKEN = "tok-KTHIDDEN-77aa66bb55"  # a value under an innocent name, but known to the secret registry


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as s:
        yield s


def setup(base_url: str, approve: str = "None") -> str:
    return f"""
%load_ext menglong_magic
import pandas as pd
from menglong_magic import ChatAgent
from menglong_magic.models import OpenAIModel
from menglong_magic.secrets import register_secret
agent = ChatAgent(model=OpenAIModel('scripted', base_url={base_url!r}, api_key='sk-test-kerneltools'),
                  mode='auto', approve={approve})
sales = pd.DataFrame({{'region': ['north', 'south', 'east', 'west', 'north'],
                      'units': [3, 5, 2, 8, 1], 'price': [9.5, 7.25, None, 4.0, 9.5]}})
db_password = {DB_PASSWORD!r}
register_secret({HIDDEN_TOKEN!r})
note = 'the token is ' + {HIDDEN_TOKEN!r}
ran = []
"""


def tool_message(request: dict[str, Any]) -> str:
    return next(m["content"] for m in reversed(request["messages"]) if m["role"] == "tool")


def test_list_and_inspect_send_shape_and_dtypes_and_no_secret(kernel, server):
    server.enqueue(call_tools(tool_call("list_variables", {})),
                   call_tools(tool_call("inspect_variable", {"name": "sales"}),
                              tool_call("inspect_variable", {"name": "db_password"})),
                   reply("two regions sell best"))
    kernel.ok(setup(server.base_url))
    kernel.ok("%agent_run -a agent --kernel -q what data do I have?")
    assert len(server.requests) == 3
    listed = tool_message(server.requests[1])
    assert "sales: DataFrame 5×3" in listed
    assert "region:" in listed and "units:int64" in listed and "price:float64" in listed
    assert "db_password: ***" in listed and "note: ***" in listed
    assert "pd" not in listed.split() and "ChatAgent" not in listed and "agent:" not in listed  # modules, classes,
    # the extension's own objects are left out
    tools_offered = {t["function"]["name"] for t in server.requests[0]["tools"]}
    assert tools_offered == {"list_variables", "inspect_variable", "run_code", "last_error", "propose_cell"}
    inspected = "\n".join(m["content"] for m in server.requests[2]["messages"] if m["role"] == "tool")
    assert "shape 5×3" in inspected and "null counts: price=1" in inspected and "describe()" in inspected
    assert "north" in inspected  # head()
    assert "db_password: ***" in inspected
    wire = json.dumps(server.requests) + json.dumps(server.requests, ensure_ascii=False)
    for secret in (DB_PASSWORD, HIDDEN_TOKEN):
        for form in secret_forms(secret):
            assert form not in wire, f"a form of a secret reached the server: {form!r}"


def test_approved_code_runs_once_and_its_output_reaches_the_model(kernel, server):
    code = "ran.append(1)\nprint('units total', sales.units.sum())\nsales.groupby('region').units.sum()"
    server.enqueue(call_tools(tool_call("run_code", {"code": code})), reply("north has 4"))
    kernel.ok(setup(server.base_url, approve="lambda request: True"))
    kernel.ok("%agent_run -a agent --kernel -q -o r total units by region")
    out = kernel.ok("print(ran, r.stop_reason, r.tool_calls[0].approval.approved)")
    assert out.stdout.split() == ["[1]", "completed", "True"]
    result = tool_message(server.requests[1])
    assert "units total 19" in result
    assert "north" in result and "value:" in result


def test_denied_code_never_runs_and_a_traceback_reaches_the_model(kernel, server):
    server.enqueue(call_tools(tool_call("run_code", {"code": "ran.append('denied')"})), reply("ok, not run"))
    kernel.ok(setup(server.base_url, approve="lambda request: 'not on my data'"))
    kernel.ok("%agent_run -a agent --kernel -q -o r try it")
    out = kernel.ok("print(ran, r.stop_reason, r.tool_calls[0].status)")
    assert out.stdout.split() == ["[]", "completed", "denied"]
    assert "denied by the user: not on my data" in tool_message(server.requests[1])
    # A raising snippet: the traceback goes back to the model and the run completes.
    code = "def check(x):\n    raise ValueError(f'bad value {x}')\ncheck(42)"
    server.enqueue(call_tools(tool_call("run_code", {"code": code})), reply("the check raised"))
    kernel.ok("%config AgentMagics.run_code = 'allow'")
    kernel.ok("agent.approve = None")
    kernel.ok("%agent_run -a agent --kernel -q -o r2 check it")
    out = kernel.ok("print(r2.stop_reason)")
    assert out.stdout.strip() == "completed"
    result = tool_message(server.requests[3])
    assert "ValueError: bad value 42" in result and 'line 2, in check' in result and "Traceback" in result
    # run_code = "never": the tool is not even offered
    server.enqueue(reply("fine"))
    kernel.ok("%config AgentMagics.run_code = 'never'")
    kernel.ok("%agent_run -a agent --kernel -q no code")
    assert "run_code" not in {t["function"]["name"] for t in server.requests[-1]["tools"]}


def test_a_figure_is_captured_as_png_and_shown_on_the_card(kernel, server):
    code = "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.bar(sales.region, sales.units)"
    server.enqueue(call_tools(tool_call("run_code", {"code": code})), reply("drawn"))
    kernel.ok(setup(server.base_url))
    kernel.ok("import base64\nfrom menglong_magic.ipython.kernel_tools import KernelTools\nevents = []")
    kernel.ok("r = await agent.arun('plot units', toolsets=[KernelTools(get_ipython(), run_code='allow')], "
              "on_event=events.append)")
    out = kernel.ok("att = [e for e in events if type(e).__name__ == 'ToolAttachment']\n"
                    "print(len(att), att[0].mime, base64.b64decode(att[0].data)[:8] == b'\\x89PNG\\r\\n\\x1a\\n', "
                    "r.stop_reason)")
    assert out.stdout.split() == ["1", "image/png", "True", "completed"]
    assert "[figure 1: a " in tool_message(server.requests[1])
    # the panel's card shows it (the same event stream folded into HTML)
    out = kernel.ok("from menglong_magic.ui.state import RunViewModel\nfrom menglong_magic.ui.html import card_html\n"
                    "vm = RunViewModel()\nfor e in events: vm.apply(e)\n"
                    "card = vm.iterations[0].tools[r.tool_calls[0].id]\n"
                    "html = card_html(card)\nprint('data:image/png;base64,' in html, 'mm-code' in html)")
    assert out.stdout.split() == ["True", "True"]


def test_interrupt_during_sleep_in_run_code_ends_the_cell_and_the_kernel_stays_usable(kernel, server, tmp_path):
    marker = tmp_path / "started"
    code = f"open({str(marker)!r}, 'w').close()\nimport time\ntime.sleep(30)\nran.append('finished')"
    server.enqueue(call_tools(tool_call("run_code", {"code": code})), reply("never reached"))
    kernel.ok(setup(server.base_url))
    kernel.ok("%config AgentMagics.run_code = 'allow'")
    running = kernel.submit("%agent_run -a agent --kernel -q sleep a while")
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline, "the code never started"
        time.sleep(0.05)
    time.sleep(0.2)
    started = time.monotonic()
    kernel.km.interrupt_kernel()
    kernel.wait(running, timeout=30)
    elapsed = time.monotonic() - started
    print(f"Kernel → Interrupt during time.sleep(30) in run_code: the cell replied after {elapsed:.2f}s")
    assert elapsed < 2, f"interrupt took {elapsed:.2f}s"
    assert running.reply["content"]["status"] == "error"
    assert running.errors and running.errors[0]["ename"] == "AgentInterrupted"
    out = kernel.ok("print(ran, _agent_last.stop_reason, 1 + 1)")
    assert out.stdout.split() == ["[]", "cancelled", "2"]
    assert len(server.requests) == 1  # the run stopped: no further model request


def test_propose_cell_puts_the_code_into_the_next_input(kernel, server):
    code = "sales.groupby('region').price.mean()"
    server.enqueue(call_tools(tool_call("propose_cell", {"code": code})), reply("see the new cell"))
    kernel.ok(setup(server.base_url))
    execution = kernel.ok("%%agent -a agent --kernel -q\nwrite the aggregation for me")  # the chat magic too
    payloads = execution.reply["content"].get("payload", [])
    assert {"source": "set_next_input", "text": code, "replace": False} in payloads
    assert "a new cell below the current one, not executed" in tool_message(server.requests[1])
    out = kernel.ok("print('price' in dir())")  # proposed, never run: nothing assigned, no error
    assert out.stdout.strip() == "False"


def test_last_error_reports_the_failing_cell(kernel, server):
    server.enqueue(call_tools(tool_call("last_error", {})), reply("you divided by zero"))
    kernel.ok(setup(server.base_url))
    failing = kernel.run("total = int(sales.units.sum())\nratio = total / 0 if False else 1 / (total - total)")
    assert failing.errors and failing.errors[0]["ename"] == "ZeroDivisionError"
    kernel.ok("%config AgentMagics.kernel_tools = True")
    kernel.ok("%agent_run -a agent -q why did my last cell fail?")
    report = tool_message(server.requests[1])
    assert "ZeroDivisionError" in report and "1 / (total - total)" in report
    assert "Recent cells" in report


def test_nbclient_denies_run_code_at_once(tmp_path, server):
    server.enqueue(call_tools(tool_call("run_code", {"code": "ran.append('nbclient')"})), reply("denied, fine"))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(setup(server.base_url)),
                nbformat.v4.new_code_cell("%agent_run -a agent --kernel -o r run something"),
                nbformat.v4.new_code_cell("print(ran, r.tool_calls[0].status, r.stop_reason)")]
    started = time.monotonic()
    NotebookClient(nb, timeout=60, kernel_name="python3").execute(cwd=str(tmp_path))
    assert time.monotonic() - started < 60
    assert nb.cells[2].outputs[0]["text"].split() == ["[]", "denied", "completed"]
    assert "no one could approve it here" in tool_message(server.requests[1])
