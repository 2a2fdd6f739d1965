"""Record a tool-using run through the real openai client over HTTP, stop the server, replay it offline."""

from __future__ import annotations

import base64
import inspect
import json
import pathlib
import urllib.parse
from typing import Any

import pytest

from menglong_magic import ChatAgent, tool
from menglong_magic import events as ev
from menglong_magic.models import (
    ModelRequest,
    OpenAIModel,
    Recorder,
    Replay,
    ReplayExhausted,
    ReplayMismatch,
    RetryPolicy,
    resolve_model,
)
from menglong_magic.testing import call_tools, echo_responder, fault, reply, tool_call

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.1)
TASK = "How many people live in Paris and in Lyon, together?"

populations: dict[str, int] = {"Paris": 2_100_000, "Lyon": 520_000}
tool_runs: list[str] = []


@tool
def population(city: str) -> str:
    """Population of a city.

    Args:
        city: The city name.
    """
    tool_runs.append(city)
    return f"{city}: {populations[city]} inhabitants"


@pytest.fixture(autouse=True)
def _reset() -> None:
    tool_runs.clear()
    populations.update({"Paris": 2_100_000, "Lyon": 520_000})


def script_tool_run(server: Any) -> None:
    """Two parallel tool calls, then a third call, then the answer: three iterations."""
    server.enqueue(
        call_tools(tool_call("population", {"city": "Paris"}), tool_call("population", {"city": "Lyon"}),
                   text="Looking both up."),
        call_tools(tool_call("population", {"city": "Paris"})),
        reply("Together about 2.62 million people live in Paris and Lyon."),
    )


def openai_model(server: Any, **kw: Any) -> OpenAIModel:
    return OpenAIModel("gpt-4o-mini", base_url=server.base_url, api_key="sk-test-1234567890abcdef", retry=FAST_RETRY,
                       **kw)


def events_of(types: tuple[type, ...], sink: list[Any]) -> Any:
    return lambda e: sink.append(e) if isinstance(e, types) else None


def summary(result: Any) -> dict[str, Any]:
    """What must be identical between the recorded and the replayed run."""
    return {
        "final_output": result.final_output,
        "stop_reason": result.stop_reason,
        "iterations_used": result["iterations_used"],
        "tool_calls": [(c.id, c.name, c.arguments, c.result) for it in result.iterations for c in it.tool_calls],
        "texts": [it.text for it in result.iterations],
        "usage": [(u.input_tokens, u.output_tokens) if u else None for u in result.usage.requests],
    }


