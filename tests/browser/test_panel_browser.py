"""The run view in real JupyterLab: live progress and tool progress, Stop on --bg, the final view (one output,
Markdown, progress complete, no Stop), and no script injection from model or tool text."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import Lab, open_notebook, run_all

pytestmark = pytest.mark.browser

SETUP = r'''
%load_ext menglong_magic
import asyncio
from menglong_magic import ChatAgent, RunContext, tool
from menglong_magic.models import ScriptedModel, reply, calls, call

@tool
async def slow_step(seconds: float) -> str:
    """A slow step."""
    await asyncio.sleep(seconds)
    return f"waited {seconds}s"

@tool
async def crawl(ctx: RunContext, pages: int) -> str:
    """Crawl some pages, reporting progress."""
    for i in range(pages):
        ctx.progress(i + 1, pages, "pages")
        await asyncio.sleep(0.25)
    return f"crawled {pages} pages"

@tool
def sneaky() -> str:
    return ('<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
            '[click](javascript:window.__pwned=4)')

agent = ChatAgent(model=ScriptedModel([calls(call('crawl', {'pages': 12})),
                                       calls(call('slow_step', {'seconds': 2.5})), reply('all done')]),
                  mode='auto', tools=[slow_step, crawl], name='slow-agent')
bg_agent = ChatAgent(model=ScriptedModel([calls(call('slow_step', {'seconds': 120}))]), mode='auto',
                     tools=[slow_step], name='bg-agent')
XSS_ANSWER = ('<img src=x onerror="window.__pwned=3"> <script>window.__pwned=5</script> '
              '[link](javascript:window.__pwned=6) <a href="javascript:window.__pwned=7">raw</a> '
              '![pic](javascript:window.__pwned=8)')
xss_agent = ChatAgent(model=ScriptedModel([calls(call('sneaky')), reply(XSS_ANSWER)]),
                      mode='auto', tools=[sneaky], name='xss-agent')
ANSWER = """## Paris weather

- **Sunny**, 24 °C
- light wind

| day | sky |
|-----|-----|
| Mon | sun |
| Tue | rain |

```python
forecast("Paris")
```

