"""The kernel tools in real JupyterLab: run_code's card shows the code (highlighted) with Approve / Deny while the
cell runs; Approve runs it in the notebook's namespace, and the figure it draws is on the card as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lab_helpers import Lab, open_notebook
from test_approval_browser import output_text, run_cells, running

pytestmark = pytest.mark.browser

CODE = ("ran.append('approved')\\n"
        "import matplotlib.pyplot as plt\\n"
        "plt.bar(['a', 'b'], [3, 5])\\n"
        "total = int(sales.units.sum())\\n"
        "total")
SETUP = f'''
%load_ext menglong_magic
import pandas as pd
from menglong_magic import ChatAgent
from menglong_magic.models import ScriptedModel, reply, calls, call

sales = pd.DataFrame({{"units": [3, 5, 11]}})
ran = []
agent = ChatAgent(model=ScriptedModel([calls(call('run_code', {{'code': "{CODE}"}})), reply('the total is 19')]),
                  mode='auto', name='analyst')
'''


def test_the_code_is_on_the_card_and_approve_runs_it(page: Any, lab: Lab, tmp_path: Path) -> None:
    cells = [SETUP, "%agent_run -a agent --kernel -o r add up the units", "print(ran, total, r.stop_reason)"]
    open_notebook(page, lab, "kernel_tools.ipynb", cells)
    run_cells(page, "notebook:run-all-above", 2)
    nb_cells = page.locator(".jp-Notebook .jp-CodeCell")
    card = nb_cells.nth(1).locator(".mm-live .mm-tool", has_text="run_code")
    try:
        card.locator("button.mm-approve").wait_for(timeout=90_000)
    except Exception:
        page.screenshot(path=str(tmp_path / "kernel-tools-no-buttons.png"))
        raise
    assert running(nb_cells.nth(1)), "the cell should wait for the decision"
    code = card.locator(".mm-code").inner_text()
    assert "total = int(sales.units.sum())" in code and "plt.bar(['a', 'b'], [3, 5])" in code
    assert card.locator(".mm-code span[style]").count() > 0  # highlighted
    page.screenshot(path=str(tmp_path / "kernel-tools-pending.png"))
    card.locator("button.mm-approve").click()
    final = nb_cells.nth(1).locator(".mm-final")
    final.wait_for(state="attached", timeout=60_000)
    assert "✓ run_code(code=" in final.locator(".mm-decisions").inner_text()
    assert ") approved (panel)" in final.locator(".mm-decisions").inner_text()
    final_card = final.locator(".mm-tool", has_text="run_code")
    assert final_card.locator("img.mm-attachment").count() == 1
    assert final_card.locator("img.mm-attachment").get_attribute("src").startswith("data:image/png;base64,iVBOR")
    assert "value:\n19" in final_card.locator(".mm-result").first.text_content()  # in the collapsed steps
    run_cells(page, "notebook:run-cell", 2)
    assert output_text(nb_cells.nth(2)) == "['approved'] 19 completed"
