"""Math in an answer is typeset in JupyterLab's final view (its HTML output is typeset by JupyterLab's MathJax),
only inside the math spans: a price in the prose or in the task stays text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lab_helpers import Lab, open_notebook, run_all

pytestmark = pytest.mark.browser

SETUP = r'''
%load_ext menglong_magic
from menglong_magic import ChatAgent
from menglong_magic.models import ScriptedModel, reply

ANSWER = r"""The fit is $\hat{y}_{t} = \beta_{0} + \beta_{1} x_{t}$, with $a*b*c$ and $\{x \mid x > 0\}$.

$$\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}$$

Also \(x_{1}*x_{2}\) and \[\sum_{i=1}^{n} i*i\] while it costs $5 and $10 in *plain* prose."""
math_agent = ChatAgent(model=ScriptedModel([reply(ANSWER)]), name='math-agent')
result_agent = ChatAgent(model=ScriptedModel([reply(r"Result: $e^{i*\pi} + 1 = 0$ for $3 and $4.")]),
                         name='result-agent')
'''

FORMULAS = 6  # four $…$/\(…\) inline, $$…$$ and \[…\] displayed


def typeset_count(locator: Any) -> int:
    return locator.locator("mjx-container").count()


def test_formulas_in_the_final_view_are_typeset(page: Any, lab: Lab, tmp_path: Path) -> None:
    cells = [SETUP, "%%agent -a math_agent\nWhat does it cost, $5 and $10?", "await result_agent.arun('x')"]
    open_notebook(page, lab, "math.ipynb", cells)
    run_all(page)
    notebook_cells = page.locator(".jp-Notebook .jp-CodeCell")
    final = notebook_cells.nth(1).locator(".mm-final")
    final.wait_for(state="attached", timeout=90_000)
    answer = final.locator(".mm-answer")
    # JupyterLab loads MathJax on first use: wait for every formula to be typeset.
    page.wait_for_function(
        "n => { const a = document.querySelector('.mm-final .mm-answer');"
        " return a && a.querySelectorAll('mjx-container').length >= n; }", arg=FORMULAS, timeout=90_000)
    final.scroll_into_view_if_needed()
    assert typeset_count(answer) == FORMULAS, answer.inner_html()[:3000]
    # Each math span now holds the typeset formula, not its source.
    spans = answer.locator(".math")
    assert spans.count() == FORMULAS
    for i in range(FORMULAS):
        span = spans.nth(i)
        assert span.locator("mjx-container").count() == 1
        text = span.evaluate("e => Array.from(e.childNodes).filter(n => n.nodeType === 3)"
                             ".map(n => n.textContent).join('')")
        assert "$" not in text and "\\(" not in text and "\\[" not in text, text
    assert answer.locator("mjx-container[display='true']").count() == 2  # $$…$$ and \[…\] are displayed
    prose = answer.inner_text()
    assert "costs $5 and $10 in plain prose" in prose  # the price stays text, and the prose Markdown works
    assert answer.locator("em").inner_text() == "plain"
    assert "$5 and $10" in final.locator(".mm-task").inner_text()  # the task is not typeset either
    assert typeset_count(final) == FORMULAS  # nothing outside the answer's math spans was typeset

    # A RunResult shown as a cell's value (its _repr_html_) is typeset the same way.
    result = notebook_cells.nth(2).locator(".mm-result")
    result.wait_for(state="attached", timeout=90_000)
    page.wait_for_function("() => { const r = document.querySelector('.mm-result');"
                           " return r && r.querySelectorAll('mjx-container').length >= 1; }", timeout=90_000)
    assert typeset_count(result) == 1
    assert "for $3 and $4." in result.inner_text()
    final.screenshot(path=str(tmp_path / "math-final-view.png"))
