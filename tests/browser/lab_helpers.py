"""Helpers for the browser tier: a running JupyterLab and notebook actions in its page."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Lab:
    def __init__(self, root: Path, port: int, token: str):
        self.root, self.port, self.token = root, port, token

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"



def open_notebook(page: Any, lab: Lab, name: str, cells: list[str]) -> None:
    """Write a notebook into the lab's root and open it; returns once its kernel is idle."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, lab.root / name)
    # ``reset``: start from an empty workspace, so notebooks opened by earlier tests are not restored
    # (their hidden panels would match the selectors below).
    page.goto(lab.url(f"lab/tree/{name}") + "&reset")
    page.wait_for_selector(".jp-NotebookPanel:not(.lm-mod-hidden)", timeout=90_000)
    page.wait_for_function(
        "() => { const a = window.jupyterapp; const w = a && a.shell.currentWidget;"
        " return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
        " && w.sessionContext.session.kernel.status === 'idle'); }", timeout=90_000)


def run_all(page: Any) -> None:
    # Don't return the promise: it resolves only when every cell has finished.
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
