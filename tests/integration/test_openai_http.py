"""The real openai client over real HTTP against the project's scripted loopback server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from menglong_magic import ChatAgent, tool
from menglong_magic import events as ev
from menglong_magic.models import ModelError, OpenAIModel, RetryPolicy
from menglong_magic.testing import call_tools, disconnect, fault, reply, tool_call

SECRET = "sk-test-SECRET1234567890"
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.5)


def make_agent(server: Any, tools: list[Any] | None = None, **kw: Any) -> ChatAgent:
    model = OpenAIModel("scripted", base_url=server.base_url, api_key=SECRET, retry=FAST_RETRY)
    return ChatAgent(model=model, mode="auto", tools=tools or [], **kw)


invocations: list[int] = []


@tool
def count(n: int) -> str:
    """Count an invocation."""
    invocations.append(n)
    return f"counted {n}"


@pytest.fixture(autouse=True)
def _reset_invocations() -> None:
    invocations.clear()


async def test_tool_loop_over_http(openai_server: Any) -> None:
    openai_server.enqueue(call_tools(tool_call("count", {"n": 1}), tool_call("count", {"n": 2})), reply("two counted"))
    agent = make_agent(openai_server, [count])
    result = await agent.arun("count twice")
    assert result.final_output == "two counted" and sorted(invocations) == [1, 2]
    second = openai_server.requests[1]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "tool", "tool"]
    assert second["tools"][0]["function"]["name"] == "count"
    assert result.usage.total_tokens is not None


async def test_env_vars_configure_the_default_model(openai_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    openai_server.enqueue(reply("from env"))
    agent = ChatAgent()
    assert isinstance(agent.model, OpenAIModel)
    assert await agent.chat_async("hi") == "from env"
    headers = {k.lower(): v for k, v in openai_server.request_headers[0].items()}
    assert headers["authorization"] == "<redacted>"
    assert SECRET not in repr(agent.model) and SECRET not in repr(agent)


@pytest.mark.parametrize("failure", [fault(429, retry_after=0.05), fault(500), fault(503), disconnect()])
async def test_retryable_faults_are_retried_without_repeating_tools(openai_server: Any, failure: Any) -> None:
    openai_server.enqueue(call_tools(tool_call("count", {"n": 1})), failure, reply("done"))
    agent = make_agent(openai_server, [count])
    retries: list[ev.Retry] = []
    result = await agent.arun("x", on_event=lambda e: retries.append(e) if isinstance(e, ev.Retry) else None)
    assert result.stop_reason == "completed" and result.final_output == "done"
    assert invocations == [1]  # the tool ran once
    assert result.iterations_used == 2  # a retry is not an iteration
    assert len(retries) == 1 and len(openai_server.requests) == 3
    if getattr(failure, "retry_after", None):
        assert retries[0].delay == pytest.approx(0.05)


async def test_retries_are_bounded(openai_server: Any) -> None:
    openai_server.enqueue(*[fault(500)] * 4)
    result = await make_agent(openai_server).arun("x")
    assert result.stop_reason == "error" and "after 4 attempts" in (result.error or "")
    assert len(openai_server.requests) == 4  # the SDK's own retries are off: exactly our 4


@pytest.mark.parametrize("status", [401, 400])
async def test_non_retryable_errors_fail_at_once_without_the_key(openai_server: Any, status: int) -> None:
    openai_server.enqueue(*[fault(status, message=f"Incorrect API key provided: {SECRET}")] * 2)
    agent = make_agent(openai_server, stream=False)
    seen: list[ev.Event] = []
    result = await agent.arun("x", on_event=seen.append)
    assert result.stop_reason == "error" and len(openai_server.requests) == 1
    assert SECRET not in (result.error or "") and "***" in (result.error or "")
    assert SECRET not in result.to_json() and SECRET not in repr(result)
    assert all(SECRET not in repr(e) for e in seen)
    with pytest.raises(ModelError) as info:
        openai_server.enqueue(*[fault(status, message=f"bad key {SECRET}")] * 2)
        await agent.chat_async("y")
    assert SECRET not in str(info.value) and info.value.status == status


async def test_streaming_assembles_the_same_message(openai_server: Any) -> None:
    steps = [call_tools(tool_call("count", {"n": 41}), text=None), reply("the answer is forty one")]
    plain_agent = make_agent(openai_server, [count], stream=False)
    openai_server.enqueue(*steps)
    await plain_agent.arun("x")
    stream_agent = make_agent(openai_server, [count], stream=True)
    openai_server.enqueue(*steps)
    deltas: list[ev.Event] = []
    result = await stream_agent.arun("x", on_event=deltas.append)
    assert openai_server.requests[-1]["stream"] is True
    strip = [{k: v for k, v in m.items()} for m in stream_agent.messages]
    for m in strip:
        for tc in m.get("tool_calls") or ():
            tc["id"] = "x"
    plain = [dict(m) for m in plain_agent.messages]
    for m in plain:
        for tc in m.get("tool_calls") or ():
            tc["id"] = "x"
        if m["role"] == "tool":
            m["tool_call_id"] = "x"
    for m in strip:
        if m["role"] == "tool":
            m["tool_call_id"] = "x"
    assert strip == plain
    text = "".join(e.delta for e in deltas if isinstance(e, ev.TextDelta))
    assert text == "the answer is forty one"
    args = "".join(e.arguments_delta for e in deltas if isinstance(e, ev.ToolCallDelta))
    assert json.loads(args) == {"n": 41}
    assert len([e for e in deltas if isinstance(e, ev.ToolCallDelta)]) > 2
    assert result.usage.total_tokens is not None  # from the include_usage chunk


async def test_stream_options_rejection_falls_back(openai_server: Any) -> None:
    openai_server.enqueue(reply("hi", reject_stream_options=True), reply("hi"))
    agent = make_agent(openai_server, stream=True)
    assert await agent.chat_async("x") == "hi"
    assert "stream_options" in openai_server.requests[0] and "stream_options" not in openai_server.requests[1]


async def test_usage_unknown_when_server_omits_it(openai_server: Any) -> None:
    openai_server.enqueue(reply("no usage", usage=None))
    result = await make_agent(openai_server).arun("x")
    assert result.usage.requests == [None] and result.usage.total_tokens is None


def test_two_sync_runs_share_one_client(openai_server: Any) -> None:
    openai_server.enqueue(reply("one"), reply("two"))
    agent = make_agent(openai_server)
    assert agent.run("a").final_output == "one"
    assert agent.run("b").final_output == "two"
    assert len(agent.model._clients) == 1  # type: ignore[attr-defined]


async def test_concurrency_bound_is_shared_by_everything(openai_server: Any) -> None:
    openai_server.responder = lambda body: reply("ok", delay=0.2)
    agent = make_agent(openai_server, max_concurrency=3)
    results = await asyncio.gather(agent.batch_chat_async([f"m{i}" for i in range(6)]),
                                   agent.batch_chat_async([f"n{i}" for i in range(6)]))
    assert all(r == "ok" for batch in results for r in batch)
    assert openai_server.max_in_flight == 3


async def test_batch_items_get_their_own_history_copies(openai_server: Any) -> None:
    openai_server.enqueue(reply("first answer"))
    agent = make_agent(openai_server)
    await agent.chat_async("setup")
    openai_server.responder = lambda body: reply(f"seen {len(body['messages'])} messages")
    answers = await agent.batch_chat_async(["a", "b", "c"])
    assert answers == ["seen 3 messages"] * 3  # setup, first answer, own message: no cross-talk
    assert len(agent.messages) == 2  # the agent's own history is unchanged


async def test_two_agents_in_parallel_do_not_interfere(openai_server: Any) -> None:
    openai_server.responder = lambda body: reply("to " + body["messages"][0]["content"], delay=0.1)
    a = ChatAgent(model=OpenAIModel("m", base_url=openai_server.base_url, api_key=SECRET), system="A")
    b = ChatAgent(model=OpenAIModel("m", base_url=openai_server.base_url, api_key=SECRET), system="B")
    ra, rb = await asyncio.gather(a.arun("x"), b.arun("y"))
    assert (ra.final_output, rb.final_output) == ("to A", "to B")
    assert a.messages[0]["content"] == "x" and b.messages[0]["content"] == "y"
