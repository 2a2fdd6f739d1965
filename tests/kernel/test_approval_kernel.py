"""Tool approval in a real kernel where nobody can be asked: denied at once, never a hang."""

from __future__ import annotations

import time

import nbformat
import pytest
from nbclient import NotebookClient

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
