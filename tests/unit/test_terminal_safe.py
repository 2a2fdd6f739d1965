"""Model, tool and server text written to a terminal never drives it: control characters are shown escaped."""

from __future__ import annotations

import builtins
import io

import pytest

from menglong_magic import events as ev
from menglong_magic.agent.approval import ApprovalRequest
from menglong_magic.agent.result import RunResult
from menglong_magic.ipython.magics import AgentInterrupted, AgentRunFailed, prompt_approver
from menglong_magic.ipython.mcp_magic import MCPMagicError
from menglong_magic.markup import terminal_safe
from menglong_magic.ui.mapview import MapTextView
from menglong_magic.ui.textview import TextView
from menglong_magic.usage import RunUsage

# Each hostile sequence, and how it must appear: visible, with its payload readable.
SEQUENCES = {
    "cursor up + erase line": ("\x1b[1A\x1b[K", "\\x1b[1A\\x1b[K"),
    "clear screen": ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),
    "OSC 52 clipboard": ("\x1b]52;c;cm0gLXJmIH4=\x07", "\\x1b]52;c;cm0gLXJmIH4=\\x07"),
    "OSC 8 hidden link": ("\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\",
                          "\\x1b]8;;https://evil.example\\x1b\\click\\x1b]8;;\\x1b\\"),
    "title set": ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),
    "8-bit CSI": ("\x9b2J", "\\x9b2J"),
    "8-bit OSC": ("\x9d52;c;eA==\x9c", "\\x9d52;c;eA==\\x9c"),
    "carriage return overwrite": ("safe\rEVIL", "safe\\x0dEVIL"),
    "backspaces": ("rm -rf\x08\x08\x08\x08\x08\x08ls", "rm -rf" + "\\x08" * 6 + "ls"),
    "bell and NUL": ("\x07\x00", "\\x07\\x00"),
    "DEL": ("a\x7fb", "a\\x7fb"),
    "bidi override": ("abc\u202edcba", "abc\\u202edcba"),
    "bidi isolate": ("x\u2066y\u2069", "x\\u2066y\\u2069"),
}


def assert_inert(text: str) -> None:
    """No character a terminal would interpret: only newline and tab among the controls."""
    for char in text:
        code = ord(char)
        assert char in "\n\t" or not (code < 0x20 or 0x7F <= code < 0xA0 or 0x202A <= code <= 0x202E
                                      or 0x2066 <= code <= 0x2069), repr(text)


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_terminal_safe_escapes_each_sequence(name: str) -> None:
    raw, shown = SEQUENCES[name]
    assert terminal_safe(f"before {raw} after") == f"before {shown} after"
    assert_inert(terminal_safe(raw))


def test_terminal_safe_keeps_ordinary_text() -> None:
    text = "line 1\n\tindented — café 🙂 ∑ $a*b$ \u00a0 [1A] \\x1b literal\r\nnext"
    assert terminal_safe(text) == text.replace("\r\n", "\n")


def test_every_control_character_is_inert() -> None:
    everything = "".join(map(chr, range(0x00, 0xA0))) + "".join(map(chr, range(0x2020, 0x2070)))
    assert_inert(terminal_safe(everything))


def finished(output: str, error: str | None = None) -> RunResult:
    return RunResult(task="x", final_output=output, stop_reason="completed" if error is None else "error",
                     iterations=[], usage=RunUsage(), execution_time=0.1, error=error)


HOSTILE = "".join(raw for raw, _shown in SEQUENCES.values())