def lines(path: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("stream", [False, True])
async def test_replay_after_the_server_stopped_gives_the_same_run(
    openai_server: Any, tmp_path: pathlib.Path, stream: bool
) -> None:
    cassette = tmp_path / "run.jsonl"
    script_tool_run(openai_server)
    recorder = Recorder(openai_model(openai_server), cassette)
    recorded = await ChatAgent(model=recorder, tools=[population], stream=stream).arun(TASK)
    assert recorded.stop_reason == "completed" and recorded["iterations_used"] == 3
    assert recorder.recorded == 3 == len(openai_server.requests)
    openai_server.stop()

    tool_runs.clear()
    replay = Replay(cassette)
    replayed = await ChatAgent(model=replay, tools=[population], stream=stream).arun(TASK)
    assert summary(replayed) == summary(recorded)
    assert replayed.final_output == "Together about 2.62 million people live in Paris and Lyon."
    assert sorted(tool_runs) == ["Lyon", "Paris", "Paris"]  # tools really ran again, offline
    replay.assert_all_used()
    assert replay.name == "replay:run.jsonl" and replay.recorded_model == "gpt-4o-mini"
    assert replayed.model == "replay:run.jsonl"


async def test_streaming_replay_emits_the_recorded_delta_sequence(openai_server: Any, tmp_path: pathlib.Path) -> None:
    cassette = tmp_path / "stream.jsonl"
    script_tool_run(openai_server)
    kinds = (ev.TextDelta, ev.ToolCallDelta)
    live: list[Any] = []
    await ChatAgent(model=Recorder(openai_model(openai_server), cassette), tools=[population]).arun(
        TASK, on_event=events_of(kinds, live))
    openai_server.stop()

    again: list[Any] = []
    await ChatAgent(model=Replay(cassette), tools=[population]).arun(TASK, on_event=events_of(kinds, again))

    def shape(e: Any) -> tuple[Any, ...]:
        if isinstance(e, ev.TextDelta):
            return ("text", e.iteration, e.delta)
        return ("tool", e.iteration, e.index, e.name, e.arguments_delta)

    assert len(live) > 10  # the server streams word by word and arguments in pieces
    assert {type(e) for e in live} == set(kinds)
    assert [shape(e) for e in again] == [shape(e) for e in live]


async def test_cassette_format_one_sorted_versioned_pair_per_line(openai_server: Any, tmp_path: pathlib.Path) -> None:
    cassette = tmp_path / "fmt.jsonl"
    script_tool_run(openai_server)
    agent = ChatAgent(model=Recorder(openai_model(openai_server), cassette), tools=[population], stream=True,
                      model_settings={"temperature": 0.25})
    await agent.arun(TASK)
    text = cassette.read_text(encoding="utf-8")
    raw_lines = text.splitlines()
    assert text.endswith("\n") and len(raw_lines) == 3
    for raw in raw_lines:
        pair = json.loads(raw)
        assert raw == json.dumps(pair, sort_keys=True, ensure_ascii=False)  # sorted keys, one line
        assert set(pair) == {"v", "model", "request", "response", "chunks"} and pair["v"] == 1
        assert set(pair["request"]) == {"messages", "tools", "settings", "stream"}
        assert pair["request"]["settings"] == {"temperature": 0.25} and pair["request"]["stream"] is True
        assert set(pair["response"]) == {"text", "tool_calls", "usage", "model", "finish_reason"}
    first, second, third = lines(cassette)
    assert first["request"]["messages"] == [{"role": "user", "content": TASK}]
    assert first["request"]["tools"][0]["function"]["name"] == "population"
    assert [c["name"] for c in first["response"]["tool_calls"]] == ["population", "population"]
    assert json.loads(first["response"]["tool_calls"][1]["arguments"]) == {"city": "Lyon"}
    assert first["response"]["usage"] == {"input_tokens": 10, "output_tokens": 13}  # 3 words + 2 calls
    # tool results are recorded as the model saw them: in the next request's messages
    assert [m["content"] for m in second["request"]["messages"] if m["role"] == "tool"] == [
        "Paris: 2100000 inhabitants", "Lyon: 520000 inhabitants"]
    assert third["response"]["finish_reason"] == "stop" and third["chunks"][0] == {"type": "text",
                                                                                    "delta": "Together"}
    assert "".join(c["delta"] for c in third["chunks"]) == third["response"]["text"]


async def test_strict_mismatch_names_the_first_difference(openai_server: Any, tmp_path: pathlib.Path) -> None:
    cassette = tmp_path / "strict.jsonl"
    script_tool_run(openai_server)
    await ChatAgent(model=Recorder(openai_model(openai_server), cassette), tools=[population]).arun(TASK)
    openai_server.stop()

    populations["Paris"] = 1  # the tool now answers differently: the second request differs from the recording
    result = await ChatAgent(model=Replay(cassette), tools=[population]).arun(TASK)
    assert result.stop_reason == "error" and result["iterations_used"] == 2
    assert "messages[2].content" in (result.error or "")
    assert "'Paris: 2100000 inhabitants'" in (result.error or "") and "'Paris: 1 inhabitants'" in (result.error or "")

    # The exception itself, asked directly: a changed task differs at the first message.
    replay = Replay(cassette)
    with pytest.raises(ReplayMismatch) as info:
        await replay.request(ModelRequest(messages=[{"role": "user", "content": "another task"}],
                                          tools=lines(cassette)[0]["request"]["tools"]), lambda e: None)
    assert info.value.path == "messages[0].content" and "strict.jsonl" in str(info.value)
    with pytest.raises(ReplayMismatch) as info:
        await replay.request(ModelRequest(messages=[{"role": "user", "content": TASK}]), lambda e: None)
    assert info.value.path == "tools[0]"  # no tools offered this time


async def test_non_strict_replays_by_order(openai_server: Any, tmp_path: pathlib.Path) -> None:
    cassette = tmp_path / "order.jsonl"
    script_tool_run(openai_server)
    recorded = await ChatAgent(model=Recorder(openai_model(openai_server), cassette), tools=[population]).arun(TASK)
    openai_server.stop()

    populations["Paris"] = 1
    replay = Replay(cassette, strict=False)
    result = await ChatAgent(model=replay, tools=[population], system="A different prompt.").arun("Other words")
    assert result.final_output == recorded.final_output and result["iterations_used"] == 3
    replay.assert_all_used()
    with pytest.raises(ReplayExhausted, match="3 recorded request"):
        await replay.request(ModelRequest(messages=[{"role": "user", "content": "one more"}]), lambda e: None)


async def test_strict_replay_of_a_parallel_batch_matches_by_content(
    openai_server: Any, tmp_path: pathlib.Path
) -> None:
    cassette = tmp_path / "batch.jsonl"
    openai_server.responder = echo_responder(delay=0.02)
    messages = [f"item {i}" for i in range(6)]
    agent = ChatAgent(model=Recorder(openai_model(openai_server), cassette))
    recorded = await agent.batch_chat_async(messages, max_concurrency=6)
    assert recorded == [f"echo: item {i}" for i in range(6)]
    openai_server.stop()

    # Replayed in reverse order, concurrently: each item still gets its own recorded answer.
    replay = Replay(cassette)
    replayed = await ChatAgent(model=replay).batch_chat_async(list(reversed(messages)), max_concurrency=6)
    assert replayed == list(reversed(recorded))
    replay.assert_all_used()


async def test_retried_requests_record_only_the_answer(openai_server: Any, tmp_path: pathlib.Path) -> None:
    cassette = tmp_path / "retry.jsonl"
    openai_server.enqueue(fault(503), reply("after a retry"))
    retries: list[Any] = []
    result = await ChatAgent(model=Recorder(openai_model(openai_server), cassette)).arun(
        "hi", on_event=events_of((ev.Retry,), retries))
    assert result.final_output == "after a retry" and len(retries) == 1  # the retry still reached the panel
    [pair] = lines(cassette)
    assert pair["response"]["text"] == "after a retry"
    assert "".join(c["delta"] for c in pair["chunks"]) == "after a retry"


async def test_resolve_model_replay_spec(openai_server: Any, tmp_path: pathlib.Path) -> None:
    cassette = tmp_path / "spec.jsonl"
    openai_server.enqueue(reply("recorded answer"))
    await ChatAgent(model=Recorder(openai_model(openai_server), cassette)).chat_async("hello")
    openai_server.stop()
    model = resolve_model(f"replay:{cassette}")
    assert isinstance(model, Replay) and model.strict and model.name == "replay:spec.jsonl"
    assert await ChatAgent(model=f"replay:{cassette}").chat_async("hello") == "recorded answer"
    with pytest.raises(FileNotFoundError, match="no cassette"):
        resolve_model(f"replay:{tmp_path / 'missing.jsonl'}")


def _forms(secret: str) -> set[str]:
    """The secret as it might leak: plain, URL-quoted, JSON-escaped, base64 (as in a Basic header)."""
    forms = {secret, urllib.parse.quote(secret, safe=""), json.dumps(secret)[1:-1]}
    forms.add(base64.b64encode(secret.encode()).decode().rstrip("="))
    return forms


async def test_no_secret_reaches_the_cassette(openai_server: Any, tmp_path: pathlib.Path) -> None:
    cassette = tmp_path / "secrets.jsonl"
    key = "sk-PLANTEDKEY-0123456789abcdef"
    url_user, url_password = "urluserPLANTED", "urlpassPLANTED42"
    settings_header = "settingsHEADERplanted-777"
    default_header = "defaultHEADERplanted-888"
    secrets = [key, url_user, url_password, settings_header, default_header]

    host = urllib.parse.urlsplit(openai_server.base_url).netloc
    options: dict[str, Any] = {
        "api_key": key,
        "retry": FAST_RETRY,
        "settings": {"extra_headers": {"X-Model-Secret": f"Bearer {default_header}"}},
    }
    if "default_headers" in inspect.signature(OpenAIModel).parameters:
        options["default_headers"] = {"X-Default-Secret": default_header}
    try:  # OpenAIModel may refuse user info in a URL outright; if it takes it, it must not be recorded
        model = OpenAIModel("gpt-4o-mini", base_url=f"http://{url_user}:{url_password}@{host}/v1", **options)
    except ValueError as exc:
        assert url_password not in str(exc)
        model = OpenAIModel("gpt-4o-mini", base_url=openai_server.base_url, **options)
    script_tool_run(openai_server)
    # A hostile or buggy endpoint echoes credentials back in its answer: scrubbed from the cassette too.
    openai_server.enqueue(reply(f"You sent {key} and {default_header}."))
    agent = ChatAgent(model=Recorder(model, cassette), tools=[population], stream=True,
                      model_settings={"extra_headers": {"X-Run-Secret": settings_header}, "temperature": 0})
    result = await agent.arun(TASK)
    assert result.stop_reason == "completed"
    assert await agent.chat_async("echo") == f"You sent {key} and {default_header}."
    # The secrets were really in play: the server received the planted headers.
    sent = {k.lower(): v for k, v in openai_server.request_headers[0].items()}
    assert sent["x-run-secret"] == settings_header  # (the run's extra_headers replace the model's own)
    if "default_headers" in options:
        assert sent["x-default-secret"] == default_header

    data = cassette.read_bytes()
    assert data.count(b"\n") == 4
    assert lines(cassette)[3]["response"]["text"] == "You sent *** and ***."
    for secret in secrets:
        for form in _forms(secret):
            assert form.encode() not in data, f"{form!r} leaked into the cassette"
    for pair in lines(cassette):
        assert pair["request"]["settings"] == {"temperature": 0}  # headers dropped, behaviour kept
    assert "PLANTED" not in repr(agent.model) and key not in repr(Replay(cassette))
