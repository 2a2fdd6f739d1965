"""Issue #24 (5): in terminal IPython a refused OPENAI_BASE_URL is one UsageError line: no traceback (before: a
13-frame traceback chained behind "no running event loop"), no "[agent] cancelled" run, no secret."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect")

pytestmark = pytest.mark.kernel

PROMPT = r"In \[\d+\]: "
SECRET = "pa55-word-0123456789"


@pytest.mark.parametrize("line", ["%agent_run say hi", "x = %agent_run say hi"])
def test_a_refused_url_is_one_line_in_terminal_ipython(tmp_path: Path, line: str) -> None:
    env = {**os.environ, "TERM": "dumb", "IPYTHONDIR": str(tmp_path / "ipython"),
           "OPENAI_BASE_URL": f"http://user:{SECRET}@127.0.0.1:9/v1"}
    env.pop("MENGLONG_MODEL", None)
    child = pexpect.spawn(sys.executable, ["-m", "IPython", "--simple-prompt", "--no-banner", "--colors=NoColor",
                                           "--HistoryManager.enabled=False"],
                          env=env, encoding="utf-8", timeout=60, cwd=str(tmp_path))
    try:
        child.expect(PROMPT)
        child.sendline("%load_ext menglong_magic")
        child.expect(PROMPT)
        child.sendline(line)
        child.expect(PROMPT)
        output = str(child.before)
    finally:
        child.sendline("exit")
        child.close(force=True)
    shown = [text for text in output.splitlines()[1:] if text.strip()]  # the echoed input line first
    assert len(shown) == 1 and shown[0].startswith("UsageError: agent configuration:"), output
    assert "must not contain credentials" in shown[0]
    assert "Traceback" not in output and "[agent]" not in output and SECRET not in output
