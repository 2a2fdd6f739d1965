"""Terminal IPython driven through a pseudo-terminal (pexpect): %%agent continues the cell like other cell
magics, the text view prints progress lines, and Ctrl-C ends a run as an interrupted cell."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect")

pytestmark = pytest.mark.kernel

PROMPT = r"In \[\d+\]: "
MORE = r"\.\.\.: "


@pytest.fixture
def ipython(tmp_path: Path) -> Iterator[object]:
    env = {**os.environ, "MENGLONG_MODEL": "offline", "TERM": "dumb", "IPYTHONDIR": str(tmp_path / "ipython")}
    child = pexpect.spawn(sys.executable, ["-m", "IPython", "--simple-prompt", "--no-banner", "--colors=NoColor",
                                           "--HistoryManager.enabled=False"],
                          env=env, encoding="utf-8", timeout=60, cwd=str(tmp_path))
    try:
        child.expect(PROMPT)
        child.sendline("%load_ext menglong_magic")
        child.expect(PROMPT)
        yield child
    finally:
        child.sendline("exit")
        child.close(force=True)


def run_line(child: object, line: str) -> str:
    child.sendline(line)  # type: ignore[attr-defined]
    child.expect(PROMPT)  # type: ignore[attr-defined]
    return str(child.before)  # type: ignore[attr-defined]


def test_cell_magic_header_continues_the_cell_and_progress_is_printed(ipython: object) -> None:
    child = ipython
    child.sendline("%%agent")  # type: ignore[attr-defined]
    assert child.expect([MORE, PROMPT, "UsageError"]) == 0  # type: ignore[attr-defined]
    child.sendline("hello there")  # type: ignore[attr-defined]
    child.expect(MORE)  # type: ignore[attr-defined]
    child.sendline("second line")  # type: ignore[attr-defined]
    child.expect(MORE)  # type: ignore[attr-defined]
    child.sendline("")  # type: ignore[attr-defined]
    child.expect(MORE)  # type: ignore[attr-defined]
    output = run_line(child, "")
    assert "[agent] iteration 1/10" in output
    assert 'You said: "hello there' in output and "second line" in output
    assert "[agent] completed" in output
    assert "Out[" not in output  # the answer is shown once, by the view


def test_ctrl_c_interrupts_the_run_and_the_next_cell_works(ipython: object) -> None:
    child = ipython
    run_line(child, "import time; from menglong_magic import ChatAgent, tool; "
                    "from menglong_magic.models import ScriptedModel, calls, call, reply")
    run_line(child, "slow = tool(lambda seconds: time.sleep(seconds) or 'slept')")
    run_line(child, "agent = ChatAgent(model=ScriptedModel([calls(call('<lambda>', {'seconds': 30})), "
                    "reply('later')]), mode='auto', tools=[slow])")
    child.sendline("%agent_run -a agent sleep a while")  # type: ignore[attr-defined]
    child.expect(r"iteration 1/10")  # type: ignore[attr-defined]
    child.sendintr()  # type: ignore[attr-defined]
    child.expect(PROMPT, timeout=20)  # type: ignore[attr-defined]
    interrupted = str(child.before)  # type: ignore[attr-defined]
    assert "AgentInterrupted" in interrupted and "_agent_last" in interrupted
    assert "Traceback" not in interrupted
    output = run_line(child, "print(_agent_last.stop_reason, len(agent.messages))")
    assert "cancelled 0" in output


@pytest.mark.parametrize("stream", [True, False])
def test_control_sequences_from_tools_and_the_model_reach_the_terminal_escaped(ipython: object, stream: bool) -> None:
    child = ipython
    run_line(child, "from menglong_magic import ChatAgent, tool; "
                    "from menglong_magic.models import ScriptedModel, calls, call, reply")
    run_line(child, "page = tool(lambda: 'top' + chr(27) + '[1A' + chr(27) + '[K' + chr(27) + '[2J' + chr(27) "
                    "+ ']52;c;cm0gLXJmIH4=' + chr(7) + 'end')")
    run_line(child, "answer = 'See ' + chr(27) + ']8;;https://evil.example' + chr(27) + chr(92) + 'docs' + chr(27) "
                    "+ ']8;;' + chr(27) + chr(92) + ' now' + chr(27) + '[2J'")
    run_line(child, f"agent = ChatAgent(model=ScriptedModel([calls(call('<lambda>')), reply(answer)], "
                    f"stream_chunk={3 if stream else 0}), mode='auto', tools=[page], stream={stream})")
    output = run_line(child, "%agent_run -a agent read the page")
    assert "] completed · 2 iteration(s)" in output
    for raw in ("\x1b[1A", "\x1b[K", "\x1b[2J", "\x1b]52;", "\x1b]8;;", "\x07"):
        assert raw not in output, repr(raw)
    assert "top\\x1b[1A\\x1b[K\\x1b[2J\\x1b]52;c;cm0gLXJmIH4=\\x07end" in output
    assert "See \\x1b]8;;https://evil.example\\x1b\\docs" in output
