"""The live panel in real JupyterLab: mid-run progress, completion, Stop on --bg, no script injection."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import Lab, open_notebook, run_all

pytestmark = pytest.mark.browser

SETUP = """
%load_ext menglong_magic
import asyncio
from menglong_magic import ChatAgent, tool
from menglong_magic.models import ScriptedModel, reply, calls, call

@tool
async def slow_step(seconds: float) -> str:
    \"\"\"A slow step.\"\"\"
    await asyncio.sleep(seconds)
    return f"waited {seconds}s"

@tool
def sneaky() -> str:
    return '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'

agent = ChatAgent(model=ScriptedModel([calls(call('slow_step', {'seconds': 2.5})),
                                       calls(call('slow_step', {'seconds': 2.5})), reply('all done')]),
                  mode='auto', tools=[slow_step], name='slow-agent')
bg_agent = ChatAgent(model=ScriptedModel([calls(call('slow_step', {'seconds': 120}))]), mode='auto',
                     tools=[slow_step], name='bg-agent')
xss_agent = ChatAgent(model=ScriptedModel([calls(call('sneaky')), reply('<img src=x onerror="window.__pwned=3">')]),
                      mode='auto', tools=[sneaky], name='xss-agent')
"""


def test_widgets_update_live_while_a_cell_awaits(page: Any, lab: Lab, tmp_path: Path) -> None:
    """Platform guard: an IntProgress updated in an awaiting cell moves in the browser mid-run."""
    cell = ("import asyncio, ipywidgets as w\np = w.IntProgress(max=40)\ndisplay(p)\n"
            "for i in range(40):\n    p.value = i + 1\n    await asyncio.sleep(0.2)")
    open_notebook(page, lab, "live.ipynb", [cell])
    run_all(page)
    bar = page.locator(".widget-hprogress .progress-bar").first
    bar.wait_for(timeout=60_000)
    page.wait_for_function("() => { const b = document.querySelector('.widget-hprogress .progress-bar');"
                           " return b && parseFloat(b.style.width) > 10 && parseFloat(b.style.width) < 90; }",
                           timeout=30_000)
    page.screenshot(path=str(tmp_path / "progress-mid-run.png"))


def test_panel_live_then_completed_stop_and_escaping(page: Any, lab: Lab, tmp_path: Path) -> None:
    cells = [SETUP, "%agent_run -a agent do the slow thing", "h = %agent_run -a bg_agent --bg wait forever",
             "%agent_run -a xss_agent be sneaky"]
    open_notebook(page, lab, "panel.ipynb", cells)
    run_all(page)
    first = page.locator(".mm-panel").nth(0)
    first.locator(".mm-status-running").wait_for(timeout=60_000)
    first.locator(".mm-tool").first.wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "panel-running.png"))
    assert "iteration" in first.inner_text()
    first.locator(".mm-status-completed").wait_for(timeout=60_000)
    assert "all done" in first.inner_text()
    first.screenshot(path=str(tmp_path / "panel-completed.png"))
    if os.environ.get("MENGLONG_UPDATE_SCREENSHOT"):
        first.screenshot(path=str(Path(__file__).resolve().parents[2] / "docs" / "panel.png"))

    bg = page.locator(".mm-panel").nth(1)
    bg.locator(".mm-status-running").wait_for(timeout=60_000)
    bg.locator(".mm-tool").first.wait_for(timeout=30_000)
    bg.locator("button.mm-stop").click()
    bg.locator(".mm-status-cancelled").wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "panel-cancelled.png"))

    sneaky = page.locator(".mm-panel").nth(2)
    sneaky.locator(".mm-status-completed").wait_for(timeout=60_000)
    assert '<img src=x onerror="window.__pwned=1">' in sneaky.inner_text()
    assert page.evaluate("() => window.__pwned") is None
    assert sneaky.locator("img").count() == 0
    page.screenshot(path=str(tmp_path / "panel-escaped.png"))
