"""The widget panel without a front end: bounded updates, escaping, Stop, the final view, released widgets."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import comm
import pytest
from ipywidgets.widgets import widget as widget_module

from menglong_magic import ApprovalDecision, ApprovalRequest, ChatAgent, tool
from menglong_magic import events as ev
from menglong_magic.agent.result import RunResult, RunUsage
from menglong_magic.models import ScriptedModel, call, calls, reply
from menglong_magic.ui.html import ICON_SVG, body_html, final_html, header_html
from menglong_magic.ui.panel import RunPanel, make_view
from menglong_magic.ui.state import RunViewModel
from menglong_magic.ui.textview import TextView

XSS = '<img src=x onerror="window.__pwned=1"><script>alert(1)</script>'
MARKDOWN = "## Result\n\n- one\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```python\nx = 1\n```\n"


class RecordingComm(comm.DummyComm):
    sent: ClassVar[list[dict[str, Any]]] = []
    closed: ClassVar[int] = 0

    def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None, buffers: Any = None,
                    **keys: Any) -> None:
        if msg_type == "comm_msg" and isinstance(data, dict):
            RecordingComm.sent.append(data)
        if msg_type == "comm_close":
            RecordingComm.closed += 1


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    RecordingComm.sent = []
    RecordingComm.closed = 0
    monkeypatch.setattr(comm, "create_comm", lambda *a, **k: RecordingComm(*a, **k))
    return RecordingComm.sent


@pytest.fixture
def outputs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """What the panel publishes as cell outputs (display_data / update_display_data), via a real shell."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    published: list[dict[str, Any]] = []

    def publish(data: dict[str, Any], metadata: Any = None, *, transient: Any = None, update: bool = False,
                **_: Any) -> None:
        published.append({"data": data, "display_id": (transient or {}).get("display_id"), "update": update})

    monkeypatch.setattr(shell.display_pub, "publish", publish)
    yield published


def live_widgets() -> int:
    return len(widget_module._instances)


def updates(sent: list[dict[str, Any]]) -> int:
    return sum(1 for d in sent if d.get("method") == "update")


def body(panel: RunPanel) -> str:
    assert panel.widget is not None
    return "".join(html for _key, html in panel.widget.blocks)


def finished_result(output: str, stop_reason: str = "completed", error: str | None = None) -> RunResult:
    return RunResult(task="x", final_output=output, stop_reason=stop_reason, iterations=[], usage=RunUsage(),
                     execution_time=0.1, error=error)


async def test_a_thousand_events_send_a_bounded_number_of_updates(recorded: list[dict[str, Any]],
                                                                  outputs: list[dict[str, Any]]) -> None:
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
    panel.flush()
    assert "w999" in body(panel)  # the final flush is complete
    flush_bound = elapsed / 0.05 + 3
    assert panel.flushes <= flush_bound, (panel.flushes, elapsed)
    # one widget model: each flush is one update message (hold_sync batches the traits)
    assert 0 < updates(recorded) <= flush_bound
    panel.finish()


async def test_panel_follows_a_real_run_then_leaves_one_final_view(recorded: list[dict[str, Any]],
                                                                   outputs: list[dict[str, Any]]) -> None:
    agent = ChatAgent(model=ScriptedModel([calls(call("echo", {"text": XSS})), reply(f"answer {XSS}\n\n{MARKDOWN}")]),
                      mode="auto", tools=[lambda_echo])
    before = live_widgets()
    panel = RunPanel(title="agent", update_interval=0.01, on_stop=lambda: None)
    panel.show()
    widget = panel.widget
    assert widget is not None and live_widgets() >= before + 1
    result = await agent.arun("go", on_event=panel.handle)
    assert result.stop_reason == "completed"
    live_html = widget.header + body(panel)
    assert "mm-status-completed" in live_html
    assert "<img" not in live_html and "<script" not in live_html and "&lt;img src=x onerror=" in live_html
    panel.finish()

    # Outputs: the live widget (widget mime only), then it is emptied in place, then ONE final view.
    assert [o["update"] for o in outputs] == [False, True, False]
    live, emptied, final = outputs
    assert set(live["data"]) == {"application/vnd.jupyter.widget-view+json"}  # no stray text/plain repr
    assert emptied["display_id"] == live["display_id"] and emptied["data"] == {}
    assert final["display_id"] is None
    text, html = final["data"]["text/plain"], final["data"]["text/html"]
    assert text.splitlines()[0].startswith("[agent] completed · 2 iteration(s) · 1 tool call(s) · ")
    assert text.count("answer ") == 1
    assert html.count("answer ") == 1  # the answer once, not again inside its step
    assert html.count("the answer, shown below") == 1  # ... which says where it is instead of opening empty
    assert "<img" not in html and "<script" not in html and "&lt;script&gt;" in html
    for tag in ("<h2>Result</h2>", "<li>one</li>", "<table>", "<td>1</td>", '<code class="language-python">'):
        assert tag in html
    assert 'class="mm-progress-fill" style="height:10px;width:100%' in html
    assert "mm-stop" not in html
    assert '<details class="mm-steps">' in html  # steps collapsed
    # Final state pushed to the widget before it closed: progress complete, Stop hidden.
    assert widget.progress["done"] == widget.progress["total"]
    assert widget.stop == "hidden"
    # Every model released (the widget and its Layout).
    assert panel.widget is None and live_widgets() == before
    assert RecordingComm.closed >= 2


