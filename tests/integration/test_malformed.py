"""Issue #12: a malformed or truncated 200 response (JSON body or streamed chunk) is a transient ModelError
naming the model and the endpoint, retried like a 5xx, leaving a valid history when retries run out.
Issue #10 (5): per-request timeout and max_retries, and model.timeout changes apply to a cached client."""

from __future__ import annotations

import json
from typing import Any

import pytest

from menglong_magic import ChatAgent, tool
from menglong_magic import events as ev
from menglong_magic.models import ModelError, ModelRequest, OpenAIModel, RetryPolicy
from menglong_magic.testing import call_tools, reply, tool_call
from menglong_magic.testing.server import ScriptedOpenAIServer, malformed

FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)


def model_for(server: ScriptedOpenAIServer, **kw: Any) -> OpenAIModel:
    return OpenAIModel("scripted-model", base_url=server.base_url, api_key="sk-test-KEY-0123456789", **kw)


BROKEN = {
    "truncated": malformed(),
    "html": malformed("<html><body>502 Bad Gateway</body></html>"),
    "not-a-completion": malformed('{"object": "error", "detail": "oops"}'),
    "no-choices": malformed('{"id": "x", "object": "chat.completion", "choices": []}'),
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("kind", list(BROKEN))
async def test_a_malformed_response_is_retried(openai_server: ScriptedOpenAIServer, kind: str, stream: bool) -> None:
    if stream and kind == "no-choices":
        pytest.skip("a chunk without choices is valid in a stream (the usage chunk)")
    openai_server.enqueue(BROKEN[kind], reply("recovered answer"))
    agent = ChatAgent(model=model_for(openai_server, retry=FAST), stream=stream)
    seen: list[ev.Event] = []
    result = await agent.arun("hello", on_event=seen.append)
    assert result.stop_reason == "completed" and result.final_output == "recovered answer"
    retries = [e for e in seen if isinstance(e, ev.Retry)]
    assert len(retries) == 1 and len(openai_server.requests) == 2
    assert "malformed response from " + openai_server.base_url + "/chat/completions" in retries[0].error
    if stream and kind != "no-choices":
        # Deltas streamed before the broken chunk are voided by the Retry; the final text is the retry's.
        texts = [e.delta for e in seen if isinstance(e, ev.TextDelta)]
        assert "part0 " in texts and result.final_output == "recovered answer"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_retries_run_out_with_a_clear_error(openai_server: ScriptedOpenAIServer, stream: bool) -> None:
    openai_server.enqueue(*[malformed()] * 3)
    agent = ChatAgent(model=model_for(openai_server, retry=FAST), stream=stream)
    with pytest.raises(ModelError) as info:
        await agent.chat_async("hello")
    message = str(info.value)
    assert "'scripted-model'" in message
    assert f"malformed response from {openai_server.base_url}/chat/completions" in message
    assert "not valid JSON" in message and "Unterminated string" in message
    assert ("streamed chunk 3" in message) if stream else ("the response body" in message)
    assert "(after 3 attempts)" in message and len(openai_server.requests) == 3
    assert info.value.retryable and info.value.status is None
    assert info.value.__context__ is None and info.value.__cause__ is None
    assert not isinstance(info.value, json.JSONDecodeError)


invocations: list[str] = []


@tool
def lookup(city: str) -> str:
    """Look a city up."""
    invocations.append(city)
    return f"{city}: 20C"


def assert_valid_history(messages: list[dict[str, Any]]) -> None:
    """Every assistant tool call is answered by a tool message before the next non-tool message."""
    i = 0
    while i < len(messages):
        m = messages[i]
        if m["role"] == "assistant" and m.get("tool_calls"):
            ids = {tc["id"] for tc in m["tool_calls"]}
            j = i + 1
            answered = set()
            while j < len(messages) and messages[j]["role"] == "tool":
                answered.add(messages[j]["tool_call_id"])
                j += 1
            assert answered == ids, messages
            i = j
        else:
            assert m["role"] != "tool", messages
            i += 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_history_stays_valid_when_retries_run_out(openai_server: ScriptedOpenAIServer, stream: bool) -> None:
    invocations.clear()
    openai_server.enqueue(call_tools(tool_call("lookup", {"city": "Paris"})), *[malformed()] * 3)
    agent = ChatAgent(model=model_for(openai_server, retry=FAST), tools=[lookup], mode="auto", stream=stream)
    result = await agent.arun("weather in Paris?")
    assert result.stop_reason == "error" and "malformed response" in (result.error or "")
    assert invocations == ["Paris"]
    assert_valid_history(agent.messages)
    # The next turn sends a history the server accepts, and the conversation goes on.
    openai_server.enqueue(reply("it is 20C in Paris"))
    assert await agent.chat_async("so?") == "it is 20C in Paris"
    sent = [m for m in openai_server.requests[-1]["messages"] if m["role"] != "system"]
    assert_valid_history(sent)
    assert sent[-1] == {"role": "user", "content": "so?"}


# --------------------------------------------------------------------------- per-request timeout / retries


def request(timeout: float | None = None, max_retries: int | None = None) -> ModelRequest:
    return ModelRequest(messages=[{"role": "user", "content": "x"}], timeout=timeout, max_retries=max_retries)


@pytest.mark.parametrize("max_retries", [0, 2])
async def test_request_timeout_and_max_retries(openai_server: ScriptedOpenAIServer, max_retries: int) -> None:
    openai_server.enqueue(*[reply("late", delay=1.5)] * (max_retries + 1))
    model = model_for(openai_server, retry=RetryPolicy(max_attempts=5, base_delay=0.01), timeout=60)
    retries: list[ev.Event] = []
    with pytest.raises(ModelError) as info:
        await model.request(request(timeout=0.3, max_retries=max_retries), retries.append)
    assert "timed out after 0.3s" in str(info.value)
    assert len(openai_server.requests) == max_retries + 1 and len(retries) == max_retries
    assert (f"(after {max_retries + 1} attempts)" in str(info.value)) == (max_retries > 0)


async def test_request_without_overrides_uses_the_models_policy(openai_server: ScriptedOpenAIServer) -> None:
    openai_server.enqueue(*[reply("late", delay=1.5)] * 2)
    model = model_for(openai_server, retry=RetryPolicy(max_attempts=2, base_delay=0.01), timeout=0.3)
    with pytest.raises(ModelError) as info:
        await model.request(request(), lambda e: None)
    assert "timed out after 0.3s" in str(info.value) and "(after 2 attempts)" in str(info.value)
    assert len(openai_server.requests) == 2


async def test_a_changed_model_timeout_applies_to_the_cached_client(openai_server: ScriptedOpenAIServer) -> None:
    model = model_for(openai_server, retry=RetryPolicy(max_attempts=1), timeout=30)
    openai_server.enqueue(reply("quick"), reply("slow", delay=1.5))
    assert (await model.request(request(), lambda e: None)).text == "quick"
    client = model.client
    model.timeout = 0.3
    with pytest.raises(ModelError) as info:
        await model.request(request(), lambda e: None)
    assert model.client is client  # same cached client, new timeout
    assert "timed out after 0.3s" in str(info.value) and len(openai_server.requests) == 2


def test_a_request_cut_off_by_its_client_is_neither_recorded_nor_answered(openai_server: ScriptedOpenAIServer) -> None:
    # A client that dies mid-request (a killed Ray worker) left a body of {} in server.requests, which scripted
    # responders then failed on.
    import socket
    import urllib.parse

    server = openai_server
    server.enqueue(reply("whole"))
    url = urllib.parse.urlsplit(server.base_url)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    for sent in (b"", body[:10]):
        with socket.create_connection((url.hostname, url.port)) as cut:
            cut.sendall(f"POST {url.path}/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                        f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + sent)
            cut.shutdown(socket.SHUT_WR)
            assert cut.recv(1000) == b""  # closed without an answer
    result = ChatAgent(model=model_for(server)).run("hi")
    assert result.final_output == "whole"
    assert [b["messages"][-1]["content"] for b in server.requests] == ["hi"]
