"""Tool approval in a real kernel where nobody can be asked: denied at once, never a hang."""

from __future__ import annotations

import json
import time

import nbformat
import pytest
from nbclient import NotebookClient
from test_frontend import _send as send

pytestmark = pytest.mark.kernel

SETUP = """
%load_ext menglong_magic
from menglong_magic import ChatAgent, tool

sent = []

@tool(requires_approval=True)
def send_email(to: str) -> str:
    \"\"\"Send an email.\"\"\"
    sent.append(to)
    return f"sent to {to}"

@tool
def lookup(name: str) -> str:
    \"\"\"Look up a name.\"\"\"
    return name.upper()
"""


def test_non_interactive_client_denies_at_once(kernel):
    kernel.ok(SETUP)
    started = time.monotonic()
    kernel.ok("%agent_run -q -o r -m offline Email 'ann'")  # jupyter_client here sends allow_stdin=False
    assert time.monotonic() - started < 30
    out = kernel.ok("print(sent, sorted((c.name, c.status, c.approval.by if c.approval else '-') "
                    "for c in r.tool_calls))")
    assert out.stdout.strip() == "[] [('lookup', 'ok', '-'), ('send_email', 'denied', 'timeout')]"
    # --approve gates every call of that run
    kernel.ok("%agent_run -q -o r2 -m offline --approve -t lookup Look up 'bob'")
    out = kernel.ok("print([(c.name, c.status) for c in r2.tool_calls])")
    assert out.stdout.strip() == "[('lookup', 'denied')]"


def test_nbclient_run_all_is_never_stuck_on_an_approval(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(SETUP),
        nbformat.v4.new_code_cell("%agent_run -m offline -o r Email 'carl'"),
        nbformat.v4.new_code_cell("c = next(c for c in r.tool_calls if c.name == 'send_email')\n"
                                  "print(sent, c.status, c.approval.reason)"),
    ]
    started = time.monotonic()
    NotebookClient(nb, timeout=60, kernel_name="python3").execute(cwd=str(tmp_path))
    assert time.monotonic() - started < 60
    text = nb.cells[2].outputs[0]["text"]
    assert text.startswith("[] denied") and "no one could approve" in text
    # the saved record says who decided
    saved = nbformat.writes(nb)
    assert "denied" in saved


def test_panel_buttons_decide_a_bg_runs_calls_over_the_comm(kernel):
    """A widget front end (cellId, stdin) clicks Approve on one call and Deny on the other, as panel.js does."""
    meta = {"cellId": "cell-1"}
    send(kernel, SETUP + "\nfrom menglong_magic.models import ScriptedModel, calls, call, reply\n"
                 "agent = ChatAgent(model=ScriptedModel([calls(call('send_email', {'to': 'ann'}, id='a'), "
                 "call('send_email', {'to': 'bob'}, id='b')), reply('done')]), mode='auto', tools=[send_email])",
         metadata=meta)
    started = send(kernel, "h = %agent_run -a agent --bg mail both", metadata=meta)
    opens = [m for m in started.of_type("comm_open") if m["content"].get("target_name") == "jupyter.widget"
             and "approvals" in json.dumps(m["content"]["data"])]
    assert opens, "no panel widget was opened"
    comm_id = opens[-1]["content"]["comm_id"]
    # Wait until both calls are pending in the panel's synced state, then click as panel.js would.
    deadline = time.monotonic() + 20
    pending: set[str] = set()
    while time.monotonic() < deadline and pending != {"a", "b"}:
        try:
            msg = kernel.client.get_iopub_msg(timeout=1)
        except Exception:
            continue
        if msg["msg_type"] == "comm_msg" and msg["content"]["comm_id"] == comm_id:
            state = msg["content"]["data"].get("state", {})
            if "approvals" in state:
                pending = {entry[0] for entry in state["approvals"]}
    assert pending == {"a", "b"}
    for call_id, approved, reason in (("a", True, ""), ("b", False, "not bob")):
        content = {"comm_id": comm_id, "data": {"method": "custom", "content": {
            "type": "approval", "call_id": call_id, "approved": approved, "reason": reason}}}
        kernel.client.shell_channel.send(kernel.client.session.msg("comm_msg", content))
    out = send(kernel, "r = await h\nprint(sent, sorted((c.id, c.status, c.approval.by, c.approval.reason) "
                       "for c in r.tool_calls))", metadata=meta)
    assert out.stdout.strip() == "['ann'] [('a', 'ok', 'panel', None), ('b', 'denied', 'panel', 'not bob')]"


def _input_request(kernel, timeout: float = 20) -> dict:
    return kernel.client.get_stdin_msg(timeout=timeout)


def _collect(kernel, msg_id: str, until: float) -> list[dict]:
    """iopub messages of ``msg_id`` until ``until`` (monotonic) or its idle status."""
    messages = []
    while time.monotonic() < until:
        try:
            msg = kernel.client.get_iopub_msg(timeout=0.2)
        except Exception:
            continue
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        messages.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    return messages


def _stdout(messages: list[dict]) -> str:
    return "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream"
                   and m["content"]["name"] == "stdout")


def test_an_interrupted_prompt_ends_and_the_next_run_asks_at_once(kernel):
    """Kernel → Interrupt during a stdin approval prompt used to leave ipykernel's input() polling in its thread;
    the next run's prompt polled the same socket beside it, the answer went to the dead prompt and the cell hung
    (and when the cell itself was run again, its old box was gone: nobody could answer the dead prompt). Now the
    interrupted prompt ends with its run: the next run asks at once, and its answer is its own."""
    kernel.ok(SETUP)
    line = "%agent_run -q -m offline -t send_email Email 'ann'"
    for _ in range(2):  # twice: each interrupted prompt ends, none piles up
        started = kernel.client.execute(line, allow_stdin=True)
        assert "approve send_email" in _input_request(kernel)["content"]["prompt"]
        kernel.km.interrupt_kernel()
        interrupted = _collect(kernel, started, time.monotonic() + 30)
        assert any(m["msg_type"] == "error" for m in interrupted)  # the run was cancelled, the cell interrupted

    second = kernel.client.execute(line, allow_stdin=True)  # the same cell again: the old boxes are gone
    assert "approve send_email" in _input_request(kernel, timeout=10)["content"]["prompt"]
    kernel.client.input("n")
    finished = _collect(kernel, second, time.monotonic() + 30)
    assert not [m for m in finished if m["msg_type"] == "error"]
    assert "earlier approval prompt" not in _stdout(finished)
    out = kernel.ok("print(sent, [(c.status, c.approval.by) for c in _agent_last.tool_calls])")
    assert out.stdout.strip() == "[] [('denied', 'prompt')]"