def lambda_echo(text: str) -> str:
    """Echo."""
    return text


def test_finished_panels_hold_no_widget_models(recorded: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
    before = live_widgets()
    for i in range(30):
        panel = RunPanel(title=f"p{i}")
        panel.show()
        panel.handle(ev.RunStarted(f"r{i}", agent="a", model="m", mode="auto", task="x", max_iterations=2))
        panel.finish()
    assert live_widgets() == before
    assert len([o for o in outputs if not o["update"]]) == 60  # 30 live + 30 final


def test_stop_is_called_once_even_from_other_threads(recorded: list[dict[str, Any]]) -> None:
    calls_: list[int] = []
    panel = RunPanel(title="t", on_stop=lambda: calls_.append(1))
    widget = panel.widget
    assert widget is not None and widget.stop == "enabled"
    threads = [threading.Thread(target=widget._handle_custom_msg, args=({"type": "stop"}, [])) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls_ == [1]
    assert widget.stop == "stopping"
    widget._handle_custom_msg({"type": "something else"}, [])
    panel.handle(ev.RunStarted("r", agent="a", model="m", mode="auto", task="x", max_iterations=2))
    panel.finish()
    assert widget.stop == "hidden"
    panel.stop_clicked()
    assert calls_ == [1]  # no Stop after finish


def test_interrupted_run_says_cancelled(recorded: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
    panel = RunPanel(title="t", on_stop=lambda: None)
    panel.show()
    panel.handle(ev.RunStarted("r", agent="a", model="m", mode="auto", task="x", max_iterations=10))
    panel.handle(ev.IterationStarted("r", iteration=1, max_iterations=10))
    panel.handle(ev.ToolCallStarted("r", iteration=1, call_id="c", name="slow", arguments={}))
    panel.finish()  # no RunFinished: a kernel interrupt
    final = outputs[-1]["data"]
    assert final["text/plain"].startswith("[t] cancelled · 1 iteration(s) · 1 tool call(s)")
    assert "mm-status-cancelled" in final["text/html"] and "the run was cancelled" in final["text/html"]
    assert "cancelled · 1 iteration(s) of 10" in final["text/html"]
    assert "mm-tool-cancelled" in final["text/html"]  # the call that was running


def test_error_run_shows_the_error(recorded: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
    panel = RunPanel(title="t")
    panel.show()
    panel.handle(ev.RunStarted("r", agent="a", model="m", mode="auto", task="x", max_iterations=10))
    panel.handle(ev.RunFinished("r", result=finished_result("", "error", f"model failed {XSS}")))
    panel.finish()
    final = outputs[-1]["data"]
    assert final["text/plain"].splitlines()[1] == f"error: model failed {XSS}"
    assert "mm-status-error" in final["text/html"] and "<img" not in final["text/html"]


def test_batch_rows_and_long_results_are_truncated_and_escaped(recorded: list[dict[str, Any]]) -> None:
    panel = RunPanel(title="b")
    panel.handle(ev.BatchStarted("b1", messages=(XSS, "two"), mode="parallel"))
    panel.handle(ev.BatchItemStarted("b1", index=0, message=XSS, item_run_id="b1-0"))
    panel.handle(ev.BatchItemFinished("b1", index=0, status="ok", duration=0.1, result="x" * 10000, error=None))
    panel.handle(ev.BatchItemFinished("b1", index=1, status="error", duration=0.1, result=None, error=XSS))
    panel.handle(ev.BatchFinished("b1", ok=1, failed=1, duration=0.2))
    panel.flush()
    html = body(panel)
    assert "<img" not in html and "&lt;img" in html
    assert "1 done · 1 failed" in html
    assert len(html) < 5000  # 10 000 characters of answer are clipped in the view
    assert panel.widget is not None and "mm-status-error" in panel.widget.header
    panel.close()


def test_tool_progress_waiting_and_new_statuses_render() -> None:
    panel = RunPanel(title="t")
    h = panel.handle
    h(ev.TurnWaiting("r", ahead=2))
    h(ev.RunStarted("r", agent="a", model="m", mode="auto", task="x", max_iterations=5))
    panel.flush()
    assert panel.widget is not None
    assert "waiting for 2 earlier turns of this conversation" in body(panel)
    assert "mm-status-waiting" in panel.widget.header
    h(ev.TurnResumed("r", waited=1.5))
    h(ev.IterationStarted("r", iteration=1, max_iterations=5))
    for call_id, name in (("c1", "crawl"), ("c2", "rm"), ("c3", "sleepy")):
        h(ev.ToolCallStarted("r", iteration=1, call_id=call_id, name=name, arguments={}))
    h(ev.ToolProgress("r", iteration=1, call_id="c1", name="crawl", done=3, total=10, note=f"pages {XSS}"))
    panel.flush()
    html = body(panel)
    assert "waiting for" not in html and "mm-status-running" in panel.widget.header
    assert "3/10 pages &lt;img" in html and "width:30%" in html
    h(ev.ToolCallFinished("r", iteration=1, call_id="c1", name="crawl", ok=True, result="done", error=None,
                          duration=0.1))  # "" status from an older producer: ok
    h(ev.ToolCallFinished("r", iteration=1, call_id="c2", name="rm", ok=False, result=None, error="denied: no",
                          duration=0.0, status="denied"))
    h(ev.ToolCallFinished("r", iteration=1, call_id="c3", name="sleepy", ok=False, result=None, error=None,
                          duration=0.2, status="cancelled"))
    panel.flush()
    html = body(panel)
    assert "mm-tool-ok" in html and "mm-tool-denied" in html and "mm-tool-cancelled" in html
    assert "3/10" not in html  # progress is shown while the call runs
    assert "denied: no" in html
    panel.close()


def test_markdown_refuses_script_links_and_does_not_fetch_images() -> None:
    from menglong_magic.markup import render_markdown

    html = render_markdown("[a](javascript:alert(1)) [b](vbscript:x) [c](data:text/html,x) <a href='javascript:y'>d</a>"
                           " ![e](https://evil.example/?q=secret) [ok](https://example.com)")
    assert 'href="javascript' not in html.lower() and "vbscript:x\"" not in html and "<img" not in html
    assert "&lt;a href=" in html
    assert '<a href="https://example.com" target="_blank" rel="noopener noreferrer nofollow">ok</a>' in html
    assert '<a href="https://evil.example/?q=secret"' in html  # a link, never a fetched image


def test_make_view_picks_text_without_widgets(capsys: pytest.CaptureFixture[str]) -> None:
    view = make_view(title="t", widgets=False)
    assert isinstance(view, TextView)
    view.handle(ev.RunStarted("r", agent="a", model="m", mode="auto", task="x", max_iterations=2))
    view.handle(ev.IterationStarted("r", iteration=1, max_iterations=2))
    view.handle(ev.ToolCallStarted("r", iteration=1, call_id="c", name="add", arguments={"a": 1}))
    view.handle(ev.ToolCallFinished("r", iteration=1, call_id="c", name="add", ok=True, result="2", error=None,
                                    duration=0.01))
    view.handle(ev.RunFinished("r", result=finished_result("two")))
    view.finish()
    out = capsys.readouterr().out.splitlines()
    assert out == ["[t] iteration 1/2", "  → add(a=1)", "  ✓ add 0.01s: 2",
                   "[t] completed · 1 iteration(s) · 1 tool call(s) · 0.0s · tokens unknown", "two"]
    compact = make_view(title="t", widgets=True, compact=True)
    assert isinstance(compact, TextView) and compact.compact


def test_text_view_prints_a_streamed_answer_once() -> None:
    stream = io.StringIO()
    view = TextView(title="t", stream=stream)
    view.handle(ev.RunStarted("r", agent="a", model="m", mode="auto", task="x", max_iterations=2))
    view.handle(ev.IterationStarted("r", iteration=1, max_iterations=2))
    for part in ("The answer", " is 42."):
        view.handle(ev.TextDelta("r", iteration=1, delta=part))
    view.handle(ev.RunFinished("r", result=finished_result("The answer is 42.")))
    view.finish()
    assert stream.getvalue().count("The answer is 42.") == 1
    assert stream.getvalue().rstrip().endswith("tokens unknown")

    quiet = io.StringIO()
    compact = TextView(title="t", compact=True, stream=quiet)
    for e in (ev.RunStarted("r", agent="a", model="m", mode="auto", task="x", max_iterations=2),
              ev.IterationStarted("r", iteration=1, max_iterations=2),
              ev.TextDelta("r", iteration=1, delta="The answer is 42."),
              ev.RunFinished("r", result=finished_result("The answer is 42."))):
        compact.handle(e)
    compact.finish()
    lines = quiet.getvalue().splitlines()
    assert lines[0].startswith("[t] completed · 1 iteration(s)") and lines[1:] == ["The answer is 42."]


def test_text_view_waiting_progress_and_interrupt() -> None:
    stream = io.StringIO()
    view = TextView(title="t", stream=stream)
    view.handle(ev.TurnWaiting("r", ahead=1))
    view.handle(ev.RunStarted("r", agent="a", model="m", mode="auto", task="x", max_iterations=2))
    view.handle(ev.TurnResumed("r", waited=0.5))
    view.handle(ev.IterationStarted("r", iteration=1, max_iterations=2))
    view.handle(ev.ToolCallStarted("r", iteration=1, call_id="c", name="crawl", arguments={}))
    for done in range(1, 11):
        view.handle(ev.ToolProgress("r", iteration=1, call_id="c", name="crawl", done=done, total=10, note="pages"))
    view.finish()  # interrupted: no RunFinished
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[t] waiting for 1 earlier turn of this conversation"
    assert lines[1] == "[t] resumed after 0.5s"
    progress = [line for line in lines if line.startswith("  … crawl")]
    assert progress[0] == "  … crawl 1/10 pages" and progress[-1] == "  … crawl 10/10 pages"
    assert len(progress) < 10  # throttled
    assert lines[-1].startswith("[t] cancelled · 1 iteration(s) · 1 tool call(s)")


# ---------------------------------------------------------------------- approval on the panel
EXECUTED: list[str] = []


@tool(requires_approval=True)
def send_email(to: str) -> str:
    """Send an email."""
    EXECUTED.append(f"send_email:{to}")
    return f"sent to {to}"


@tool(requires_approval=True)
async def delete_file(path: str) -> str:
    """Delete a file."""
    EXECUTED.append(f"delete_file:{path}")
    return f"deleted {path}"


def gated_agent(*steps: Any) -> ChatAgent:
    EXECUTED.clear()
    return ChatAgent(model=ScriptedModel(list(steps)), mode="auto", tools=[send_email, delete_file], name="gated")


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def asked(widget: Any) -> list[str]:
    """The call ids the panel shows Approve / Deny for."""
    return [call_id for call_id, _label in widget.approvals]


def click(widget: Any, **content: Any) -> None:
    """A front-end custom message, delivered on another thread (a kernel subshell does this)."""
    t = threading.Thread(target=widget._handle_custom_msg, args=({"type": "approval", **content}, []))
    t.start()
    t.join()


async def test_panel_approves_one_call_and_denies_another_with_a_reason(recorded: list[dict[str, Any]],
                                                                        outputs: list[dict[str, Any]]) -> None:
    agent = gated_agent(calls(call("send_email", {"to": f"ann {XSS}"}, id="c1"),
                              call("delete_file", {"path": "/tmp/x"}, id="c2")), reply("done"))
    panel = RunPanel(title="agent", update_interval=0.01, on_stop=lambda: None)
    panel.show()
    widget = panel.widget
    assert widget is not None
    run = asyncio.ensure_future(agent.arun("go", on_event=panel.handle, approve=panel.request_approval))
    await wait_for(lambda: asked(widget) == ["c1", "c2"] and body(panel).count("mm-approval-slot") == 2)
    assert widget.approvals[0] == ["c1", f"send_email(to='ann {XSS}')"]  # a label, shown as text by the JS
    html = body(panel)
    assert 'data-call-id="c1"' in html and 'data-call-id="c2"' in html and html.count("awaiting approval") == 2
    assert "ann &lt;img src=x" in html and "<img" not in html  # the arguments, escaped
    assert EXECUTED == []

    click(widget, call_id="c2", approved=False, reason="  not now  ")
    # Decided independently: c2 is denied while c1 still waits.
    await wait_for(lambda: asked(widget) == ["c1"] and "denied (panel): not now" in body(panel))
    assert EXECUTED == [] and not run.done()
    click(widget, call_id="c2", approved=True)  # already decided: ignored
    click(widget, call_id="nope", approved=True)  # unknown: ignored
    click(widget, call_id="c1", approved="yes")  # malformed: ignored
    assert asked(widget) == ["c1"]
    click(widget, call_id="c1", approved=True, reason="ignored for approvals")
    result = await asyncio.wait_for(run, 10)
    assert EXECUTED == [f"send_email:ann {XSS}"]  # the denied call never ran

    by_name = {c.name: c for c in result.tool_calls}
    assert by_name["send_email"].approval == ApprovalDecision(True, None, "panel")
    assert by_name["send_email"].status == "ok"
    assert by_name["delete_file"].approval == ApprovalDecision(False, "not now", "panel")
    assert by_name["delete_file"].status == "denied"
    assert "not now" in next(m["content"] for m in agent.messages if m.get("tool_call_id") == "c2")
    await wait_for(lambda: asked(widget) == [] and "approved (panel)" in body(panel))
    assert "mm-approval-slot" not in body(panel)
    panel.finish()
    final = outputs[-1]["data"]
    lines = final["text/plain"].splitlines()
    assert any(line.startswith("  ✓ send_email(to=") and line.endswith(") approved (panel)") for line in lines)
    assert "  ✗ delete_file(path='/tmp/x') denied (panel): not now" in lines  # which call: its arguments
    assert '<ul class="mm-decisions"' in final["text/html"]
    assert "<li>✗ delete_file(path=&#x27;/tmp/x&#x27;) denied (panel): not now</li>" in final["text/html"]
    assert "mm-approval-slot" not in final["text/html"]
    assert result.to_dict()["iterations"][0]["tool_calls"][1]["approval"] == {
        "approved": False, "reason": "not now", "by": "panel"}


async def test_cancelling_while_awaiting_approval_removes_the_buttons(recorded: list[dict[str, Any]],
                                                                      outputs: list[dict[str, Any]]) -> None:
    agent = gated_agent(calls(call("send_email", {"to": "bob"}, id="c1")), reply("never"))
    panel = RunPanel(title="agent", update_interval=0.01, on_stop=lambda: None)
    panel.show()
    widget = panel.widget
    assert widget is not None
    run = asyncio.ensure_future(agent.arun("go", on_event=panel.handle, approve=panel.request_approval))
    await wait_for(lambda: asked(widget) == ["c1"])
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await wait_for(lambda: asked(widget) == [] and "mm-approval-slot" not in body(panel))
    assert "cancelled while awaiting approval" in body(panel)
    assert not panel.approval_clicked("c1", True)  # too late: nothing to decide
    assert EXECUTED == []
    # the history holds no assistant tool call without its result
    roles = [m["role"] for m in agent.messages]
    assert "tool" not in roles or roles.count("tool") == sum(len(m.get("tool_calls") or ())
                                                           for m in agent.messages if m["role"] == "assistant")
    panel.finish()
    final = outputs[-1]["data"]
    assert "cancelled while awaiting approval" in final["text/plain"]
    assert "mm-approval-slot" not in final["text/html"]


async def test_approval_timeout_removes_the_buttons_and_says_who_decided(recorded: list[dict[str, Any]]) -> None:
    agent = gated_agent(calls(call("send_email", {"to": "cy"}, id="c1")), reply("ok"))
    agent.approval_timeout = 0.3
    panel = RunPanel(title="agent", update_interval=0.01)
    panel.show()
    widget = panel.widget
    assert widget is not None
    result = await asyncio.wait_for(agent.arun("go", on_event=panel.handle, approve=panel.request_approval), 30)
    assert result.tool_calls[0].approval is not None and result.tool_calls[0].approval.by == "timeout"
    panel.flush()
    assert asked(widget) == [] and "denied (timeout): no answer within 0.3s" in body(panel)
    assert EXECUTED == []
    panel.close()


async def test_nothing_is_asked_after_finish_and_late_clicks_are_ignored(recorded: list[dict[str, Any]],
                                                                        outputs: list[dict[str, Any]]) -> None:
    panel = RunPanel(title="agent", update_interval=0.01)
    panel.show()
    request = ApprovalRequest("send_email", {"to": "x"}, "c9", "r", "a", 1)
    waiting = asyncio.ensure_future(panel.request_approval(request))
    await wait_for(lambda: panel.widget is not None and asked(panel.widget) == ["c9"])
    panel.finish()  # the view ends while a call still waits: it is denied, never left hanging
    decision = await asyncio.wait_for(waiting, 5)
    assert decision.approved is False and decision.by == "panel" and "closed" in (decision.reason or "")
    late = await panel.request_approval(ApprovalRequest("send_email", {}, "c10", "r", "a", 1))
    assert late.approved is False
    assert not panel.approval_clicked("c9", True) and not panel.approval_clicked("c10", True)


def test_approval_events_render_in_the_view_model_and_text_view() -> None:
    from menglong_magic.ui.state import RunViewModel

    stream = io.StringIO()
    view = TextView(title="t", stream=stream)
    model = RunViewModel("t")
    evs = [ev.RunStarted("r", agent="a", model="m", mode="auto", task="x", max_iterations=2),
           ev.IterationStarted("r", iteration=1, max_iterations=2)]
    for cid, name in (("c1", "send_email"), ("c2", "lookup")):
        evs += [ev.ToolCallStarted("r", iteration=1, call_id=cid, name=name, arguments={"to": "ann"}),
                ev.ApprovalRequested("r", iteration=1, call_id=cid, name=name, arguments={"to": "ann"}, agent="a")]
    for e in evs:
        view.handle(e)
        model.apply(e)
    html = body_html(model)
    assert html.count("mm-approval-slot") == 2 and ICON_SVG["awaiting"] in html and "waiting for a decision" in html
    evs = [ev.ApprovalDecided("r", iteration=1, call_id="c1", name="send_email", approved=False,
                              reason=f"not now {XSS}", by="prompt"),
           ev.ToolCallFinished("r", iteration=1, call_id="c1", name="send_email", ok=False, result=None,
                               error="Error: this tool call was not executed", duration=0.0, status="denied"),
           ev.ApprovalDecided("r", iteration=1, call_id="c2", name="lookup", approved=True, reason=None, by="callback"),
           ev.ToolCallFinished("r", iteration=1, call_id="c2", name="lookup", ok=True, result="ANN", error=None,
                               duration=0.01, status="ok"),
           ev.RunFinished("r", result=finished_result("two"))]
    for e in evs:
        view.handle(e)
        model.apply(e)
    html = body_html(model)
    assert "mm-approval-slot" not in html and "<img" not in html
    assert "denied (prompt): not now &lt;img" in html and "ok · approved (callback)" in html
    assert "this tool call was not executed" not in html  # the head says it once
    view.finish()
    lines = stream.getvalue().splitlines()
    assert lines[1:7] == ["  → send_email(to='ann')", "  ? send_email awaiting approval",
                          "  → lookup(to='ann')", "  ? lookup awaiting approval",
                          f"  ✗ send_email denied (prompt): not now {XSS}", "  ✓ lookup approved (callback)"]
    assert lines[7] == "  ✓ lookup 0.01s: ANN" and not any("⊘" in line for line in lines)
    assert model.summary_text().splitlines()[1:3] == [f"  ✗ send_email(to='ann') denied (prompt): not now {XSS}",
                                                      "  ✓ lookup(to='ann') approved (callback)"]
    quiet = io.StringIO()
    compact = TextView(title="t", compact=True, stream=quiet)
    for e in [*model_events_for_compact()]:
        compact.handle(e)
    compact.finish()
    assert quiet.getvalue().splitlines()[1:] == ["  ✗ send_email denied (panel)", "two"]


def model_events_for_compact() -> list[ev.Event]:
    return [ev.RunStarted("r", agent="a", model="m", mode="auto", task="x", max_iterations=2),
            ev.IterationStarted("r", iteration=1, max_iterations=2),
            ev.ToolCallStarted("r", iteration=1, call_id="c1", name="send_email", arguments={}),
            ev.ApprovalRequested("r", iteration=1, call_id="c1", name="send_email", arguments={}, agent="a"),
            ev.ApprovalDecided("r", iteration=1, call_id="c1", name="send_email", approved=False, reason=None,
                               by="panel"),
            ev.RunFinished("r", result=finished_result("two"))]


async def test_typed_output_is_a_table_and_cost_shows_next_to_tokens() -> None:
    import pydantic

    from menglong_magic.models import ModelRequest, ModelResponse
    from menglong_magic.models.base import Model
    from menglong_magic.ui.state import RunViewModel
    from menglong_magic.usage import Usage

    class City(pydantic.BaseModel):
        name: str
        districts: list[str]

    class Priced(Model):
        name = "priced"

        async def request(self, request: ModelRequest, emit: Any) -> ModelResponse:
            return ModelResponse('{"name": "<b>Oslo</b>", "districts": ["Frogner", "Gamle Oslo"]}', usage=Usage(10, 5))

        def price(self, usage: Usage) -> float | None:
            return 0.00021

    view = TextView(title="typed", stream=io.StringIO())
    model = RunViewModel("typed")
    agent = ChatAgent(model=Priced())

    def both(event: ev.Event) -> None:
        model.apply(event)
        view.handle(event)

    result = await agent.arun("Oslo?", output_type=City, on_event=both)
    view.finish()
    assert result.usage.cost == pytest.approx(0.00021)
    html = final_html(model)
    assert '<table class="mm-output-table">' in html and "<caption" in html and ">City<" in html
    assert "&lt;b&gt;Oslo&lt;/b&gt;" in html and "<b>Oslo</b>" not in html  # escaped like everything else
    assert "<li><code>Gamle Oslo</code></li>" in html
    assert "$0.00021" in header_html(model) and "$0.00021" in model.usage_text()
    text = view.out.getvalue()  # type: ignore[attr-defined]
    assert "output: City(name='<b>Oslo</b>'" in text


def test_a_run_result_shown_elsewhere_renders_markdown_safely() -> None:
    result = RunResult(task="t", final_output="## Title\n\n- a\n- b\n\n" + XSS, stop_reason="completed",
                       iterations=[], usage=RunUsage(), execution_time=0.5)
    html = result._repr_html_()
    assert "<h2>Title</h2>" in html and "<li>a</li>" in html
    assert "<script>" not in html and "<img" not in html and "&lt;script&gt;" in html


# ------------------------------------------------------------------ what the model is doing; unreported usage
def _local_run_events(usages: list[Any]) -> list[ev.Event]:
    from menglong_magic.usage import Usage

    events: list[ev.Event] = [
        ev.RunStarted("r", agent="a", model="local:SmolLM2", mode="auto", task="x", max_iterations=3),
        ev.IterationStarted("r", iteration=1, max_iterations=3),
        ev.ModelStarting("r", model="local:SmolLM2", note="starting the local model (llama.cpp, SmolLM2)…"),
        ev.ModelReady("r", model="local:SmolLM2", seconds=3.25, note="local model started in 3.2s"),
    ]
    for usage in usages:
        events.append(ev.ModelResponseReceived("r", iteration=1, text="hi", tool_calls=(), duration=0.1,
                                               usage=None if usage is None else Usage(*usage)))  # fmt: skip
    return events


@pytest.mark.parametrize("views", ["html", "text"])
def test_the_local_model_starting_is_shown_with_how_long_it_took(views: str) -> None:
    if views == "text":
        stream = io.StringIO()
        view = TextView(title="t", stream=stream)
        for event in _local_run_events([None]):
            view.handle(event)
        lines = stream.getvalue().splitlines()
        assert "[t] starting the local model (llama.cpp, SmolLM2)…" in lines
        assert lines.index("[t] local model started in 3.2s") > lines.index("[t] iteration 1/3")
        return
    view = TextView(title="t", stream=io.StringIO())
    model = view.model
    for event in _local_run_events([])[:3]:
        model.apply(event)
    assert "starting the local model (llama.cpp, SmolLM2)…" in body_html(model)
    model.apply(_local_run_events([])[3])
    assert "local model started in 3.2s" in body_html(model) and "starting the local" not in body_html(model)
    model.apply(ev.RunFinished("r", result=finished_result("hi")))
    assert "local model started in 3.2s" in final_html(model)


@pytest.mark.parametrize("requests", [1, 3])
def test_unreported_usage_is_said_once_in_one_wording(requests: int) -> None:
    stream = io.StringIO()
    view = TextView(title="t", stream=stream)
    for event in _local_run_events([None] * requests):
        view.handle(event)
    view.handle(ev.RunFinished("r", result=finished_result("hi")))
    view.finish()
    model = view.model
    html = final_html(model)
    assert html.count("usage not reported by this model") == 1
    assert "tokens: –" not in html and "tokens unknown" not in html and "unreported" not in html
    assert "usage not reported by this model" in header_html(model) or "mm-tokens" not in header_html(model)
    text = stream.getvalue()
    assert text.count("usage not reported by this model") == 1 and "tokens unknown" not in text


def test_partly_reported_usage_counts_what_was_reported_and_says_the_rest_once() -> None:
    model = TextView(title="t", stream=io.StringIO()).model
    for event in _local_run_events([(10, 5), None]):
        model.apply(event)
    model.apply(ev.RunFinished("r", result=finished_result("hi")))
    assert model.tokens_text() == "15 tokens"
    assert model.usage_text() == "15 tokens (10 in, 5 out), usage of 1 request(s) not reported by this model"
    html = final_html(model)
    assert "tokens: 15" in header_html(model) and html.count("not reported by this model") == 1


def test_icons_are_inline_svg_or_plain_symbols_never_emoji() -> None:
    import re

    from menglong_magic.ui import html as html_module
    from menglong_magic.ui.state import TOOL_ICONS

    emoji = re.compile("[\u2300-\u23ff\u2600-\u26ff\u2b00-\u2bff\U0001f000-\U0001faff\ufe0f]")
    assert not [icon for icon in TOOL_ICONS.values() if emoji.search(icon)]
    assert set(ICON_SVG) >= set(TOOL_ICONS) and all(svg.startswith("<svg") for svg in ICON_SVG.values())
    sources = [html_module.__file__, *(str(p) for p in _static_files())]
    found = {src: emoji.findall(open(src, encoding="utf-8").read()) for src in sources}
    assert not any(found.values()), found
    model = TextView(title="t", stream=io.StringIO()).model
    model.apply(ev.RunStarted("r", agent="a", model="m", mode="auto", task="x", max_iterations=2))
    model.apply(ev.IterationStarted("r", iteration=1, max_iterations=2))
    for i, state in enumerate(("ok", "error", "cancelled")):
        model.apply(ev.ToolCallStarted("r", iteration=1, call_id=f"c{i}", name=f"t{i}", arguments={}))
        model.apply(ev.ToolCallFinished("r", iteration=1, call_id=f"c{i}", name=f"t{i}", ok=state == "ok",
                                        result="r", error=None, duration=0.1, status=state))
    model.apply(ev.RunFinished("r", result=finished_result("", stop_reason="cancelled")))
    html = final_html(model) + body_html(model)
    assert not emoji.search(html) and html.count('<svg class="mm-icon') >= 4


def _static_files() -> list[Any]:
    import pathlib

    import menglong_magic.ui as ui

    return sorted((pathlib.Path(ui.__file__).parent / "static").glob("*.js"))


def test_an_iteration_waiting_for_the_model_says_so_with_its_seconds() -> None:
    # A slow model (the embedded one can take half a minute to decide) showed a bare "running…" that never moved.
    from menglong_magic.ui.state import RunViewModel

    model = RunViewModel("t")
    for e in (ev.RunStarted("r", agent="a", model="m", mode="auto", task="x", max_iterations=3),
              ev.IterationStarted("r", iteration=1, max_iterations=3)):
        model.apply(e)
    assert "running…" in body_html(model) and "waiting for the model" not in body_html(model)
    model.apply(ev.ModelRequestStarted("r", iteration=1, messages=1, tools=2))
    model.iterations[-1].model_since -= 12.4  # as if sent 12 s ago
    assert "iteration 1 · 0 tool call(s) · waiting for the model · 12s" in body_html(model)
    model.apply(ev.ModelResponseReceived("r", iteration=1, text=None, tool_calls=("c1",), usage=None, duration=12.4))
    model.apply(ev.ToolCallStarted("r", iteration=1, call_id="c1", name="lookup", arguments={}))
    assert "waiting for the model" not in body_html(model) and "running…" in body_html(model)
    # Streamed text ends the wait at its first delta; a finished iteration shows its duration.
    model.apply(ev.IterationStarted("r", iteration=2, max_iterations=3))
    model.apply(ev.ModelRequestStarted("r", iteration=2, messages=3, tools=2))
    assert "iteration 2 · 0 tool call(s) · waiting for the model · 0s" in body_html(model)
    model.apply(ev.TextDelta("r", iteration=2, delta="Sun"))
    assert "waiting for the model" not in body_html(model)
    model.apply(ev.IterationFinished("r", iteration=2, duration=1.5, tool_calls=0))
    assert "iteration 2 · 0 tool call(s) · 1.50s" in body_html(model)


@pytest.mark.parametrize(("stop_reason", "said"), [
    ("max_iterations", "stopped at the iteration cap (1) while the model was still calling tools"),
    ("completed", None),
])
async def test_a_run_stopped_at_the_iteration_cap_says_why(stop_reason: str, said: str | None) -> None:
    steps = [calls(call("lookup", {"name": "ann"}))] if stop_reason == "max_iterations" else [reply("done")]
    agent = ChatAgent(model=ScriptedModel(steps), mode="auto", tools=[lookup_tool])
    model = RunViewModel("t")
    result = await agent.arun("look", max_iterations=1, on_event=model.apply)
    assert result.stop_reason == stop_reason
    html, text = final_html(model), model.summary_text()
    if said is None:
        assert "mm-stopped" not in html and "iteration cap" not in text
    else:
        assert said in html and 'class="mm-stopped"' in html and said in text.splitlines()[-1]


@tool
def lookup_tool(name: str) -> str:
    """Look up a name."""
    return name.upper()
