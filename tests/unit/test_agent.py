"""ChatAgent core with ScriptedModel: run loop, results, history invariant, cancellation, sync twins."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from menglong_magic import ChatAgent, ChatMode, RunningLoopError, tool
from menglong_magic import events as ev
from menglong_magic.agent.result import Usage
from menglong_magic.models import ScriptedModel, ScriptExhausted, call, calls, reply


def assert_history_valid(messages: list[dict[str, Any]]) -> None:
    """Every assistant tool call is answered by exactly one tool message before the next turn."""
    i = 0
    while i < len(messages):
        m = messages[i]
        if m["role"] == "tool":
            raise AssertionError(f"orphan tool message at {i}: {m}")
        if m["role"] == "assistant" and m.get("tool_calls"):
            ids = [tc["id"] for tc in m["tool_calls"]]
            answered = []
            j = i + 1
            while j < len(messages) and messages[j]["role"] == "tool":
                answered.append(messages[j]["tool_call_id"])
                j += 1
            assert sorted(answered) == sorted(ids), f"tool calls {ids} answered by {answered}"
            i = j
            continue
        i += 1


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
async def slow_async(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


@tool
def slow_sync(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


@tool
def boom() -> str:
    raise ValueError("kaput")


def agent_with(steps: list[Any], **kw: Any) -> ChatAgent:
    return ChatAgent(model=ScriptedModel(steps), mode=ChatMode.AUTO,
                     tools=kw.pop("tools", [add, slow_async, slow_sync, boom]), **kw)


async def test_tool_loop_completes_with_seed_keys() -> None:
    agent = agent_with([calls(call("add", {"a": 2, "b": 3})), reply("5", usage=Usage(7, 1))])
    result = await agent.arun("add 2 and 3")
    assert result["task_completed"] is True
    assert result["iterations_used"] == 2
    assert result["execution_time"] >= 0
    assert result.final_output == "5"
    assert result.stop_reason == "completed"
    assert result.tool_calls[0].arguments == {"a": 2, "b": 3}
    assert result.tool_calls[0].result == "5"
    assert [m["role"] for m in agent.messages] == ["user", "assistant", "tool", "assistant"]
    assert_history_valid(agent.messages)
    # usage: one request reported nothing (unknown), one reported 8 tokens
    assert result.usage.requests[0] is None
    assert result.usage.total_tokens == 8
    assert result.usage.unknown_requests == 1


async def test_usage_is_unknown_not_zero_when_never_reported() -> None:
    result = await agent_with([reply("hi")]).arun("x")
    assert result.usage.total_tokens is None
    assert result.usage.describe() == "usage not reported by this model"  # unknown, never "0 tokens"


async def test_max_iterations_keeps_everything_done() -> None:
    agent = agent_with([calls(call("add", {"a": 1, "b": 1}), text="step one"),
                        calls(call("add", {"a": 2, "b": 2}))])
    result = await agent.arun("loop", max_iterations=2)
    assert result.stop_reason == "max_iterations"
    assert not result["task_completed"]
    assert [c.result for c in result.tool_calls] == ["2", "4"]
    assert result.final_output == "step one"
    assert_history_valid(agent.messages)
    assert len(agent.messages) == 5


async def test_tool_errors_go_back_to_the_model_and_the_run_continues() -> None:
    agent = agent_with([
        calls(call("boom"), call("nope"), call("add", '{"a": 1,'), call("add", {"a": "x", "b": 1})),
        reply("handled"),
    ])
    result = await agent.arun("break things")
    assert result.stop_reason == "completed"
    errors = [c.error for c in result.tool_calls]
    assert "ValueError: kaput" in errors[0]
    assert "unknown tool 'nope'" in errors[1]
    assert "not valid JSON" in errors[2] and "cut off" in errors[2]
    assert "invalid arguments" in errors[3] and "a:" in errors[3]
    sent = agent.model.requests[1].messages  # type: ignore[attr-defined]
    tool_messages = [m["content"] for m in sent if m["role"] == "tool"]
    assert all(t.startswith("Error:") for t in tool_messages)
    assert_history_valid(agent.messages)


async def test_sync_tools_run_concurrently_in_threads() -> None:
    agent = agent_with([calls(*[call("slow_sync", {"seconds": 0.3}) for _ in range(5)]), reply("ok")])
    started = time.perf_counter()
    result = await agent.arun("five slow tools")
    elapsed = time.perf_counter() - started
    assert [c.result for c in result.tool_calls] == ["slept"] * 5
    assert elapsed < 1.2, f"5 x 0.3 s tools took {elapsed:.2f}s: not concurrent"


async def test_loop_stays_responsive_during_sync_tool() -> None:
    agent = agent_with([calls(call("slow_sync", {"seconds": 0.5})), reply("ok")])
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    t = asyncio.create_task(ticker())
    await agent.arun("x")
    t.cancel()
    assert ticks >= 5


async def test_normal_mode_sends_no_tools_and_chat_keeps_history() -> None:
    agent = ChatAgent(model=ScriptedModel(["one", "two"]), tools=[add])
    assert await agent.chat_async("first") == "one"
    assert await agent.chat_async("second") == "two"
    requests = agent.model.requests  # type: ignore[attr-defined]
    assert requests[0].tools == []
    assert [m["content"] for m in requests[1].messages] == ["first", "one", "second"]


async def test_system_prompt_leads_every_request_but_not_the_conversation() -> None:
    agent = ChatAgent(model=ScriptedModel(["a"]), system="be brief")
    await agent.chat_async("hi")
    assert agent.model.requests[0].messages[0] == {"role": "system", "content": "be brief"}  # type: ignore
    assert agent.history[0]["role"] == "system" and agent.messages[0]["role"] == "user"


async def test_model_error_rolls_back_the_turn_and_next_call_works() -> None:
    agent = agent_with([RuntimeError("down"), reply("back")])
    result = await agent.arun("x")
    assert result.stop_reason == "error" and result.error == "down"
    assert agent.messages == []
    assert (await agent.arun("again")).final_output == "back"


async def test_model_error_after_a_round_keeps_the_finished_round() -> None:
    agent = agent_with([calls(call("add", {"a": 1, "b": 1})), RuntimeError("down"), reply("back")])
    result = await agent.arun("x")
    assert result.stop_reason == "error"
    assert [m["role"] for m in agent.messages] == ["user", "assistant", "tool"]
    assert_history_valid(agent.messages)
    with pytest.raises(RuntimeError):
        await ChatAgent(model=ScriptedModel([RuntimeError("down")])).chat_async("x")
    assert (await agent.chat_async("again")) == "back"


async def test_timeout_keeps_partial_work() -> None:
    agent = agent_with([calls(call("add", {"a": 1, "b": 1})), calls(call("slow_async", {"seconds": 5})), reply("z")])
    result = await agent.arun("x", timeout=0.5)
    assert result.stop_reason == "timeout"
    assert result.tool_calls[0].result == "2"
    assert_history_valid(agent.messages)


@pytest.mark.parametrize("where", ["model", "async_tool", "sync_tool", "between_iterations"])
async def test_cancellation_at_each_await_point_keeps_history_valid(where: str) -> None:
    steps: dict[str, list[Any]] = {
        "model": [reply("never", delay=5)],
        "async_tool": [calls(call("add", {"a": 1, "b": 2}), call("slow_async", {"seconds": 5}))],
        "sync_tool": [calls(call("slow_sync", {"seconds": 0.6}))],
        "between_iterations": [calls(call("add", {"a": 1, "b": 2})), reply("never", delay=5)],
    }
    agent = agent_with(steps[where])
    task = asyncio.create_task(agent.arun("x"))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert agent.last_result is not None and agent.last_result.stop_reason == "cancelled"
    assert_history_valid(agent.messages)
    if where == "async_tool":  # the finished sibling's result is kept, the cancelled one is marked
        tool_msgs = [m["content"] for m in agent.messages if m["role"] == "tool"]
        assert tool_msgs[0] == "3" and "stopped" in tool_msgs[1]
    agent.model.add(reply("still works"))  # type: ignore[attr-defined]
    assert await agent.chat_async("next") == "still works"
    assert_history_valid(agent.messages)


async def test_cancel_cancels_sibling_tools() -> None:
    seen: list[str] = []

    @tool
    async def waits(name: str) -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            seen.append(name)
            raise
        return name

    agent = agent_with([calls(call("waits", {"name": "a"}), call("waits", {"name": "b"}))], tools=[waits])
    task = asyncio.create_task(agent.arun("x"))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(seen) == ["a", "b"]


async def test_agent_cancel_returns_a_cancelled_result() -> None:
    agent = agent_with([calls(call("slow_async", {"seconds": 5}))])
    task = asyncio.create_task(agent.arun("x"))
    await asyncio.sleep(0.2)
    assert agent.cancel() == 1
    result = await task
    assert result.stop_reason == "cancelled"
    assert_history_valid(agent.messages)


def test_sync_run_twice_reuses_one_loop_and_refuses_inside_a_loop() -> None:
    loops = []

    @tool
    async def where() -> int:
        loops.append(asyncio.get_running_loop())
        return 1

    agent = agent_with([calls(call("where")), reply("a"), calls(call("where")), reply("b")], tools=[where])
    assert agent.run("one").final_output == "a"
    assert agent.run("two").final_output == "b"
    assert loops[0] is loops[1]

    async def inside() -> None:
        with pytest.raises(RunningLoopError, match=r"await agent\.arun"):
            agent.run("x")
        with pytest.raises(RuntimeError, match=r"await agent\.chat_async"):
            agent.chat("x")

    asyncio.run(inside())


def test_ctrl_c_cancels_the_task_before_keyboardinterrupt(tmp_path: Any) -> None:
    script = textwrap.dedent("""
        import asyncio, os, signal
        # As in a terminal: a test run started in the background (CI, nohup, `cmd &`) inherits SIGINT ignored,
        # and then Python never raises KeyboardInterrupt at all (the test printed nothing).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from menglong_magic import ChatAgent, tool
        from menglong_magic.models import ScriptedModel, calls, call
        import threading
        @tool
        async def wait() -> str:
            # Ctrl-C once the tool runs, whatever the machine's load.
            threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                print("tool cancelled", flush=True)
                raise
        agent = ChatAgent(model=ScriptedModel([calls(call("wait"))]), mode="auto", tools=[wait])
        try:
            agent.run("x")
        except KeyboardInterrupt:
            print("KeyboardInterrupt after", agent.last_result.stop_reason, flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.stdout.splitlines() == ["tool cancelled", "KeyboardInterrupt after cancelled"], out.stderr


async def test_events_callback_and_async_iterator() -> None:
    agent = agent_with([calls(call("add", {"a": 1, "b": 1})), reply("done")])
    seen: list[ev.Event] = []
    agent.subscribe(seen.append)
    streamed: list[ev.Event] = []

    async def consume() -> None:
        async with agent.stream_events() as events:
            async for event in events:
                streamed.append(event)
                if isinstance(event, ev.RunFinished):
                    return

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0)
    result = await agent.arun("x")
    await asyncio.wait_for(consumer, 2)
    kinds = [type(e).__name__ for e in seen]
    assert kinds[0] == "RunStarted" and kinds[-1] == "RunFinished"
    for name in ("IterationStarted", "ModelRequestStarted", "ModelResponseReceived", "ToolCallStarted",
                 "ToolCallFinished", "IterationFinished", "TextDelta"):
        assert name in kinds, name
    finished = next(e for e in seen if isinstance(e, ev.ToolCallFinished))
    assert finished.ok and finished.result == "2" and finished.duration >= 0
    assert [type(e) for e in streamed] == [type(e) for e in seen]
    assert seen[-1].result is result  # type: ignore[attr-defined]
    assert len({e.run_id for e in seen}) == 1


