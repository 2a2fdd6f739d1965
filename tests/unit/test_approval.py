"""Tool approval through callbacks: approve, deny, reasons, parallel calls, cancel while waiting."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from menglong_magic import ApprovalDecision, ApprovalRequest, ChatAgent, tool
from menglong_magic import events as ev
from menglong_magic.models import ScriptedModel, call, calls, reply

SENT: list[str] = []


@tool(requires_approval=True)
def send_email(to: str, body: str) -> str:
    """Send an email."""
    SENT.append(to)
    return f"sent to {to}"


@tool
async def lookup(name: str) -> str:
    """Look up an address (needs no approval)."""
    return f"{name}@example.org"


@pytest.fixture(autouse=True)
def _clear() -> None:
    SENT.clear()


def scripted(*steps: Any) -> ScriptedModel:
    return ScriptedModel(list(steps))


def tool_messages(agent: ChatAgent) -> dict[str, str]:
    return {m["tool_call_id"]: m["content"] for m in agent.messages if m["role"] == "tool"}


async def test_approved_call_runs_and_records_who_approved() -> None:
    asked: list[ApprovalRequest] = []

    def approve(request: ApprovalRequest) -> bool:
        asked.append(request)
        return True

    agent = ChatAgent(model=scripted(calls(call("send_email", {"to": "ann", "body": "hi"}, id="c1")), reply("ok")),
                      mode="auto", tools=[send_email], approve=approve, name="mailer")
    events: list[ev.Event] = []
    result = await agent.arun("mail ann", on_event=events.append)
    assert SENT == ["ann"]
    assert asked[0].tool_name == "send_email" and asked[0].arguments == {"to": "ann", "body": "hi"}
    assert asked[0].call_id == "c1" and asked[0].agent_name == "mailer" and asked[0].run_id == result.run_id
    record = result.tool_calls[0]
    assert record.approval == ApprovalDecision(True, None, "callback") and record.status == "ok"
    kinds = [type(e).__name__ for e in events if isinstance(e, (ev.ApprovalRequested, ev.ApprovalDecided,
                                                                ev.ToolCallStarted, ev.ToolCallFinished))]
    assert kinds == ["ToolCallStarted", "ApprovalRequested", "ApprovalDecided", "ToolCallFinished"]
    assert result.to_dict()["iterations"][0]["tool_calls"][0]["approval"] == {
        "approved": True, "reason": None, "by": "callback"}


@pytest.mark.parametrize(("answer", "reason"), [(False, None), ("not to strangers", "not to strangers")])
async def test_denied_call_is_not_executed_and_the_model_is_told(answer: Any, reason: str | None) -> None:
    async def approve(request: ApprovalRequest) -> Any:
        return answer

    agent = ChatAgent(model=scripted(calls(call("send_email", {"to": "bob", "body": "x"}, id="c1")),
                                     reply("understood")),
                      mode="auto", tools=[send_email], approve=approve)
    events: list[ev.Event] = []
    result = await agent.arun("mail bob", on_event=events.append)
    assert SENT == []
    assert result.stop_reason == "completed" and result.final_output == "understood"
    record = result.tool_calls[0]
    assert record.status == "denied" and record.approval == ApprovalDecision(False, reason, "callback")
    told = tool_messages(agent)["c1"]
    assert "denied" in told and "not executed" in told and (reason is None or reason in told)
    decided = next(e for e in events if isinstance(e, ev.ApprovalDecided))
    assert (decided.approved, decided.reason, decided.by) == (False, reason, "callback")
    finished = next(e for e in events if isinstance(e, ev.ToolCallFinished))
    assert finished.status == "denied"


async def test_parallel_calls_are_decided_independently_and_approved_ones_run_while_others_wait() -> None:
    release = asyncio.Event()
    order: list[str] = []

    async def approve(request: ApprovalRequest) -> Any:
        if request.arguments["to"] == "slow":
            await release.wait()
            order.append("slow decided")
            return "too slow"
        return True

    @tool(requires_approval=True)
    async def notify(to: str) -> str:
        order.append(f"ran {to}")
        if to == "fast":
            release.set()
        return f"notified {to}"

    agent = ChatAgent(model=scripted(calls(call("notify", {"to": "slow"}, id="a"),
                                           call("notify", {"to": "fast"}, id="b"),
                                           call("lookup", {"name": "x"}, id="c")), reply("done")),
                      mode="auto", tools=[notify, lookup], approve=approve)
    result = await agent.arun("notify both")
    assert order == ["ran fast", "slow decided"]
    statuses = {r.id: r.status for r in result.tool_calls}
    assert statuses == {"a": "denied", "b": "ok", "c": "ok"}
    assert result.tool_calls[2].approval is None  # lookup needs no approval
    assert tool_messages(agent)["b"] == "notified fast"


async def test_cancel_while_waiting_for_approval_leaves_a_valid_history() -> None:
    waiting = asyncio.Event()

    async def approve(request: ApprovalRequest) -> bool:
        waiting.set()
        await asyncio.sleep(60)
        return True

    agent = ChatAgent(model=scripted(calls(call("send_email", {"to": "c", "body": "x"}, id="c1"),
                                           call("lookup", {"name": "c"}, id="c2")), reply("never")),
                      mode="auto", tools=[send_email, lookup], approve=approve)
    task = asyncio.ensure_future(agent.arun("mail c"))
    await asyncio.wait_for(waiting.wait(), 5)
    agent.cancel()
    result = await task
    assert result.stop_reason == "cancelled" and SENT == []
    by_id = {r.id: r for r in result.tool_calls}
    assert by_id["c1"].error == "cancelled while awaiting approval (not executed)"
    # lookup had finished: the round is kept, the unapproved call answered as stopped
    messages = tool_messages(agent)
    assert messages["c2"] == "c@example.org" and "stopped" in messages["c1"]
    assert [m["role"] for m in agent.messages] == ["user", "assistant", "tool", "tool"]


async def test_without_an_approver_the_call_is_denied_at_once() -> None:
    agent = ChatAgent(model=scripted(calls(call("send_email", {"to": "d", "body": "x"})), reply("ok")),
                      mode="auto", tools=[send_email])
    started = time.perf_counter()
    result = await agent.arun("mail d")
    assert time.perf_counter() - started < 5  # never a hang
    record = result.tool_calls[0]
    assert SENT == [] and record.status == "denied" and record.approval is not None
    assert record.approval.by == "timeout" and "no one could approve" in (record.approval.reason or "")


async def test_approve_all_and_timeout_and_per_run_callback() -> None:
    async def never(request: ApprovalRequest) -> bool:
        await asyncio.sleep(60)
        return True

    agent = ChatAgent(model=scripted(calls(call("lookup", {"name": "e"})), reply("ok"),
                                     calls(call("lookup", {"name": "f"})), reply("ok")),
                      mode="auto", tools=[lookup], approve=never, approval_timeout=0.1)
    result = await agent.arun("look up e", approve_all=True)
    decision = result.tool_calls[0].approval
    assert decision is not None and (decision.approved, decision.by) == (False, "timeout")
    assert "0.1s" in (decision.reason or "")
    # a per-run callback beats the agent's; the agent's own stays
    result = await agent.arun("look up f", approve_all=True, approve=lambda r: True)
    assert result.tool_calls[0].status == "ok" and agent.approve is never


async def test_a_failing_approver_denies_and_the_run_goes_on() -> None:
    def broken(request: ApprovalRequest) -> bool:
        raise RuntimeError("dialog crashed")

    agent = ChatAgent(model=scripted(calls(call("send_email", {"to": "g", "body": "x"})), reply("ok")),
                      mode="auto", tools=[send_email], approve=broken)
    result = await agent.arun("mail g")
    assert result.stop_reason == "completed" and SENT == []
    assert "dialog crashed" in (result.tool_calls[0].approval.reason or "")  # type: ignore[union-attr]
