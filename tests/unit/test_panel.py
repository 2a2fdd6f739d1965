"""The widget panel without a front end: bounded update messages, escaping, Stop, the static record."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, ClassVar

import comm
import pytest

from menglong_magic import ChatAgent
from menglong_magic import events as ev
from menglong_magic.agent.result import RunResult, RunUsage
from menglong_magic.models import ScriptedModel, call, calls, reply
from menglong_magic.panel import RunPanel, make_view
from menglong_magic.textview import TextView

XSS = '<img src=x onerror="window.__pwned=1"><script>alert(1)</script>'


class RecordingComm(comm.DummyComm):
    sent: ClassVar[list[dict[str, Any]]] = []

    def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None, buffers: Any = None,
                    **keys: Any) -> None:
        if msg_type == "comm_msg" and isinstance(data, dict):
            RecordingComm.sent.append(data)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    RecordingComm.sent = []
    monkeypatch.setattr(comm, "create_comm", lambda *a, **k: RecordingComm(*a, **k))
    return RecordingComm.sent


def updates(sent: list[dict[str, Any]]) -> int:
    return sum(1 for d in sent if d.get("method") == "update")


async def test_a_thousand_events_send_a_bounded_number_of_updates(recorded: list[dict[str, Any]]) -> None:
    panel = RunPanel(title="t", update_interval=0.05)
    panel.show()
    recorded.clear()
    started = time.monotonic()
    panel.handle(ev.RunStarted("r", agent="a", model="m", mode="auto", task="x", max_iterations=3))
    panel.handle(ev.IterationStarted("r", iteration=1, max_iterations=3))
    for i in range(1000):
        panel.handle(ev.TextDelta("r", iteration=1, delta=f"w{i} "))
        if i % 20 == 0:
            await asyncio.sleep(0.01)
    elapsed = time.monotonic() - started
    panel.finish()
    flush_bound = elapsed / 0.05 + 3
    assert panel.flushes <= flush_bound, (panel.flushes, elapsed)
    # each flush touches at most the header, progress, label and body: a handful of messages
    assert 0 < updates(recorded) <= 5 * flush_bound
    assert updates(recorded) < 200
    assert "w999" in panel.body.value  # the final flush is complete


async def test_panel_follows_a_real_run_and_records_it(recorded: list[dict[str, Any]],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    agent = ChatAgent(model=ScriptedModel([calls(call("echo", {"text": XSS})), reply(f"answer {XSS}")]),
                      mode="auto", tools=[lambda_echo])
    panel = RunPanel(title="agent", update_interval=0.01)
    panel.show()
    result = await agent.arun("go", on_event=panel.handle)
    panel.finish()
    assert result.stop_reason == "completed"
    assert "mm-status-completed" in panel.header.value
    html = panel.body.value + panel.header.value
    assert "<img" not in html and "<script" not in html
    assert "&lt;img src=x onerror=" in html
    assert panel.progress_label.value == "iteration 2 / 10"
    assert panel.stop_button.disabled
    assert "[agent] completed" in capsys.readouterr().out  # the static record's text/plain


def lambda_echo(text: str) -> str:
    """Echo."""
    return text


def test_stop_is_called_once_even_from_other_threads() -> None:
    calls_: list[int] = []
    panel = RunPanel(title="t", on_stop=lambda: calls_.append(1))
    threads = [threading.Thread(target=panel.stop_button.click) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls_ == [1]
    assert panel.stop_button.disabled


def test_batch_rows_and_long_results_are_truncated_and_escaped() -> None:
    panel = RunPanel(title="b")
    panel.handle(ev.BatchStarted("b1", messages=(XSS, "two"), mode="parallel"))
    panel.handle(ev.BatchItemStarted("b1", index=0, message=XSS, item_run_id="b1-0"))
    panel.handle(ev.BatchItemFinished("b1", index=0, status="ok", duration=0.1, result="x" * 10000, error=None))
    panel.handle(ev.BatchItemFinished("b1", index=1, status="error", duration=0.1, result=None, error=XSS))
    panel.handle(ev.BatchFinished("b1", ok=1, failed=1, duration=0.2))
    panel.flush()
    body = panel.body.value
    assert "<img" not in body and "&lt;img" in body
    assert "1 done · 1 failed" in body
    assert len(body) < 5000  # 10 000 characters of answer are clipped in the view
    assert "mm-status-error" in panel.header.value


def test_make_view_picks_text_without_widgets(capsys: pytest.CaptureFixture[str]) -> None:
    view = make_view(title="t", widgets=False)
    assert isinstance(view, TextView)
    view.handle(ev.RunStarted("r", agent="a", model="m", mode="auto", task="x", max_iterations=2))
    view.handle(ev.IterationStarted("r", iteration=1, max_iterations=2))
    view.handle(ev.ToolCallStarted("r", iteration=1, call_id="c", name="add", arguments={"a": 1}))
    view.handle(ev.ToolCallFinished("r", iteration=1, call_id="c", name="add", ok=True, result="2", error=None,
                                    duration=0.01))
    result = RunResult(task="x", final_output="two", stop_reason="completed", iterations=[], usage=RunUsage(),
                       execution_time=0.1)
    view.handle(ev.RunFinished("r", result=result))
    view.finish()
    out = capsys.readouterr().out.splitlines()
    assert out == ["[t] iteration 1/2", "  → add(a=1)", "  ✓ add 0.01s: 2",
                   "[t] completed · 1 iteration(s) · 1 tool call(s) · 0.0s · tokens unknown"]
    compact = make_view(title="t", widgets=True, compact=True)
    assert isinstance(compact, TextView) and compact.compact