async def test_a_failing_subscriber_does_not_break_the_run() -> None:
    agent = agent_with([reply("fine")])
    agent.subscribe(lambda e: 1 / 0)
    assert (await agent.arun("x")).final_output == "fine"


async def test_scripted_model_is_strict() -> None:
    model = ScriptedModel(["one", "two"])
    agent = ChatAgent(model=model)
    await agent.chat_async("a")
    with pytest.raises(AssertionError, match="never used"):
        model.assert_all_used()
    await agent.chat_async("b")
    model.assert_all_used()
    with pytest.raises(ScriptExhausted):
        await agent.chat_async("c")
    assert len(model.requests) == 3


async def test_scripted_step_can_be_a_function_of_the_request() -> None:
    model = ScriptedModel([lambda request: f"you said {request.messages[-1]['content']}"])
    assert await ChatAgent(model=model).chat_async("hi") == "you said hi"


async def test_offline_model_calls_each_tool_once_then_summarises() -> None:
    @tool
    def greet(name: str, times: int = 1) -> str:
        return f"hello {name}" * times

    agent = ChatAgent(model="offline", mode="auto", tools=[greet, add])
    result = await agent.arun("do it")
    assert [c.name for c in result.tool_calls] == ["greet", "add"]
    assert result.tool_calls[0].arguments == {"name": "name"}  # required arguments only
    assert "greet returned hello name" in result.final_output
    again = await ChatAgent(model="offline", mode="auto", tools=[greet, add]).arun("do it")
    assert again.final_output == result.final_output
