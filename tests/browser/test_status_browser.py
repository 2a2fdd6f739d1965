"""JupyterLab's kernel status while an agent cell runs: Busy from start to end, as for any running cell.

The notebook records every status the kernel publishes with its parent's type: without the fix, the panel's
display made JupyterLab send a ``create_subshell_request`` whose busy → idle turned the status bar to Idle
(see menglong_magic/ipython/kernel_status.py).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from lab_helpers import Lab, open_notebook, run_all

pytestmark = pytest.mark.browser

SETUP = r'''
%load_ext menglong_magic
import asyncio, time
from menglong_magic import ChatAgent, tool
from menglong_magic.models import ScriptedModel, reply, calls, call

STATUS_LOG = []
_kernel = get_ipython().kernel
_publish = _kernel._publish_status
def _recording(status, channel, parent=None):
    used = parent or _kernel.get_parent(channel)
    STATUS_LOG.append((time.monotonic(), status, channel, (used or {}).get("header", {}).get("msg_type")))
    return _publish(status, channel, parent)
_kernel._publish_status = _recording

@tool
async def slow_step(seconds: float) -> str:
    """A slow step."""
    await asyncio.sleep(seconds)
    return f"waited {seconds}s"

agent = ChatAgent(model=ScriptedModel([calls(call('slow_step', {'seconds': 8})), reply('done')]),
                  mode='auto', tools=[slow_step], name='status-agent')
'''
RUN = "%agent_run -a agent wait a while"
REPORT = "t0 = STATUS_LOG[0][0]\nprint(\"busy\", [(round(t - t0, 2), s, c, m) for t, s, c, m in STATUS_LOG])"

STATUS_JS = ("() => { const w = window.jupyterapp.shell.currentWidget;"
             " const k = w && w.sessionContext.session && w.sessionContext.session.kernel;"
             " return k ? k.status : null; }")


def test_the_status_bar_stays_busy_while_an_agent_cell_runs(page: Any, lab: Lab) -> None:
    open_notebook(page, lab, "status.ipynb", [SETUP, RUN, REPORT])
    run_all(page)
    page.wait_for_selector(".mm-panel", timeout=120_000)  # the panel is on screen: the run is under way
    statuses: list[str] = []
    bar: list[str] = []
    deadline = time.monotonic() + 120
    # Sample the kernel status JupyterLab shows while the run is under way (8 s of tool time): a sample
    # counts only if the run's final view had not appeared yet once it was taken.
    while time.monotonic() < deadline:
        status = page.evaluate(STATUS_JS)
        items = page.locator(".jp-StatusBar-TextItem", has_text="|")
        text = items.first.inner_text() if items.count() else ""
        if page.locator(".mm-final").count():
            break
        statuses.append(status)
        bar.append(text)
        page.wait_for_timeout(200)
    report = page.locator(".jp-OutputArea-output pre", has_text="busy").last
    report.wait_for(timeout=120_000)
    assert len(statuses) >= 10, statuses
    assert set(statuses) == {"busy"}, (statuses, bar, report.inner_text())
    assert bar and all(b.endswith("Busy") for b in bar), ([(i, b[-5:]) for i, b in enumerate(bar)], report.inner_text())
