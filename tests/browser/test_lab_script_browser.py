"""``./scripts/lab`` as a new user runs it: the URL it prints opens the quickstart, and the file browser shows
only the notebooks and their data (run with --no-install: this environment already has everything)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from menglong_magic.testing import free_port

pytestmark = pytest.mark.browser

ROOT = pathlib.Path(__file__).resolve().parents[2]
URL = re.compile(r"http://127\.0\.0\.1:\d+/\S+")


def test_the_printed_url_opens_the_quickstart_and_the_browser_shows_only_notebooks(
    tmp_path: pathlib.Path, page: Any
) -> None:
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                           "checkForUpdates": False}))  # fmt: skip
    quickstart = ROOT / "notebooks" / "quickstart.ipynb"
    before = quickstart.read_bytes()
    port = free_port()  # the token: JupyterLab's own, read from the printed URL as a user would
    env = {**os.environ, "MENGLONG_VENV": sys.prefix, "MENGLONG_MODEL": "offline",
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}  # fmt: skip
    cmd = [str(ROOT / "scripts" / "lab"), "--no-install", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--LabApp.user_settings_dir={tmp_path / 'settings'}", f"--LabApp.workspaces_dir={tmp_path / 'ws'}",
           "--LabApp.expose_app_in_browser=True"]  # fmt: skip
    log_path = tmp_path / "lab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        printed: list[str] = []
        while not printed:
            printed = [u for u in URL.findall(log_path.read_text(errors="replace")) if "token=" in u]
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        url = printed[0]
        assert "/lab/tree/quickstart.ipynb?" in url, url  # not the Launcher's /lab
        page.goto(url)
        page.wait_for_selector(".jp-NotebookPanel:not(.lm-mod-hidden)", timeout=120_000)
        title = page.wait_for_function(
            "() => { const a = window.jupyterapp; const w = a && a.shell.currentWidget;"
            " return w && w.context ? w.context.path : null; }", timeout=60_000).json_value()  # fmt: skip
        assert title == "quickstart.ipynb"
        assert page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) h1").first.inner_text(timeout=30_000).startswith(
            "menglong_magic quickstart")
        assert page.locator(".jp-Launcher:not(.lm-mod-hidden)").count() == 0
        page.wait_for_selector(".jp-DirListing-item", timeout=60_000)
        names = set(page.locator(".jp-DirListing-item .jp-DirListing-itemText").all_inner_texts())
        notebooks = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
        assert names == notebooks | {"cassettes"}, names  # no config files, no repository root
        # Opening it and starting its kernel leaves it unmodified (no "save changes?" for a notebook not touched).
        page.wait_for_function(
            "() => { const w = window.jupyterapp.shell.currentWidget; const k = w.sessionContext.session"
            " && w.sessionContext.session.kernel; return k && k.status === 'idle' && k.info; }", timeout=120_000)
        page.wait_for_timeout(3000)
        changed = page.evaluate("() => { const m = window.jupyterapp.shell.currentWidget.context.model;"
                                " return m.dirty ? JSON.stringify(m.metadata) : null; }")
        assert changed is None, changed
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert quickstart.read_bytes() == before  # opening it changed nothing on disk
