"""Issue #24 (1-3): what a server sends is checked before it reaches the loop, a cassette, an event or a view,
and what we send obeys the API's rules. Real openai client, real HTTP, raw SSE streams written byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic
import pytest

from menglong_magic import ChatAgent, tool
from menglong_magic import events as ev
from menglong_magic.models import ModelError, OpenAIModel, Recorder, RetryPolicy
from menglong_magic.testing import call_tools, reply, tool_call
from menglong_magic.testing.server import RawStream, ScriptedOpenAIServer
from menglong_magic.tools import as_tool

FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)


def model_for(server: ScriptedOpenAIServer, **kw: Any) -> OpenAIModel:
    return OpenAIModel("m", base_url=server.base_url, api_key="sk-boundary-0123456789", retry=FAST, **kw)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": choices, **extra}


def calls_chunk(*calls: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return chunk({"tool_calls": list(calls)}, finish)


def fn(name: str | None = None, arguments: str | None = None, **rest: Any) -> dict[str, Any]:
    function = {k: v for k, v in (("name", name), ("arguments", arguments)) if v is not None}
    return {**rest, "function": function}


@tool
def forecast(city: str) -> str:
    """Forecast."""
    return f"sunny in {city}"


@tool
def local_time() -> str:
    """Time."""
    return "12:00"


# Streamed tool-call patterns from real servers; each must yield forecast(Oslo) and local_time() as two calls.
PATTERNS: dict[str, list[dict[str, Any] | str]] = {
    "ollama-all-at-index-0": [
        calls_chunk(fn("forecast", '{"city": "Oslo"}', index=0, id="call_a", type="function")),
        calls_chunk(fn("local_time", "{}", index=0, id="call_b", type="function")),
        chunk({}, "tool_calls"), "[DONE]"],
    "ollama-both-in-one-chunk": [
        calls_chunk(fn("forecast", '{"city": "Oslo"}', index=0, id="call_a"),
                    fn("local_time", "{}", index=0, id="call_b")),
        chunk({}, "stop"), "[DONE]"],
    "gemini-no-index": [
        calls_chunk(fn("forecast", '{"city": "Oslo"}', id="function-call-1")),
        calls_chunk(fn("local_time", "", id="function-call-2")),
        chunk({}, "stop"), "[DONE]"],
    "no-index-split-arguments": [
        calls_chunk(fn("forecast", '{"ci', id="x1")), calls_chunk(fn(None, 'ty": "Oslo"}')),
        calls_chunk(fn("local_time", None, id="x2")),
        chunk({}, "tool_calls"), "[DONE]"],
    "name-in-pieces-and-id-late": [
        calls_chunk(fn("fore", "", index=0)), calls_chunk(fn("cast", '{"city": ', index=0)),
        calls_chunk(fn(None, '"Oslo"}', index=0, id="late_1")),
        calls_chunk(fn("local_", None, index=1, id="late_2")), calls_chunk(fn("time", None, index=1)),
        chunk({}, "tool_calls"), "[DONE]"],
    "id-in-pieces": [
        calls_chunk(fn("forecast", "", index=0, id="call_")), calls_chunk(fn(None, '{"city": "Os', index=0, id="xyz")),
        calls_chunk(fn(None, 'lo"}', index=0)),
        calls_chunk(fn("local_time", "", index=1, id="call_2")),
        chunk({}, "tool_calls"), "[DONE]"],
    "llamacpp-name-and-id-repeated": [
        calls_chunk(fn("forecast", "", index=0, id="r1")), calls_chunk(fn("forecast", '{"city":', index=0, id="r1")),
        calls_chunk(fn("forecast", ' "Oslo"}', index=0, id="r1")),
        calls_chunk(fn("local_time", "", index=1, id="r2")), calls_chunk(fn("local_time", "{}", index=1, id="r2")),
        chunk({}, "tool_calls"), "[DONE]"],
    "null-finish-then-done": [
        calls_chunk(fn("forecast", '{"city": "Oslo"}', index=0, id="n1")),
        calls_chunk(fn("local_time", None, index=1, id="n2")),
        chunk({}, None), "[DONE]"],
}


@pytest.mark.parametrize("pattern", list(PATTERNS))
async def test_streamed_tool_calls_are_reassembled(openai_server: ScriptedOpenAIServer, pattern: str) -> None:
    openai_server.enqueue(RawStream(PATTERNS[pattern]), reply("done"))
    agent = ChatAgent(model=model_for(openai_server), tools=[forecast, local_time], stream=True, mode="auto")
    result = await agent.arun("weather and time")
    assert result.stop_reason == "completed", result.error
    assert [(c.name, c.arguments, c.result) for c in result.tool_calls] == [
        ("forecast", {"city": "Oslo"}, "sunny in Oslo"), ("local_time", {}, "12:00")]
    assert len(openai_server.requests) == 2  # complete on the first try (null finish_reason + [DONE] included)
    sent = openai_server.requests[1]["messages"][1]["tool_calls"]
    assert [c["function"]["arguments"] for c in sent] == ['{"city": "Oslo"}', "{}"]
    assert len({c["id"] for c in sent}) == 2


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("raw", ["", "null", "  ", None])
async def test_empty_arguments_become_an_empty_object(openai_server: ScriptedOpenAIServer, stream: bool,
                                                      raw: str | None) -> None:
    if raw is None:  # the field left out entirely
        step: Any = RawStream([calls_chunk(fn("local_time", None, index=0, id="e1", type="function")),
                               chunk({}, "tool_calls"), "[DONE]"]) if stream else \
            call_tools(tool_call("local_time", ""))
    else:
        step = call_tools(tool_call("local_time", raw))
    openai_server.enqueue(step, reply("noon"))
    agent = ChatAgent(model=model_for(openai_server), tools=[local_time], stream=stream, mode="auto")
    result = await agent.arun("time?")
    assert result.stop_reason == "completed" and result.tool_calls[0].result == "12:00"
    assert openai_server.requests[1]["messages"][1]["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("raw", ['{"city": "Os', '{"city": "Oslo"', "not json", '["Oslo"]', '"Oslo"', "42"])
async def test_invalid_arguments_are_an_error_of_that_call(openai_server: ScriptedOpenAIServer, stream: bool,
                                                           raw: str) -> None:
    openai_server.enqueue(call_tools(tool_call("forecast", raw), tool_call("local_time")), reply("ok"))
    agent = ChatAgent(model=model_for(openai_server), tools=[forecast, local_time], stream=stream, mode="auto")
    result = await agent.arun("weather")
    assert result.stop_reason == "completed"
    bad, good = result.tool_calls
    assert bad.error and "was not run" in bad.error and bad.result and bad.result.startswith("Error:")
    assert good.result == "12:00"
    second = openai_server.requests[1]["messages"]
    echoed = second[1]["tool_calls"][0]["function"]["arguments"]
    assert echoed == "{}" and raw not in json.dumps(second[1])  # never echoed as if the model wrote it
    assert second[2]["content"].startswith("Error:") and "JSON" in second[2]["content"]
    assert agent.messages[1]["tool_calls"][0]["function"]["arguments"] == "{}"


SURROGATE_STREAMS: dict[str, tuple[list[str], str]] = {
    "pair-split": (["Hi ", "\ud83d", "\ude00", "!"], "Hi \U0001F600!"),
    "pair-in-one-piece": (["Hi \ud83d\ude00!"], "Hi \U0001F600!"),
    "lone-high-at-end": (["Hi ", "\ud83d"], "Hi \ufffd"),
    "lone-low": (["\ude00 x"], "\ufffd x"),
    "high-then-text": (["a\ud83d", "b"], "a\ufffdb"),
}


@pytest.mark.parametrize("case", list(SURROGATE_STREAMS))
async def test_text_is_valid_unicode_and_later_turns_still_work(openai_server: ScriptedOpenAIServer, tmp_path: Path,
                                                                 case: str) -> None:
    pieces, expected = SURROGATE_STREAMS[case]
    # json.dumps writes lone surrogates as \ud83d escapes: exactly what servers put on the wire.
    stream = [chunk({"role": "assistant", "content": ""})] + [chunk({"content": p}) for p in pieces] + \
        [chunk({}, "stop"), "[DONE]"]
    openai_server.enqueue(RawStream(stream), reply("second turn fine"))
    cassette = tmp_path / "c.jsonl"
    agent = ChatAgent(model=Recorder(model_for(openai_server), cassette), stream=True)
    deltas: list[str] = []
    first = await agent.chat_result_async("emoji", on_event=lambda e: deltas.append(e.delta)
                                          if isinstance(e, ev.TextDelta) else None)
    assert first.stop_reason == "completed" and first.final_output == expected
    assert "".join(deltas) == expected
    second = await agent.chat_result_async("again")
    assert second.stop_reason == "completed" and second.final_output == "second turn fine"
    recorded = [json.loads(line) for line in cassette.read_text(encoding="utf-8").splitlines()]
    assert recorded[0]["response"]["text"] == expected and len(recorded) == 2


async def test_surrogates_in_tool_arguments_and_names_are_cleaned(openai_server: ScriptedOpenAIServer) -> None:
    openai_server.enqueue(RawStream([
        calls_chunk(fn("forecast", '{"city": "Oslo \\ud83d', index=0, id="s1")),
        calls_chunk(fn(None, '\\ude00"}', index=0)), chunk({}, "tool_calls"), "[DONE]"]), reply("ok"))
    agent = ChatAgent(model=model_for(openai_server), tools=[forecast], stream=True, mode="auto")
    result = await agent.arun("x")
    assert result.tool_calls[0].result == "sunny in Oslo \U0001F600"


@pytest.mark.parametrize("ending", ["no-finish-no-done", "cut-mid-call"])
async def test_a_stream_that_just_stops_is_truncated_and_retried(openai_server: ScriptedOpenAIServer,
                                                                 ending: str) -> None:
    cut: list[dict[str, Any] | str] = [chunk({"role": "assistant", "content": ""}), chunk({"content": "half an"})]
    if ending == "cut-mid-call":
        cut = [calls_chunk(fn("forecast", '{"city": "Os', index=0, id="t1"))]
    openai_server.enqueue(RawStream(cut), reply("whole answer"))
    agent = ChatAgent(model=model_for(openai_server), tools=[forecast], stream=True, mode="auto")
    retries: list[ev.Retry] = []
    result = await agent.chat_result_async(
        "x", on_event=lambda e: retries.append(e) if isinstance(e, ev.Retry) else None)
    assert result.stop_reason == "completed" and result.final_output == "whole answer"
    assert len(retries) == 1 and "truncated" in retries[0].error
    assert not any(m.get("tool_calls") for m in agent.messages)


async def test_a_stream_that_always_stops_early_fails_cleanly(openai_server: ScriptedOpenAIServer) -> None:
    cut = RawStream([chunk({"content": "half"})])
    openai_server.enqueue(cut, cut, cut)
    agent = ChatAgent(model=model_for(openai_server), stream=True)
    result = await agent.chat_result_async("x")
    assert result.stop_reason == "error" and "truncated" in (result.error or "")
    assert agent.messages == []
    with pytest.raises(ModelError):
        raise result.exception  # type: ignore[misc]


# ---------------------------------------------------------------- what we send: names the API accepts
@pytest.mark.parametrize("name", ["fs.read", "Wetter abrufen", "a" * 80, "namespace/tool:v2", "é"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_any_tool_name_is_offered_under_a_safe_name_and_mapped_back(name: str, stream: bool) -> None:
    with ScriptedOpenAIServer(dialect="openai") as server:  # refuses names outside ^[a-zA-Z0-9_-]{1,64}$

        def respond(body: dict[str, Any]) -> Any:
            offered = [t["function"]["name"] for t in body.get("tools") or []]
            if body["messages"][-1]["role"] == "user":
                return call_tools(tool_call(offered[0], {"city": "Oslo"}))
            return reply("done")

        server.responder = respond
        agent = ChatAgent(model=model_for(server), tools=[as_tool(forecast, name=name)], stream=stream, mode="auto")
        seen: list[ev.Event] = []
        result = await agent.chat_result_async("go", on_event=seen.append)
        assert result.stop_reason == "completed", (result.error, server.rejected)
        assert server.rejected == []
        assert [(c.name, c.result) for c in result.tool_calls] == [(name, "sunny in Oslo")]
        started = next(e for e in seen if isinstance(e, ev.ToolCallStarted))
        sent = server.requests[0]["tools"][0]["function"]["name"]
        assert started.name == name and started.api_name == sent and sent != name


async def test_two_tools_that_clean_to_the_same_name_stay_distinct() -> None:
    with ScriptedOpenAIServer(dialect="openai") as server:
        server.responder = lambda body: reply("ok")
        tools = [as_tool(forecast, name="fs.read"), as_tool(local_time, name="fs_read"),
                 as_tool(forecast, name="fs/read")]
        agent = ChatAgent(model=model_for(server), tools=tools, mode="auto")
        assert (await agent.arun("x")).stop_reason == "completed"
        offered = [t["function"]["name"] for t in server.requests[0]["tools"]]
        assert len(set(offered)) == 3 and "fs_read" in offered and server.rejected == []


class Météo(pydantic.BaseModel):
    city: str
    high_c: int


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_the_schema_name_of_any_class_is_accepted(stream: bool) -> None:
    with ScriptedOpenAIServer(dialect="openai") as server:
        server.enqueue(reply('{"city": "Lisbon", "high_c": 24}'))
        agent = ChatAgent(model=model_for(server), stream=stream)
        result = await agent.chat_result_async("weather", output_type=Météo)
        assert result.stop_reason == "completed" and result.output == Météo(city="Lisbon", high_c=24)
        assert server.rejected == [] and "response_format" in server.requests[0]
        assert agent.model.supports_response_format is True


async def test_a_refusal_about_a_name_does_not_switch_off_response_format_for_good(
        openai_server: ScriptedOpenAIServer) -> None:
    from menglong_magic.testing import fault

    class Answer(pydantic.BaseModel):
        value: int

    openai_server.enqueue(
        fault(400, message="Invalid 'response_format.json_schema.name': string does not match pattern"),
        reply('{"value": 1}'), reply('{"value": 2}'))
    model = model_for(openai_server)
    agent = ChatAgent(model=model)
    first = await agent.chat_result_async("a", output_type=Answer)
    assert first.output == Answer(value=1)
    assert model.supports_response_format is not False
    second = await agent.chat_result_async("b", output_type=Answer)
    assert second.output == Answer(value=2) and "response_format" in openai_server.requests[-1]
