"""Issue #24 (5): the servers people point this at, each reproduced by a named dialect of the scripted server.

For every dialect, streamed and not: a two-tool parallel run and a follow-up turn complete, and the server
(which checks every request as a strict server does: tool names, arguments as JSON object text, every call
answered, Gemini's thought signatures sent back, no DeepSeek reasoning sent back, Azure's URL) accepted
every request, so the history is valid for that server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from menglong_magic import ChatAgent, tool
from menglong_magic import events as ev
from menglong_magic.models import AzureOpenAIModel, OpenAIModel, RetryPolicy
from menglong_magic.testing import call_tools, reply, tool_call
from menglong_magic.testing.server import DIALECTS, Reply, ScriptedOpenAIServer

FAST = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.05)


@tool
def forecast(city: str) -> str:
    """The weather forecast for a city."""
    return f"sunny in {city}"


@tool
def local_time() -> str:
    """The local time (no parameters: servers send "" or "{}" or nothing as its arguments)."""
    return "12:00"


@pytest.fixture(params=sorted(DIALECTS))
def dialect_server(request: pytest.FixtureRequest) -> Iterator[ScriptedOpenAIServer]:
    server = ScriptedOpenAIServer(dialect=request.param).start()
    try:
        yield server
    finally:
        server.stop()


def model_for(server: ScriptedOpenAIServer) -> OpenAIModel:
    assert server.dialect is not None
    if server.dialect.azure:
        return AzureOpenAIModel("gpt-4o-deployment", azure_endpoint=f"http://127.0.0.1:{server.port}",
                                api_version="2024-10-21", api_key="azure-key-0123456789", retry=FAST)
    return OpenAIModel("dialect-model", base_url=server.base_url, api_key="sk-dialect-0123456789", retry=FAST)


def script(server: ScriptedOpenAIServer) -> None:
    thinking = "The user wants two things." if server.dialect and server.dialect.reasoning_field else None
    server.enqueue(
        Reply(text=None, tool_calls=[tool_call("forecast", {"city": "Oslo"}), tool_call("local_time")],
              reasoning=thinking),
        reply("Sunny in Oslo, and it is noon."),
        call_tools(tool_call("forecast", {"city": "Lima"})),
        reply("Lima is sunny too."),
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_parallel_tools_and_a_follow_up_turn(dialect_server: ScriptedOpenAIServer, stream: bool) -> None:
    script(dialect_server)
    agent = ChatAgent(model=model_for(dialect_server), tools=[forecast, local_time], stream=stream, mode="auto")
    seen: list[ev.Event] = []
    first = await agent.chat_result_async("Weather in Oslo and the time?", on_event=seen.append)
    assert first.stop_reason == "completed", (first.error, dialect_server.rejected)
    assert [(c.name, c.result) for c in first.tool_calls] == [("forecast", "sunny in Oslo"), ("local_time", "12:00")]
    assert first.final_output == "Sunny in Oslo, and it is noon."
    second = await agent.chat_result_async("And Lima?")
    assert second.stop_reason == "completed", (second.error, dialect_server.rejected)
    assert [c.result for c in second.tool_calls] == ["sunny in Lima"]
    assert dialect_server.rejected == []
    assert dialect_server.pending_steps == 0 and len(dialect_server.requests) == 4
    # What the server received last is the whole conversation, valid for it.
    history = dialect_server.requests[-1]["messages"]
    calls = [c for m in history if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    assert len(calls) == 3 and all(isinstance(json.loads(c["function"]["arguments"]), dict) for c in calls)
    assert len({c["id"] for c in calls}) == 3
    if stream:  # the streamed deltas name each call at its own slot (Ollama's shared index 0 included)
        slots = {(e.index, e.name) for e in seen if isinstance(e, ev.ToolCallDelta) and e.name}
        assert slots == {(0, "forecast"), (1, "local_time")}


def test_every_dialect_is_documented_in_the_readme() -> None:
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("## Servers covered"):]
    for name in DIALECTS:
        assert f"`{name}`" in section, name


async def test_a_strict_server_rejects_what_the_old_engine_sent() -> None:
    """The checks are real: the server refuses raw "" arguments and unanswered calls (as vLLM does)."""
    import openai

    with ScriptedOpenAIServer(dialect="vllm") as server:
        server.enqueue(reply("never"), reply("never"))
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-x", max_retries=0)
        bad: list[list[dict[str, Any]]] = [
            [{"role": "user", "content": "hi"},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "c1", "type": "function", "function": {"name": "t", "arguments": ""}}]},
             {"role": "tool", "tool_call_id": "c1", "content": "x"}],
            [{"role": "user", "content": "hi"},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "c1", "type": "function", "function": {"name": "t", "arguments": "{}"}}]},
             {"role": "user", "content": "again"}],
        ]
        for messages in bad:
            with pytest.raises(openai.BadRequestError):
                await client.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError, match="does not match pattern"):
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}],
                tools=[{"type": "function", "function": {"name": "fs.read", "parameters": {"type": "object"}}}])
        await client.close()
        assert len(server.rejected) == 3