Source: [example](https://example.com)"""
md_agent = ChatAgent(model=ScriptedModel([calls(call('slow_step', {'seconds': 2.0}), call('crawl', {'pages': 2})),
                                          reply(ANSWER)]),
                     mode='auto', tools=[slow_step, crawl], name='weather-agent')
'''


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
    # The tool's own progress shows live on its card.
    page.wait_for_function("() => { const p = document.querySelector('.mm-live .mm-tool-progress');"
                           " return p && /\\b([2-9]|1[01])\\/12 pages/.test(p.textContent); }", timeout=30_000)
    page.screenshot(path=str(tmp_path / "panel-running.png"))
    assert "iteration" in first.inner_text()
    assert first.locator("button.mm-stop").is_enabled()
    first.locator(".mm-status-completed").wait_for(timeout=60_000)
    assert "all done" in first.inner_text()
    first.screenshot(path=str(tmp_path / "panel-completed.png"))

    bg = page.locator(".mm-panel").nth(1)
    bg.locator(".mm-status-running").wait_for(timeout=60_000)
    bg.locator(".mm-tool").first.wait_for(timeout=30_000)
    bg.locator("button.mm-stop").click()
    bg.locator(".mm-status-cancelled").wait_for(timeout=30_000)
    assert bg.locator("button.mm-stop").count() == 0
    page.screenshot(path=str(tmp_path / "panel-cancelled.png"))

    sneaky = page.locator(".mm-panel").nth(2)
    sneaky.locator(".mm-status-completed").wait_for(timeout=60_000)
    text = sneaky.text_content()
    assert '<img src=x onerror="window.__pwned=1">' in text  # the tool result, as text (steps collapsed)
    answer = sneaky.locator(".mm-answer").inner_text()
    assert '<img src=x onerror="window.__pwned=3">' in answer and "<script>window.__pwned=5</script>" in answer
    sneaky.locator("details.mm-steps > summary").click()  # open the steps: still nothing runs
    page.wait_for_timeout(500)
    assert page.evaluate("() => window.__pwned") is None
    assert sneaky.locator("img").count() == 0 and sneaky.locator("script").count() == 0
    hrefs = sneaky.locator("a").evaluate_all("as => as.map(a => a.getAttribute('href') || '')")
    assert not any(h.strip().lower().startswith("javascript") for h in hrefs), hrefs
    page.screenshot(path=str(tmp_path / "panel-escaped.png"))


def test_final_view_is_one_output_with_markdown(page: Any, lab: Lab, tmp_path: Path) -> None:
    count = "len(__import__('ipywidgets').widgets.widget._instances)"
    open_notebook(page, lab, "final.ipynb", [SETUP, count, "%agent_run -a md_agent weather in Paris", count])
    run_all(page)
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    cell = cells.nth(2)
    cell.locator(".mm-live").wait_for(state="attached", timeout=60_000)  # the live widget first (2 s)
    final = cell.locator(".mm-final")
    final.wait_for(state="attached", timeout=60_000)
    cells.nth(3).locator(".jp-OutputArea-output").wait_for(state="attached", timeout=60_000)
    final.scroll_into_view_if_needed()
    outputs = cell.locator(".jp-OutputArea-child")
    assert outputs.count() == 1, cell.locator(".jp-OutputArea").inner_html()[:3000]
    assert cell.locator(".mm-live").count() == 0 and cell.locator(".jp-OutputArea-executeResult").count() == 0
    assert final.locator(".mm-status-completed").count() == 1
    assert final.locator("button.mm-stop").count() == 0
    assert final.locator(".mm-progress-fill").evaluate("e => e.style.width") == "100%"
    answer = final.locator(".mm-answer")
    assert answer.locator("h2").inner_text() == "Paris weather"
    assert answer.locator("li").count() == 2 and answer.locator("strong").inner_text() == "Sunny"
    assert answer.locator("table td").all_inner_texts() == ["Mon", "sun", "Tue", "rain"]
    assert 'forecast("Paris")' in answer.locator("pre code").inner_text()
    assert answer.locator("a").get_attribute("href") == "https://example.com"
    assert final.inner_text().count("Paris weather") == 1  # the answer once
    assert not final.locator("details.mm-steps").evaluate("d => d.open")  # steps collapsed
    # No widget model left in the kernel after the run.
    before = cells.nth(1).locator(".jp-OutputArea-output").inner_text().strip()
    after = cells.nth(3).locator(".jp-OutputArea-output").inner_text().strip()
    assert before == after, (before, after)
    final.screenshot(path=str(tmp_path / "final-view.png"))
    if os.environ.get("MENGLONG_UPDATE_SCREENSHOT"):
        final.locator("details.mm-steps > summary").click()
        page.wait_for_timeout(300)
        final.screenshot(path=str(Path(__file__).resolve().parents[2] / "docs" / "panel.png"))


def test_a_bg_run_ending_after_its_cell_shows_its_final_view_there(page: Any, lab: Lab) -> None:
    # The run ends while a later cell runs (and after it): its final view replaces the live panel in its own cell,
    # once (the same update is also sent under the running request, for headless executors such as nbclient).
    cells = [SETUP, "later = ChatAgent(model=ScriptedModel([calls(call('slow_step', {'seconds': 3})), "
                    "reply('background answer')]), mode='auto', tools=[slow_step], name='later-agent')",
             "h = %agent_run -a later --bg take a while", "await asyncio.sleep(1.5)\nprint('next cell done')",
             "await asyncio.sleep(4)\nprint(h.result().final_output)"]
    open_notebook(page, lab, "bg_final.ipynb", cells)
    run_all(page)
    notebook_cells = page.locator(".jp-Notebook .jp-CodeCell")
    bg_cell = notebook_cells.nth(2)
    bg_cell.locator(".mm-live").wait_for(state="attached", timeout=60_000)
    notebook_cells.nth(4).get_by_text("background answer").wait_for(timeout=60_000)
    final = bg_cell.locator(".mm-final")
    final.wait_for(state="attached", timeout=30_000)
    assert final.locator(".mm-status-completed").count() == 1
    assert "background answer" in final.inner_text()
    assert bg_cell.locator(".jp-OutputArea-child").count() == 1, bg_cell.locator(".jp-OutputArea").inner_html()[:2000]
    assert bg_cell.locator(".mm-live").count() == 0
    # The cells that ran meanwhile show only their own output.
    assert notebook_cells.nth(3).locator(".mm-panel").count() == 0
    assert notebook_cells.nth(4).locator(".mm-panel").count() == 0


def test_a_slow_model_shows_the_seconds_it_has_been_deciding(page: Any, lab: Lab, tmp_path: Path) -> None:
    cells = [SETUP, "thinker = ChatAgent(model=ScriptedModel([reply('decided', delay=4)]), name='thinker')",
             "%agent_run -a thinker decide slowly"]
    open_notebook(page, lab, "slow_model.ipynb", cells)
    run_all(page)
    panel = page.locator(".jp-Notebook .jp-CodeCell").nth(2).locator(".mm-live")
    panel.get_by_text("waiting for the model · 1s").wait_for(timeout=60_000)
    panel.get_by_text("waiting for the model · 2s").wait_for(timeout=10_000)  # it moves while nothing else does
    panel.screenshot(path=str(tmp_path / "waiting-for-the-model.png"))
    final = page.locator(".jp-Notebook .jp-CodeCell").nth(2).locator(".mm-final")
    final.wait_for(state="attached", timeout=60_000)
    assert "decided" in final.inner_text() and "waiting for the model" not in final.inner_text()


TABLES = r'''
items = ["alpha", "beta", "gamma"]
def long_answer(request):
    return "a long answer about " + request.messages[-1]["content"] + " " + "and more words " * 12
map_agent = ChatAgent(model=ScriptedModel([long_answer] * 3), name="map-agent")
batch_agent = ChatAgent(model=ScriptedModel([long_answer] * 3), name="batch-agent")
'''

# For each row of a table: the first cell's width, whether it ends before the last cell starts, the last cell's
# alignment, and the last cell's width against the widest other cell.
MEASURE_ROWS = """table => [...table.rows].slice(table.classList.contains('mm-batch') ? 1 : 0).map(row => {
    const cells = [...row.cells].map(c => c.getBoundingClientRect());
    const last = row.cells[row.cells.length - 1];
    return {first: cells[0].width, apart: cells[0].right <= cells[cells.length - 1].left + 1,
            align: getComputedStyle(last).textAlign,
            widest: cells[cells.length - 1].width >= Math.max(...cells.slice(0, -1).map(c => c.width))};
})"""


def test_result_tables_size_their_columns_by_their_content(page: Any, lab: Lab, tmp_path: Path) -> None:
    """JupyterLab lays rendered tables out with equal columns and right-aligned cells: the map's rows and the batch
    table keep their short columns readable and give the rest to the answers (a 100%-wide answer cell once
    squeezed the item numbers to nothing, painted over the answers)."""
    open_notebook(page, lab, "tables.ipynb", [SETUP, TABLES, "%agent_map -a map_agent items tell me about {}",
                                              "%%agent -a batch_agent --batch\none\ntwo\nthree"])
    run_all(page)
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    for index, selector, count in ((2, "table.mm-map-rows", 3), (3, "table.mm-batch", 3)):
        cell = cells.nth(index)
        cell.get_by_text("completed", exact=False).first.wait_for(timeout=60_000)
        table = cell.locator(selector).last
        page.wait_for_function("t => t.rows.length >= 3", arg=table.element_handle(), timeout=60_000)
        table.scroll_into_view_if_needed()
        rows = table.evaluate(MEASURE_ROWS)
        assert len(rows) == count, rows
        for row in rows:
            assert row["first"] > 10 and row["apart"], rows  # the item number has room, beside its answer
            assert row["align"] in ("left", "start"), rows
            assert row["widest"], rows  # the answer takes the width
        table.screenshot(path=str(tmp_path / f"{selector.split('.')[-1]}.png"))
    # The map's final view: its title once, with a status badge, above the figures and the rows.
    badge = cells.nth(2).locator(".mm-map .mm-status")
    badge.wait_for(timeout=60_000)
    assert badge.inner_text() == "completed"
    final = cells.nth(2).locator(".mm-map").last
    assert final.inner_text().count("map-agent") == 1, final.inner_text()
    final.screenshot(path=str(tmp_path / "map-final.png"))