def test_text_view_escapes_tool_results_errors_and_answers() -> None:
    out = io.StringIO()
    view = TextView("t", stream=out)
    view.handle(ev.RunStarted("r", agent="a", model="m", mode="auto", task="x", max_iterations=3))
    view.handle(ev.IterationStarted("r", iteration=1, max_iterations=3))
    view.handle(ev.ToolCallStarted("r", iteration=1, call_id="c", name="fetch", arguments=f"{HOSTILE}"))
    view.handle(ev.ToolProgress("r", iteration=1, call_id="c", name="fetch", done=1, total=2, note=HOSTILE))
    view.handle(ev.ToolCallFinished("r", iteration=1, call_id="c", name="fetch", ok=True, result=f"page {HOSTILE}",
                                    error=None, duration=0.1))
    view.handle(ev.ToolCallFinished("r", iteration=1, call_id="d", name="fail", ok=False, result=None,
                                    error=f"boom {HOSTILE}", duration=0.1))
    view.handle(ev.IterationStarted("r", iteration=2, max_iterations=3))
    answer = f"See \x1b]8;;https://evil.example\x1b\\the docs\x1b]8;;\x1b\\ {HOSTILE}"
    view.handle(ev.RunFinished("r", result=finished(answer, error=f"late {HOSTILE}")))
    view.finish()
    written = out.getvalue()
    assert_inert(written)
    assert "page \\x1b[1A\\x1b[K" in written and "boom \\x1b[1A" in written
    assert "\\x1b]8;;https://evil.example\\x1b\\the docs" in written  # the hidden link's target is visible


def test_streamed_text_is_escaped_even_when_a_sequence_is_split_across_chunks() -> None:
    out = io.StringIO()
    view = TextView("t", stream=out)
    view.handle(ev.RunStarted("r", agent="a", model="m", mode="auto", task="x", max_iterations=2))
    view.handle(ev.IterationStarted("r", iteration=1, max_iterations=2))
    text = f"Hello \x1b]52;c;c2VjcmV0\x07 world\x1b[2J\x1b[1A done\nnext \u202eline {HOSTILE}"
    for size in (1, 2, 3):  # ESC, "[", "2J" arrive in different chunks
        for start in range(0, len(text), size):
            view.handle(ev.TextDelta("r", iteration=1, delta=text[start:start + size]))
    view.handle(ev.RunFinished("r", result=finished(text * 3)))
    view.finish()
    written = out.getvalue()
    assert_inert(written)
    assert "Hello \\x1b]52;c;c2VjcmV0\\x07 world\\x1b[2J\\x1b[1A done\n  next \\u202eline" in written


def test_map_text_view_escapes_item_failures() -> None:
    out = io.StringIO()
    view = MapTextView("m", interval=0.0, stream=out)
    view.handle(ev.BatchStarted("b", messages=("a", "b"), mode="map"))
    view.handle(ev.BatchItemFinished("b", index=0, status="error", duration=0.1, result=None,
                                     error=f"server said {HOSTILE}"))
    view.handle(ev.BatchItemFinished("b", index=1, status="ok", duration=0.1, result=HOSTILE, error=None))
    view.finish()
    assert_inert(out.getvalue())
    assert "server said \\x1b[1A" in out.getvalue()


def test_run_result_repr_and_error_lines() -> None:
    result = finished(f"answer {HOSTILE}", error=f"model failed {HOSTILE}")
    assert_inert(repr(result))
    for exc in (AgentRunFailed(f"model failed {HOSTILE}"), AgentInterrupted(f"stopped {HOSTILE}"),
                MCPMagicError(f"server died\nstderr: {HOSTILE}")):
        lines = exc._render_traceback_()
        # our own red label stays; nothing the model or server wrote is interpreted
        assert_inert("\n".join(line.replace("\x1b[31m", "").replace("\x1b[0m", "") for line in lines))
        assert any("\\x1b[1A" in line for line in lines)


@pytest.mark.parametrize("arguments", [f"not json {HOSTILE}", {"path": HOSTILE}])
async def test_the_approval_prompt_is_escaped(monkeypatch: pytest.MonkeyPatch, arguments: object) -> None:
    asked: list[str] = []
    monkeypatch.setattr(builtins, "input", lambda prompt="": asked.append(prompt) or "y")
    request = ApprovalRequest(run_id="r", call_id="c", tool_name="write", arguments=arguments,
                             agent_name="a", iteration=1)
    assert (await prompt_approver(request)).approved
    assert_inert(asked[0])
    assert asked[0].startswith("approve write(")
