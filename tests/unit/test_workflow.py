"""Workflows, context summaries and tool registration."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest

from menglong_magic import ChatAgent, ChatMode, tool
from menglong_magic import events as ev
from menglong_magic.models import ScriptedModel, reply


async def test_function_and_prompt_steps_pass_data_and_state() -> None:
    model = ScriptedModel([lambda r: f"summary of [{r.messages[-1]['content']}]"])
    agent = ChatAgent(model=model)
    seen: list[Any] = []

    def clean(text: str) -> str:
        return text.strip().lower()

    async def count(previous: str, state: dict[str, Any]) -> int:
        await asyncio.sleep(0)
        seen.append(dict(state))
        return len(previous.split())

    agent.add_workflow_step("clean", clean)
    agent.add_workflow_step("count", count)
    await agent.add_workflow_step_async("summarise", "Summarise '{clean}' ({input} words)")
    agent.add_workflow_step("never", lambda x: 1 / 0, condition=lambda prev, state: prev == "nope")
    events: list[ev.Event] = []
    result = await agent.execute_workflow_async("  Hello Big World ", on_event=events.append)
    assert [s.status for s in result.steps] == ["ok", "ok", "ok", "skipped"]
    assert result.state["clean"] == "hello big world" and result.state["count"] == 3
    assert seen == [{"clean": "hello big world"}]
    assert result.output == "summary of [Summarise 'hello big world' (3 words)]"
    assert result.success and all(s.duration >= 0 for s in result.steps)
    names = [type(e).__name__ for e in events]
    assert names.count("WorkflowStepStarted") == 4 and names[-1] == "WorkflowFinished"
    assert "RunStarted" in names  # the prompt step is a chat turn of the agent
    assert "summarise: ok" in repr(result)


async def test_a_failing_step_stops_the_workflow_and_async_conditions_work() -> None:
    agent = ChatAgent(model=ScriptedModel([]))

    async def never(prev: Any, state: Any) -> bool:
        return False

    agent.add_workflow_step("skip", lambda x: "skipped", condition=never)
    agent.add_workflow_step("boom", lambda x: int("x"))
    agent.add_workflow_step("after", lambda x: "never")
    result = await agent.execute_workflow_async(1)
    assert [s.status for s in result.steps] == ["skipped", "error", "skipped"]
    assert "ValueError" in (result.steps[1].error or "") and not result.success


def test_workflow_mode_chat_and_sync_twin() -> None:
    agent = ChatAgent(model=ScriptedModel([]), mode=ChatMode.WORKFLOW)
    agent.add_workflow_step("upper", str.upper)
    assert agent.chat("hi") == "HI"
    assert agent.execute_workflow("yo").output == "YO"
    with pytest.raises(ValueError, match="no workflow steps"):
        ChatAgent(model=ScriptedModel([])).execute_workflow("x")


async def test_context_summary_and_clear_keep_system_and_tools() -> None:
    @tool
    def t1(x: int) -> int:
        return x

    agent = ChatAgent(model=ScriptedModel(["a", "b"]), system="sys", tools=[t1])
    await agent.chat_async("one")
    await agent.chat_async("two")
    summary = await agent.get_context_summary_async()
    assert summary.messages == 4 and summary.by_role == {"user": 2, "assistant": 2}
    assert summary.last_user == "two" and summary.last_answer == "b" and summary.tools == ["t1"]
    assert "messages: 4 (2 user, 2 assistant)" in str(summary)
    await agent.clear_context_async()
    assert agent.messages == [] and agent.system == "sys" and list(agent.tools) == ["t1"]


async def test_tool_registration_replace_warns_and_remove() -> None:
    agent = ChatAgent(model=ScriptedModel([]))

    def f(x: int) -> int:
        """First."""
        return x

    @tool(name="g")
    async def g(x: int) -> int:
        return x

    agent.register_tool("f", f)
    with pytest.warns(UserWarning, match="replacing"):
        agent.register_tool("f", f, description="Second.")
    assert agent.tools["f"].description == "Second."
    await agent.register_tools_from_functions_async(g)
    assert sorted(agent.tools) == ["f", "g"] and agent.tools["g"].is_async
    agent.remove_tool("f")
    assert list(agent.tools) == ["g"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        await agent.register_tool_async("h", f)


async def test_batch_failure_modes() -> None:
    agent = ChatAgent(model=ScriptedModel(["ok", RuntimeError("bad"), "ok2"]))
    results = await agent.batch_chat_async(["a", "b", "c"], max_concurrency=1)
    assert results[0] == "ok" and isinstance(results[1], RuntimeError) and results[2] == "ok2"
    agent = ChatAgent(model=ScriptedModel([RuntimeError("bad"), reply("slow", delay=5)]))
    with pytest.raises(RuntimeError, match="bad"):
        await agent.batch_chat_async(["a", "b"], return_exceptions=False)
    seq = ChatAgent(model=ScriptedModel(["one", RuntimeError("bad"), "never"]))
    out = await seq.sequential_chat_async(["a", "b", "c"])
    assert out[0] == "one" and isinstance(out[1], RuntimeError) and len(out) == 2
