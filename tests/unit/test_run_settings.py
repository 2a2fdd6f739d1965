"""Runs carry their own settings; one conversation is one ordered line of turns; tools get a RunContext."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

from menglong_magic import ChatAgent, RunContext, tool
from menglong_magic import events as ev
from menglong_magic.models import ModelRequest, ModelResponse, ScriptedModel, call, calls, reply
from menglong_magic.models.base import Model


class Recording(Model):
    """Answers every request after ``delay``: a tool call first (if tools are offered), then text.

    Records each request's system prompt, tools and messages as sent.
    """

    def __init__(self, name: str, delay: float = 0.02):
        self.name = name
        self.delay = delay
        self.requests: list[ModelRequest] = []

    async def request(self, request: ModelRequest, emit: Any) -> ModelResponse:
        self.requests.append(request)
        await asyncio.sleep(self.delay)
        turn_user = max(i for i, m in enumerate(request.messages) if m["role"] == "user")
        after_user = request.messages[turn_user + 1:]
        if request.tools and not after_user:
            from menglong_magic.models import ToolCall

            name = request.tools[0]["function"]["name"]
            user = request.messages[turn_user]["content"]
            return ModelResponse(None, [ToolCall(f"c-{user}-{len(self.requests)}", name, json.dumps({"x": user}))])
        return ModelResponse(f"{self.name} answers {request.messages[turn_user]['content']}")


@tool
async def echo(x: str) -> str:
    """Echo after a pause."""
    await asyncio.sleep(0.01)
    return f"echo {x}"


@tool
def shout(x: str) -> str:
    """Shout."""
    return x.upper()


def system_of(request: ModelRequest) -> str | None:
    first = request.messages[0]
    return first["content"] if first["role"] == "system" else None


async def test_overlapping_runs_with_overrides_leave_the_agent_unchanged() -> None:
    default, other = Recording("default"), Recording("other")
    agent = ChatAgent(model=default, system="original", mode="normal", tools=[echo])
    before = (agent.model, agent.system, agent.mode, dict(agent.tools))
    results = await asyncio.gather(
        agent.arun("a", system="first", tools=[shout]),
        agent.chat_result_async("b", model=other, system="second", mode="auto"),
        agent.arun("c", model=other, mode="normal"),
        agent.chat_async("d"),
    )
    assert (agent.model, agent.system, agent.mode, dict(agent.tools)) == before
    by_task = {r.task: r for r in results[:3]}
    assert by_task["a"].model == "default" and by_task["b"].model == "other" and by_task["c"].model == "other"
    first = [r for r in default.requests if r.messages[-1].get("content") == "a" or "c-a" in str(r.messages[-1])]
    assert first and all(system_of(r) == "first" for r in first)
    assert all([t["function"]["name"] for t in r.tools] == ["shout"] for r in first)
    second = [r for r in other.requests if "b" in str(r.messages[-1])]
    assert second and all(system_of(r) == "second" for r in second)
    assert all([t["function"]["name"] for t in r.tools] == ["echo"] for r in second)
    third = [r for r in other.requests if r.messages[-1].get("content") == "c"]
    assert third and all(r.tools == [] and system_of(r) == "original" for r in third)
    assert results[3] == "default answers d"


async def test_concurrent_turns_on_one_agent_are_contiguous_and_in_start_order() -> None:
    model = Recording("m", delay=0.01)
    agent = ChatAgent(model=model, mode="auto", tools=[echo])
    waiting: list[ev.TurnWaiting] = []
    agent.subscribe(lambda e: waiting.append(e) if isinstance(e, ev.TurnWaiting) else None)
    tasks = [f"t{i}" for i in range(10)]
    results = await asyncio.gather(*(agent.arun(t) for t in tasks))
    assert [r.stop_reason for r in results] == ["completed"] * 10
    # Every turn is user, assistant(tool call), tool, assistant — contiguous, in start order.
    msgs = agent.messages
    assert len(msgs) == 40
    for i, task in enumerate(tasks):
        turn = msgs[4 * i: 4 * i + 4]
        assert [m["role"] for m in turn] == ["user", "assistant", "tool", "assistant"]
        assert turn[0]["content"] == task and turn[2]["content"] == f"echo {task}"
        assert turn[3]["content"] == f"m answers {task}"
    # No request ever saw another turn's unfinished messages: each request = complete earlier turns + its own.
    for request in model.requests:
        users = [m for m in request.messages if m["role"] == "user"]
        assert len(request.messages) in (4 * (len(users) - 1) + 1, 4 * (len(users) - 1) + 3)
    assert sorted(w.ahead for w in waiting) == list(range(1, 10))


async def test_cancelled_waiting_turn_leaves_the_line_and_the_history_valid() -> None:
    agent = ChatAgent(model=Recording("m", delay=0.2), mode="auto", tools=[echo])
    first = asyncio.ensure_future(agent.arun("first"))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(agent.arun("second"))
    await asyncio.sleep(0.01)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert (await first).stop_reason == "completed"
    third = await agent.arun("third")  # the line moves on
    assert third.stop_reason == "completed"
    assert [m["content"] for m in agent.messages if m["role"] == "user"] == ["first", "third"]


async def test_fork_copies_the_history_and_runs_independently() -> None:
    agent = ChatAgent(model=Recording("m", delay=0.05), mode="auto", tools=[echo], system="s")
    await agent.arun("base")
    forks = [agent.fork() for _ in range(4)]
    assert all(f.messages == agent.messages and f.messages is not agent.messages for f in forks)
    started = time.perf_counter()
    await asyncio.gather(*(f.arun(f"job {i}") for i, f in enumerate(forks)))
    elapsed = time.perf_counter() - started
    assert len(agent.messages) == 4  # the original is unchanged
    assert all(len(f.messages) == 8 for f in forks)
    assert elapsed < 4 * 2 * 0.05  # forks do not wait for each other (4 serial turns would take >= 0.4 s)
    assert forks[0].system == "s" and forks[0].tools.keys() == agent.tools.keys()
    assert forks[0].name != agent.name


async def test_register_tools_accepts_lists_tuples_and_mixed() -> None:
    @tool
    def alpha() -> str:
        return "a"

    def beta() -> str:
        return "b"

    agent = ChatAgent(model="offline")
    registered = await agent.register_tools_from_functions_async([alpha, beta], (shout,), echo)
    assert [t.name for t in registered] == ["alpha", "beta", "shout", "echo"]
    assert sorted(agent.tools) == ["alpha", "beta", "echo", "shout"]
    with pytest.raises(TypeError, match="not a tool or function"):
        agent.register_tools_from_functions([42])


async def test_run_context_is_injected_and_not_in_the_schema() -> None:
    seen: dict[str, Any] = {}

    @tool
    async def count(n: int, ctx: RunContext) -> str:
        """Count to n."""
        seen["ctx"] = ctx
        for i in range(1, n + 1):
            ctx.progress(i, n, f"step {i}")
        return "counted"

    @tool
    def threaded(ctx: RunContext) -> str:
        """Report progress from a worker thread."""
        seen["thread"] = threading.current_thread() is not threading.main_thread()
        ctx.progress(1, None, "from a thread")
        return "ok"

    assert count.__menglong_tool__.parameters["properties"].keys() == {"n"}  # type: ignore[attr-defined]
    assert threaded.__menglong_tool__.parameters.get("properties", {}) == {}  # type: ignore[attr-defined]
    agent = ChatAgent(model=ScriptedModel([calls(call("count", {"n": 3}), call("threaded", {})), reply("done")]),
                      mode="auto", tools=[count, threaded], name="ctx-agent")
    events: list[ev.Event] = []
    result = await agent.arun("go", on_event=events.append)
    assert result.stop_reason == "completed"
    ctx = seen["ctx"]
    assert ctx.run_id == result.run_id and ctx.agent is agent and ctx.tool_name == "count"
    assert not ctx.cancelled.is_set() and seen["thread"]
    progress = [e for e in events if isinstance(e, ev.ToolProgress)]
    assert [(p.name, p.done, p.total, p.note) for p in progress if p.name == "count"] == [
        ("count", 1, 3, "step 1"), ("count", 2, 3, "step 2"), ("count", 3, 3, "step 3")]
    assert [(p.name, p.note) for p in progress if p.name == "threaded"] == [("threaded", "from a thread")]
    call_ids = {e.call_id for e in events if isinstance(e, ev.ToolCallStarted)}
    assert {p.call_id for p in progress} <= call_ids


async def test_a_sync_tool_polling_cancelled_stops_promptly_and_its_record_says_so() -> None:
    stopped: dict[str, float] = {}

    @tool
    def crunch(ctx: RunContext) -> str:
        """Work until told to stop."""
        while not ctx.cancelled.wait(0.01):
            pass
        stopped["at"] = time.perf_counter()
        return "stopped"

    agent = ChatAgent(model=ScriptedModel([calls(call("crunch", {})), reply("never")]), mode="auto",
                      tools=[crunch])
    events: list[ev.Event] = []
    task = asyncio.ensure_future(agent.arun("crunch", on_event=events.append))
    await asyncio.sleep(0.3)
    cancelled_at = time.perf_counter()
    agent.cancel()
    result = await task
    assert result.stop_reason == "cancelled"
    for _ in range(100):  # the worker thread notices the event on its own schedule
        if "at" in stopped:
            break
        await asyncio.sleep(0.01)
    latency = stopped["at"] - cancelled_at
    print(f"sync tool stopped {latency * 1000:.1f} ms after the cancel")
    assert latency < 0.2
    record = result.tool_calls[0]
    assert record.error == "cancelled (its thread was told through RunContext.cancelled)"  # it can stop itself
    finished = [e for e in events if isinstance(e, ev.ToolCallFinished)]
    assert [e.status for e in finished] == ["cancelled"]
    assert agent.messages == []  # no round finished: the unfinished turn is not committed (history valid)


async def test_timeout_sets_cancelled_for_tools_too() -> None:
    flag: dict[str, threading.Event] = {}

    @tool
    def wait_forever(ctx: RunContext) -> str:
        flag["ev"] = ctx.cancelled
        ctx.cancelled.wait(5)
        return "late"

    agent = ChatAgent(model=ScriptedModel([calls(call("wait_forever", {}))]), mode="auto", tools=[wait_forever])
    result = await agent.arun("x", timeout=0.2)
    assert result.stop_reason == "timeout"
    assert flag["ev"].is_set()


async def test_a_sync_tool_without_run_context_is_recorded_as_still_running() -> None:
    release = threading.Event()

    @tool
    def stubborn() -> str:
        """Cannot be told to stop."""
        release.wait(5)
        return "late"

    agent = ChatAgent(model=ScriptedModel([calls(call("stubborn", {}))]), mode="auto", tools=[stubborn])
    try:
        result = await agent.arun("x", timeout=0.2)
    finally:
        release.set()
    assert result.stop_reason == "timeout"
    assert result.tool_calls[0].error is not None and "still running" in result.tool_calls[0].error


async def test_request_timeout_and_retries_reach_each_request(monkeypatch: pytest.MonkeyPatch) -> None:
    model = ScriptedModel(["one", "two", "three", "four"])
    agent = ChatAgent(model=model, request_timeout=7.5, max_retries=1)
    await agent.chat_async("a")
    agent.request_timeout = 3.0  # applies from the next request on
    await agent.chat_async("b")
    agent.request_timeout, agent.max_retries = None, None
    monkeypatch.setenv("MENGLONG_REQUEST_TIMEOUT", "12")
    monkeypatch.setenv("MENGLONG_MAX_RETRIES", "0")
    await agent.chat_async("c")
    await agent.chat_async("d", model=ScriptedModel(["x"]))
    assert [(r.timeout, r.max_retries) for r in model.requests] == [(7.5, 1), (3.0, 1), (12.0, 0)]
    monkeypatch.setenv("MENGLONG_MAX_RETRIES", "lots")
    with pytest.raises(ValueError, match="MENGLONG_MAX_RETRIES"):
        await agent.chat_async("e")


def test_the_default_model_is_resolved_on_first_use(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from menglong_magic import models

    monkeypatch.delenv("MENGLONG_MODEL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setattr(models, "local_model_available", lambda: False)
    monkeypatch.setattr(models, "_announced_offline", False)
    agent = ChatAgent()
    agent.run("hi", model="offline")  # an explicit model: the default is never resolved
    assert "no model configured" not in capsys.readouterr().err
    agent.run("hi")
    agent.run("again")
    assert capsys.readouterr().err.count("no model configured") == 1


async def test_task_completed_needs_an_answer() -> None:
    agent = ChatAgent(model=ScriptedModel([reply("   "), reply("a real answer")]))
    empty = await agent.arun("say nothing")
    assert empty.stop_reason == "no_answer" and not empty.task_completed and empty.error
    assert [m["role"] for m in agent.messages] == ["user", "assistant"]  # what happened, recorded
    assert (await agent.arun("say something")).task_completed
