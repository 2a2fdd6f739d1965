"""Front-end detection in real JupyterLab: the panel is chosen, first from the cell's id in the request, and after a
page reload also from the widget manager's own messages on the new connection."""

from __future__ import annotations

from typing import Any

import pytest
from lab_helpers import Lab, open_notebook, run_all

pytestmark = pytest.mark.browser

CELLS = [
    "%load_ext menglong_magic",
    "from menglong_magic.ui.frontend import why, watch\n"
    "parent = get_ipython().kernel.get_parent()\n"
    "fw = watch(get_ipython())\n"
    "print('decision', why(get_ipython()))\n"
    "print('this connection spoke widgets:', fw.saw_widgets(parent['header']['session']))\n"
    "print('cellId sent:', 'cellId' in parent['metadata'])",
]


def _output(page: Any, index: int, contains: str) -> str:
    cell = page.locator(".jp-Notebook .jp-CodeCell").nth(index)
    cell.locator(".jp-OutputArea-output", has_text=contains).first.wait_for(timeout=90_000)
    return cell.locator(".jp-OutputArea-output").first.inner_text()


def test_jupyterlab_gets_the_panel_before_and_after_a_reload(page: Any, lab: Lab) -> None:
    open_notebook(page, lab, "frontend.ipynb", CELLS)
    run_all(page)
    first = _output(page, 1, "decision")
    assert "decision (True, 'a notebook UI (the request carries a cellId)')" in first, first
    assert "cellId sent: True" in first, first

    # Reload: JupyterLab reconnects to the same kernel; its widget manager restores widget state on connect,
    # which the watch (installed by %load_ext) records for that connection's session.
    page.reload()
    page.wait_for_selector(".jp-NotebookPanel:not(.lm-mod-hidden)", timeout=90_000)
    page.wait_for_function(
        "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
        " return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
        " && w.sessionContext.session.kernel.status === 'idle'); }", timeout=90_000)
    page.evaluate("() => { const w = window.jupyterapp.shell.currentWidget; w.content.activeCellIndex = 1;"
                  " window.jupyterapp.commands.execute('notebook:run-cell'); }")
    page.wait_for_function(
        "() => document.querySelectorAll('.jp-Notebook .jp-CodeCell')[1].innerText.includes('spoke widgets: True')",
        timeout=90_000)
    second = _output(page, 1, "decision")
    assert "decision (True, 'this front end spoke the widget protocol')" in second, second
