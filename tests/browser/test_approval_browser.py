"""Approve / Deny on the panel in real JupyterLab: clicks made while a blocking ``%agent_run`` cell runs (the
comm message must reach the kernel mid-cell) and on a ``--bg`` run with the kernel idle; later cells check which
tools really ran and what each record says about its decision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lab_helpers import Lab, open_notebook

pytestmark = pytest.mark.browser

SETUP = r'''
%load_ext menglong_magic
from menglong_magic import ChatAgent, tool
from menglong_magic.models import ScriptedModel, reply, calls, call

ran = []

@tool(requires_approval=True)
def send_email(to: str) -> str:
    """Send an email."""
    ran.append(f"send_email:{to}")
    return f"sent to {to}"

@tool(requires_approval=True)
async def delete_file(path: str) -> str:
    """Delete a file."""
    ran.append(f"delete_file:{path}")
    return f"deleted {path}"

def make(to):
    turn = calls(call('send_email', {'to': to}), call('delete_file', {'path': '/tmp/x'}))
    return ChatAgent(model=ScriptedModel([turn, reply('done')]), mode='auto', tools=[send_email, delete_file],
                     name='gated')

blocking, background = make('ann'), make('bob')
'''
CHECK = ("print(sorted(ran), sorted((c.name, c.status, c.approval.approved, c.approval.by, c.approval.reason)"
         " for c in {var}.tool_calls))")


def running(cell: Any) -> bool:
    """The cell's prompt says ``[*]`` (the kernel's status is no guide: comm messages flip it to idle)."""
    return "*" in cell.locator(".jp-InputPrompt").inner_text()


def run_cells(page: Any, command: str, index: int) -> None:
    page.evaluate("([cmd, i]) => { const nb = window.jupyterapp.shell.currentWidget.content; nb.activeCellIndex = i;"
                  " window.jupyterapp.commands.execute(cmd); }", [command, index])


def approve_and_deny(page: Any, panel: Any, reason: str) -> None:
    """Type a reason on delete_file; approve send_email, which runs and finishes while delete_file still waits
    (its card re-renders around the controls); then deny delete_file with the reason typed before."""
    email = panel.locator(".mm-tool", has_text="send_email")
    delete = panel.locator(".mm-tool", has_text="delete_file")
    email.locator("button.mm-approve").wait_for(timeout=60_000)
    delete.locator("button.mm-deny").wait_for(timeout=60_000)
    assert '"to": ' in email.locator(".mm-args").inner_text()  # the arguments are on the card
    delete.locator("input.mm-reason").fill(reason)  # typed before the other card re-renders the iteration
    email.locator("button.mm-approve").click()
    email.locator(".mm-decision-approved").wait_for(timeout=30_000)  # ran: "ok · approved (panel)"
    assert "ok · approved (panel)" in email.inner_text()
    assert delete.locator("button.mm-deny").is_enabled() and "awaiting approval" in delete.inner_text()
    assert delete.locator("input.mm-reason").input_value() == reason  # the half-typed reason survived
    delete.locator("button.mm-deny").click()


def output_text(cell: Any) -> str:
    out = cell.locator(".jp-OutputArea-output")
    out.first.wait_for(timeout=60_000)
    return out.first.inner_text().strip()


def test_approve_and_deny_from_the_panel_blocking_and_bg(page: Any, lab: Lab, tmp_path: Path) -> None:
    cells = [SETUP, "%agent_run -a blocking -o r1 mail ann and delete x", CHECK.format(var="r1"),
             "h = %agent_run -a background --bg mail bob and delete x", "r2 = h.result()\n" + CHECK.format(var="r2")]
    open_notebook(page, lab, "approval.ipynb", cells)
    run_cells(page, "notebook:run-all-above", 4)  # everything but the last cell
    nb_cells = page.locator(".jp-Notebook .jp-CodeCell")

    # 1. A blocking cell: the clicks must reach the kernel while the cell runs (JupyterLab >= 4.4, ipykernel 7).
    live = nb_cells.nth(1).locator(".mm-live")
    try:
        live.locator(".mm-tool", has_text="delete_file").locator("button.mm-deny").wait_for(timeout=90_000)
    except Exception:  # keep what the page showed (e.g. the call denied at once: no approver reached the run)
        page.screenshot(path=str(tmp_path / "approval-no-buttons.png"))
        (tmp_path / "approval-no-buttons.txt").write_text(page.locator(".jp-Notebook").inner_text())
        raise
    assert running(nb_cells.nth(1)), "the cell should still be running, waiting for the clicks"
    page.screenshot(path=str(tmp_path / "approval-pending.png"))
    approve_and_deny(page, live, "not now")
    final = nb_cells.nth(1).locator(".mm-final")
    final.wait_for(state="attached", timeout=60_000)
    assert nb_cells.nth(1).locator(".mm-approval-stuck").count() == 0
    decisions = final.locator(".mm-decisions").inner_text()
    assert "✓ send_email(to='ann') approved (panel)" in decisions
    assert "✗ delete_file(path='/tmp/x') denied (panel): not now" in decisions  # which call: its arguments
    assert final.locator("button").count() == 0  # nothing clickable after the run
    assert output_text(nb_cells.nth(2)) == (
        "['send_email:ann'] [('delete_file', 'denied', False, 'panel', 'not now'), "
        "('send_email', 'ok', True, 'panel', None)]")

    # 2. --bg: the cell has returned, the kernel is idle while the run waits for the clicks.
    bg = nb_cells.nth(3).locator(".mm-live")
    bg.locator(".mm-tool", has_text="delete_file").locator("button.mm-deny").wait_for(timeout=60_000)
    assert not any(running(nb_cells.nth(i)) for i in range(5))  # no cell is running
    approve_and_deny(page, bg, "too risky")
    bg_final = nb_cells.nth(3).locator(".mm-final")
    bg_final.wait_for(state="attached", timeout=60_000)
    assert "✗ delete_file(path='/tmp/x') denied (panel): too risky" in bg_final.locator(".mm-decisions").inner_text()
    bg_final.screenshot(path=str(tmp_path / "approval-final.png"))
    run_cells(page, "notebook:run-cell", 4)
    assert output_text(nb_cells.nth(4)) == (
        "['send_email:ann', 'send_email:bob'] [('delete_file', 'denied', False, 'panel', 'too risky'), "
        "('send_email', 'ok', True, 'panel', None)]")


DEAF = r'''
import asyncio
from menglong_magic import events as ev
from menglong_magic.agent.approval import ApprovalRequest
from menglong_magic.ui.panel import RunPanel

deaf = RunPanel(title='deaf', update_interval=0.05)
deaf.approval_clicked = lambda *a: False  # as if the front end held the click: the kernel never hears it
deaf.show()
for e in (ev.RunStarted('d', agent='a', model='m', mode='auto', task='x', max_iterations=1),
          ev.IterationStarted('d', iteration=1, max_iterations=1),
          ev.ToolCallStarted('d', iteration=1, call_id='c', name='send_email', arguments={'to': 'x'}),
          ev.ApprovalRequested('d', iteration=1, call_id='c', name='send_email', arguments={'to': 'x'}, agent='a')):
    deaf.handle(e)
waiting = asyncio.ensure_future(deaf.request_approval(ApprovalRequest('send_email', {'to': 'x'}, 'c', 'd', 'a', 1)))
# a call whose card is not shown (e.g. an iteration summarised away): its controls are listed under the body
orphan = asyncio.ensure_future(deaf.request_approval(ApprovalRequest('delete_file', {'path': '/x'}, 'o', 'd', 'a', 1)))
'''


def test_a_click_the_kernel_never_hears_is_reported_on_the_card(page: Any, lab: Lab, tmp_path: Path) -> None:
    open_notebook(page, lab, "deaf.ipynb", [DEAF])
    run_cells(page, "notebook:run-all-cells", 0)
    card = page.locator(".mm-live .mm-tool", has_text="send_email")
    card.locator("button.mm-approve").click(timeout=60_000)
    assert card.locator("button.mm-approve").is_disabled() and card.locator("button.mm-deny").is_disabled()
    stuck = card.locator(".mm-approval-stuck")
    stuck.wait_for(timeout=20_000)
    assert "has not received this answer" in stuck.inner_text() and "--bg" in stuck.inner_text()
    listed = page.locator(".mm-live .mm-approvals-orphans .mm-approval")
    assert listed.count() == 1 and listed.locator(".mm-approval-label").inner_text() == "delete_file(path='/x')"
    assert listed.locator("button.mm-deny").is_enabled()
    assert card.locator(".mm-approval-label").is_hidden()  # on its own card the label is not repeated
    page.locator(".mm-live").screenshot(path=str(tmp_path / "approval-stuck.png"))
