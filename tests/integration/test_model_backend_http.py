"""The model layer over real HTTP: retries, errors without keys, streaming assembly, configuration, and
LocalModel over `/v1/completions` (prompts, grammars, tool rounds, retries) against the scripted server.

The real ``openai`` client talks to the project's scripted loopback server (``openai_server``) and, where
that server cannot produce a wire format (llama.cpp's repeated tool-call names, a stream cut in the
middle, a quota error body), to a tiny raw SSE server defined here.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from menglong_magic import ChatAgent, tool
from menglong_magic import events as ev
from menglong_magic.models import ModelError, ModelRequest, OpenAIModel, RetryPolicy
from menglong_magic.models.local import LocalModel
from menglong_magic.testing import call_tools, disconnect, fault, reply, tool_call
from menglong_magic.testing.server import malformed
from menglong_magic.tools import as_tool

SECRET = "sk-test-SECRET123456"
FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)

invocations: list[int] = []


@tool
def count(n: int) -> str:
    """Record an invocation.

    Args:
        n: A number.
    """
    invocations.append(n)
    return f"counted {n}"


COUNT_SCHEMA = as_tool(count).schema()


@pytest.fixture(autouse=True)
def _reset_invocations() -> None:
    invocations.clear()


def model_for(server: Any, **kw: Any) -> OpenAIModel:
    kw.setdefault("retry", FAST)
    return OpenAIModel("scripted", base_url=server.base_url, api_key=SECRET, **kw)


def run_events(events: list[ev.Event], kind: type[ev.Event]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def assert_no_secret(*texts: object) -> None:
    for text in texts:
        assert SECRET not in str(text) and "SECRET123456" not in str(text), text


# --------------------------------------------------------------------------- retries

RETRYABLE = {
    "429-retry-after": lambda: fault(429, retry_after=0.2),
    "500": lambda: fault(500),
    "502": lambda: fault(502),
    "503": lambda: fault(503),
    "disconnect": lambda: disconnect(),
    "timeout": lambda: reply("too late", delay=1.5),  # the client gives up after 0.4 s
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("kind", list(RETRYABLE))
async def test_retryable_fault_is_retried_once_and_the_run_completes(openai_server: Any, kind: str,
                                                                      stream: bool) -> None:
    openai_server.enqueue(call_tools(tool_call("count", {"n": 7})), RETRYABLE[kind](), reply("all done"))
    agent = ChatAgent(model=model_for(openai_server, timeout=0.4), mode="auto", tools=[count], stream=stream)
    events: list[ev.Event] = []
    started = time.perf_counter()
    result = await agent.arun("count once", on_event=events.append)
    elapsed = time.perf_counter() - started

    assert result.stop_reason == "completed" and result.final_output == "all done"
    assert invocations == [7]  # the tool before the fault ran once, and was not re-run by the retry
    assert result.iterations_used == 2 and len(run_events(events, ev.IterationStarted)) == 2
    assert len(openai_server.requests) == 3  # one failed request, retried once
    retries = run_events(events, ev.Retry)
    assert [r.attempt for r in retries] == [1]
    assert_no_secret(*(repr(e) for e in events))
    if kind == "429-retry-after":
        assert retries[0].delay == pytest.approx(0.2)  # Retry-After honoured exactly
        assert elapsed >= 0.19
        assert "429" in retries[0].error
    # The retried request carried the same conversation as the failed one.
    assert openai_server.requests[1]["messages"] == openai_server.requests[2]["messages"]


async def test_a_stream_failing_midway_is_retried_and_not_duplicated(openai_server: Any) -> None:
    # The first stream sends a chunk, then stalls past the read timeout.
    openai_server.enqueue(reply("partial words here", chunk_delay=1.0), reply("the whole answer"))
    agent = ChatAgent(model=model_for(openai_server, timeout=0.4), stream=True)
    events: list[ev.Event] = []
    result = await agent.arun("x", on_event=events.append)
    assert result.final_output == "the whole answer" and result.iterations_used == 1
    retry_at = next(i for i, e in enumerate(events) if isinstance(e, ev.Retry))
    after = "".join(e.delta for e in events[retry_at:] if isinstance(e, ev.TextDelta))
    assert after == "the whole answer" and len(openai_server.requests) == 2


async def test_retries_are_bounded_and_the_sdk_does_not_retry(openai_server: Any) -> None:
    openai_server.enqueue(*[fault(503)] * 5)
    model = model_for(openai_server, retry=RetryPolicy(max_attempts=3, base_delay=0.01))
    events: list[ev.Event] = []
    with pytest.raises(ModelError) as info:
        await model.request(ModelRequest(messages=[{"role": "user", "content": "x"}]), events.append)
    assert len(openai_server.requests) == 3  # exactly our attempts, none from the SDK
    assert len(run_events(events, ev.Retry)) == 2
    assert "after 3 attempts" in str(info.value) and info.value.status == 503 and info.value.retryable


async def test_a_retry_after_beyond_the_limit_fails_at_once(openai_server: Any) -> None:
    openai_server.enqueue(fault(429, retry_after=3600), reply("never"))
    with pytest.raises(ModelError) as info:
        await model_for(openai_server).request(ModelRequest(messages=[{"role": "user", "content": "x"}]),
                                               lambda e: None)
    assert len(openai_server.requests) == 1 and "3600" in str(info.value)


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=3.0, jitter=0.25)
    for attempt, base in [(1, 0.5), (2, 1.0), (3, 2.0)]:
        delays = [policy.delay(attempt) for _ in range(50)]
        assert all(base <= d <= base * 1.25 for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert policy.delay(10) == pytest.approx(3.0)
    assert policy.delay(1, retry_after=7.0) == 7.0


# --------------------------------------------------------------------------- non-retryable errors

@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("status", [401, 400])
async def test_non_retryable_error_fails_at_once_without_the_key(openai_server: Any, status: int,
                                                                 stream: bool) -> None:
    message = f"Incorrect API key provided: {SECRET}. You can find your key at https://example"
    model = model_for(openai_server)
    if stream:  # once a server has accepted stream_options, a 400 cannot be about them
        openai_server.enqueue(reply("warm-up"))
        await model.request(ModelRequest(messages=[{"role": "user", "content": "w"}], stream=True), lambda e: None)
        openai_server.reset_stats()
    openai_server.enqueue(fault(status, message=message), reply("unused"))
    agent = ChatAgent(model=model, mode="auto", tools=[count], stream=stream)
    events: list[ev.Event] = []
    result = await agent.arun("x", on_event=events.append)
    assert result.stop_reason == "error" and len(openai_server.requests) == 1
    assert not run_events(events, ev.Retry)
    assert f"HTTP {status}" in (result.error or "")
    assert_no_secret(result.error, repr(result), result.to_json(), repr(model), repr(agent),
                     *(repr(e) for e in events))
    if status == 401:
        assert "OPENAI_API_KEY" in (result.error or "")

    openai_server.clear()
    openai_server.enqueue(fault(status, message=message))
    with pytest.raises(ModelError) as info:
        await agent.chat_async("again")
    error = info.value
    assert error.status == status and not error.retryable
    assert error.__cause__ is None and error.__suppress_context__  # the SDK's exception is not chained
    assert_no_secret(str(error), repr(error))


# --------------------------------------------------------------------------- streaming

async def _both(server: Any, step_factory: Any, **request: Any) -> tuple[Any, Any, list[ev.Event]]:
    model = model_for(server)
    server.enqueue(step_factory(), step_factory())
    req = {"messages": [{"role": "user", "content": "x"}], **request}
    plain = await model.request(ModelRequest(**req, stream=False), lambda e: None)
    events: list[ev.Event] = []
    streamed = await model.request(ModelRequest(**req, stream=True, run_id="r1", iteration=3), events.append)
    return plain, streamed, events


async def test_streamed_text_assembles_to_the_plain_message(openai_server: Any) -> None:
    plain, streamed, events = await _both(openai_server, lambda: reply("one two three four five"))
    assert streamed.text == plain.text == "one two three four five"
    assert streamed.tool_calls == plain.tool_calls == []
    assert streamed.usage == plain.usage is not None  # include_usage chunk
    assert streamed.to_message() == plain.to_message()
    deltas = run_events(events, ev.TextDelta)
    assert len(deltas) == 5 and "".join(d.delta for d in deltas) == plain.text
    assert {(d.run_id, d.iteration) for d in deltas} == {("r1", 3)}


async def test_streamed_tool_call_deltas_assemble_to_the_plain_calls(openai_server: Any) -> None:
    def step() -> Any:
        return call_tools(tool_call("count", {"n": 12345}, id="call_a"),
                          tool_call("count", {"n": 678}, id="call_b"), text="checking")

    plain, streamed, events = await _both(openai_server, step, tools=[COUNT_SCHEMA])
    assert streamed.to_message() == plain.to_message()
    assert [(c.id, c.name, json.loads(c.arguments)) for c in streamed.tool_calls] == [
        ("call_a", "count", {"n": 12345}), ("call_b", "count", {"n": 678})]
    assert streamed.finish_reason == plain.finish_reason == "tool_calls"
    deltas = run_events(events, ev.ToolCallDelta)
    for index, call in enumerate(plain.tool_calls):
        mine = [d for d in deltas if d.index == index]
        assert len(mine) > 2 and "".join(d.arguments_delta for d in mine) == call.arguments
        assert all(d.name == "count" for d in mine)


async def test_stream_options_rejection_falls_back_and_is_remembered(openai_server: Any) -> None:
    openai_server.enqueue(reply("hi", reject_stream_options=True), reply("hi"), reply("again"))
    model = model_for(openai_server)
    req = ModelRequest(messages=[{"role": "user", "content": "x"}], stream=True)
    first = await model.request(req, lambda e: None)
    second = await model.request(req, lambda e: None)
    assert (first.text, second.text) == ("hi", "again")
    sent = [("stream_options" in r) for r in openai_server.requests]
    assert sent == [True, False, False]
    assert first.usage is None  # the server cannot report usage in streams: unknown, not zero


async def test_a_400_unrelated_to_stream_options_is_not_mistaken_for_it(openai_server: Any) -> None:
    # A fresh model cannot tell why a streamed request got a 400: it tries once without stream_options,
    # and since that fails too, reports the first error and keeps asking for usage.
    openai_server.enqueue(fault(400, message="bad messages"), fault(400, message="still bad"), reply("ok"))
    model = model_for(openai_server)
    req = ModelRequest(messages=[{"role": "user", "content": "x"}], stream=True)
    with pytest.raises(ModelError, match="bad messages"):
        await model.request(req, lambda e: None)
    assert (await model.request(req, lambda e: None)).text == "ok"
    assert ["stream_options" in r for r in openai_server.requests] == [True, False, True]
    # Once the server has accepted stream_options, a 400 fails at once.
    openai_server.enqueue(fault(400, message="bad again"), reply("unused"))
    with pytest.raises(ModelError, match="bad again"):
        await model.request(req, lambda e: None)
    assert len(openai_server.requests) == 4


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_usage_is_none_when_the_server_omits_it(openai_server: Any, stream: bool) -> None:
    openai_server.enqueue(reply("no usage here", usage=None))
    agent = ChatAgent(model=model_for(openai_server), stream=stream)
    result = await agent.arun("x")
    assert result.final_output == "no usage here"
    assert result.usage.requests == [None] and result.usage.total_tokens is None
    assert result.usage.describe() == "usage not reported by this model"


# --------------------------------------------------------------------------- wire formats of other servers

class RawServer:
    """Serves scripted raw HTTP answers: SSE chunk lists (optionally cut), or JSON errors."""

    def __init__(self) -> None:
        self.answers: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                answer = outer.answers.pop(0)
                if "status" in answer:
                    data = json.dumps(answer["body"]).encode()
                    self.send_response(answer["status"])
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")  # as real servers stream
                self.end_headers()
                self.close_connection = True

                def send(data: bytes) -> None:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()

                for i, chunk in enumerate(answer["chunks"]):
                    if i == answer.get("cut_after"):
                        self.connection.shutdown(2)  # the connection drops mid-stream
                        return
                    send(f"data: {json.dumps(chunk)}\n\n".encode())
                send(b"data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def raw_server() -> Iterator[RawServer]:
    server = RawServer()
    yield server
    server.stop()


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def llama_style_tool_chunks(name: str, arguments: str) -> list[dict[str, Any]]:
    """As llama-cpp-python streams a tool call: id and name repeated in every chunk."""
    pieces = [arguments[i:i + 2] for i in range(0, len(arguments), 2)] + [""]
    call = {"index": 0, "id": "call__0_x", "type": "function"}
    return ([chunk({"role": "assistant"})]
            + [chunk({"tool_calls": [{**call, "function": {"name": name, "arguments": p}}]}) for p in pieces]
            + [chunk({}, "tool_calls")])


async def test_llama_style_repeated_tool_names_assemble_once(raw_server: RawServer) -> None:
    raw_server.answers.append({"chunks": llama_style_tool_chunks("count", '{ "n": 42 }')})
    model = OpenAIModel("m", base_url=raw_server.base_url, api_key=SECRET, retry=FAST)
    events: list[ev.Event] = []
    response = await model.request(ModelRequest(messages=[{"role": "user", "content": "x"}], tools=[COUNT_SCHEMA],
                                                stream=True), events.append)
    assert [(c.id, c.name, json.loads(c.arguments)) for c in response.tool_calls] == [("call__0_x", "count", {"n": 42})]
    assert {d.name for d in run_events(events, ev.ToolCallDelta)} == {"count"}


async def test_a_connection_dropped_mid_stream_is_retried(raw_server: RawServer) -> None:
    words = [chunk({"role": "assistant"})] + [chunk({"content": w}) for w in ("a", " b", " c")] + [chunk({}, "stop")]
    raw_server.answers += [{"chunks": words, "cut_after": 2}, {"chunks": words}]
    model = OpenAIModel("m", base_url=raw_server.base_url, api_key=SECRET, retry=FAST)
    events: list[ev.Event] = []
    response = await model.request(ModelRequest(messages=[{"role": "user", "content": "x"}], stream=True),
                                   events.append)
    assert response.text == "a b c" and len(raw_server.requests) == 2
    retry_at = next(i for i, e in enumerate(events) if isinstance(e, ev.Retry))
    before = "".join(e.delta for e in events[:retry_at] if isinstance(e, ev.TextDelta))
    after = "".join(e.delta for e in events[retry_at:] if isinstance(e, ev.TextDelta))
    # Text streamed before the drop is void (a view restarts the iteration's text at the Retry event);
    # the assembled message holds only the successful attempt.
    assert (before, after) == ("a", "a b c")


async def test_an_exhausted_quota_is_not_retried(raw_server: RawServer) -> None:
    body = {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                      "code": "insufficient_quota"}}
    raw_server.answers += [{"status": 429, "body": body}, {"status": 429, "body": body}]
    model = OpenAIModel("m", base_url=raw_server.base_url, api_key=SECRET, retry=FAST)
    with pytest.raises(ModelError, match="quota") as info:
        await model.request(ModelRequest(messages=[{"role": "user", "content": "x"}]), lambda e: None)
    assert len(raw_server.requests) == 1 and info.value.status == 429 and not info.value.retryable


# --------------------------------------------------------------------------- tool_choice and clients

async def test_a_forced_tool_choice_applies_to_the_first_request_of_the_turn(openai_server: Any) -> None:
    openai_server.enqueue(call_tools(tool_call("count", {"n": 1})), reply("done"))
    agent = ChatAgent(model=model_for(openai_server), mode="auto", tools=[count])
    forced = {"type": "function", "function": {"name": "count"}}
    result = await agent.arun("x", model_settings={"tool_choice": forced})
    assert result.stop_reason == "completed" and invocations == [1]
    assert [r.get("tool_choice") for r in openai_server.requests] == [forced, "auto"]


async def test_tool_choice_is_dropped_when_no_tools_are_sent(openai_server: Any) -> None:
    openai_server.enqueue(reply("plain"))
    agent = ChatAgent(model=model_for(openai_server), mode="normal", tools=[count])
    assert await agent.chat_async("x", model_settings={"tool_choice": "required"}) == "plain"
    assert "tool_choice" not in openai_server.requests[0] and "tools" not in openai_server.requests[0]


def test_two_sync_runs_use_one_client_and_two_loops_get_their_own(openai_server: Any) -> None:
    openai_server.responder = lambda body: reply("ok")
    model = model_for(openai_server)
    agent = ChatAgent(model=model)
    assert agent.run("a").final_output == "ok"
    clients = list(model._clients.values())
    assert agent.run("b").final_output == "ok"
    assert list(model._clients.values()) == clients and len(clients) == 1

    seen: list[int] = []

    async def one() -> str:
        seen.append(id(model.client))
        return await ChatAgent(model=model).chat_async("c")

    assert asyncio.run(one()) == "ok" and asyncio.run(one()) == "ok"  # a client per loop, never shared
    assert len(openai_server.requests) == 4


def test_repr_hides_key_and_url_credentials() -> None:
    # URL user info is refused (issue #12): the error says how to pass it and quotes neither part.
    with pytest.raises(ValueError, match="must not contain credentials") as info:
        OpenAIModel("m", base_url="http://user:pw-SECRET123456@127.0.0.1:9/v1", api_key=SECRET)
    assert "pw-" not in str(info.value)
    assert_no_secret(str(info.value))
    model = OpenAIModel("m", base_url="http://127.0.0.1:9/v1", api_key=SECRET)
    assert_no_secret(repr(model))


# --------------------------------------------------------------------------- LocalModel over /v1/completions
# LocalModel(base_url=...) talks to an already running server instead of starting llama.cpp: here the
# scripted server, whose /v1/completions answers each request (routing choice, arguments, answer) in turn.

weather_calls: list[str] = []
forecast_calls: list[tuple[str, int]] = []


@tool
def get_weather(city: str) -> str:
    """Current weather for a city.

    Args:
        city: The city name.
    """
    weather_calls.append(city)
    return f"Sunny, 21 C in {city}"


@tool
def get_forecast(city: str, days: int) -> str:
    """Weather forecast for a city.

    Args:
        city: The city name.
        days: How many days ahead.
    """
    forecast_calls.append((city, days))
    return f"Rain for {days} days in {city}"


@pytest.fixture(autouse=True)
def _reset_tool_calls() -> None:
    weather_calls.clear()
    forecast_calls.clear()


def local_model_for(server: Any, **kw: Any) -> LocalModel:
    """LocalModel on an already running (here: scripted) server, as with an external llama.cpp server."""
    kw.setdefault("retry", FAST)
    return LocalModel(base_url=server.base_url, **kw)


def grammar_rules(grammar: str) -> dict[str, str]:
    """GBNF text as {rule name: body}."""
    rules = {}
    for line in grammar.strip().splitlines():
        name, sep, body = line.partition(" ::= ")
        assert sep, f"not a GBNF rule: {line!r}"
        rules[name.strip()] = body.strip()
    return rules


def literals(body: str) -> list[str]:
    """The quoted literals of a GBNF rule body, unescaped."""
    return [json.loads(f'"{m}"') for m in re.findall(r'"((?:[^"\\]|\\.)*)"', body)]


async def test_local_model_prompts_keep_apostrophes_as_typed(openai_server: Any) -> None:
    openai_server.enqueue(reply("It's Rex, Bob's dog."))
    agent = ChatAgent(model=local_model_for(openai_server), mode="normal")
    assert await agent.chat_async("What's the name of Bob's dog?") == "It's Rex, Bob's dog."
    (sent,) = openai_server.requests
    assert sent["_endpoint"] == "completions" and "messages" not in sent  # never the chat templates
    assert "<|im_start|>user\nWhat's the name of Bob's dog?<|im_end|>\n" in sent["prompt"]
    assert "&#39;" not in sent["prompt"] and "&#x27;" not in sent["prompt"]
    assert sent["prompt"].endswith("<|im_start|>assistant\n")
    assert "<|im_end|>" in sent["stop"]


async def test_local_model_plain_chat_leaves_earlier_turns_out_of_the_prompt(openai_server: Any) -> None:
    openai_server.enqueue(reply("Paris."), reply("About 2 million."))
    agent = ChatAgent(model=local_model_for(openai_server), mode="normal", tools=[get_weather])
    assert await agent.chat_async("Capital of France?") == "Paris."
    assert await agent.chat_async("How many people live there?") == "About 2 million."
    assert len(openai_server.requests) == 2  # NORMAL mode offers no tools: no routing request
    prompt = openai_server.requests[1]["prompt"]
    # The 135M model repeated earlier answers it saw: its prompt holds the current question only.
    assert "Capital of France?" not in prompt and "Paris." not in prompt
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith("<|im_start|>user\nHow many people live there?<|im_end|>\n<|im_start|>assistant\n")
    assert "grammar" not in openai_server.requests[1]
    assert agent.model.name == "local:llama.cpp"
    assert [m["role"] for m in agent.messages] == ["user", "assistant", "user", "assistant"]  # history is kept


async def test_local_model_history_turns_puts_earlier_questions_and_answers_back_in_order(openai_server: Any) -> None:
    openai_server.enqueue(reply("Paris."), reply("About 2 million."))
    agent = ChatAgent(model=local_model_for(openai_server, history_turns=1), mode="normal")
    await agent.chat_async("Capital of France?")
    await agent.chat_async("How many people live there?")
    prompt = openai_server.requests[1]["prompt"]
    turns = [
        "<|im_start|>system\n",
        "<|im_start|>user\nCapital of France?<|im_end|>",
        "<|im_start|>assistant\nParis.<|im_end|>",
        "<|im_start|>user\nHow many people live there?<|im_end|>\n<|im_start|>assistant\n",
    ]
    positions = [prompt.find(t) for t in turns]
    assert -1 not in positions and positions == sorted(positions), positions


async def test_local_model_an_answer_the_tools_did_not_say_is_replaced_by_the_results(openai_server: Any) -> None:
    # After a weather lookup for Rome, the model "answers" with an earlier turn's fact: not kept.
    openai_server.enqueue(reply('{"city": "Rome"}'), reply("The capital of France is Paris."))
    agent = ChatAgent(model=local_model_for(openai_server), mode="auto", tools=[get_weather])
    result = await agent.arun("What's the weather in Rome?")
    assert result.final_output == "Get weather (Rome): Sunny, 21 C in Rome."
    openai_server.enqueue(reply('{"city": "Oslo"}'), reply("It is 21 C and sunny in Oslo."))  # grounded: kept
    assert (await agent.arun("Weather in Oslo?")).final_output == "It is 21 C and sunny in Oslo."


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_local_model_a_replaced_answer_says_so_in_the_panel_the_text_view_and_a_cassette(
    openai_server: Any, tmp_path: Any, stream: bool
) -> None:
    """The answer written from the results is marked where it is shown (final view, live iteration, text view),
    with the reason; a cassette keeps the note for its replays; a kept answer has none."""
    import io

    from menglong_magic.models import Recorder, Replay
    from menglong_magic.ui.html import final_html, iteration_html
    from menglong_magic.ui.state import RunViewModel
    from menglong_magic.ui.textview import TextView

    cassette = tmp_path / "local.jsonl"
    openai_server.enqueue(reply('{"city": "Rome"}'), reply("The capital of France is Paris."),  # not grounded
                          reply('{"city": "Oslo"}'), reply(""),  # no answer at all
                          reply('{"city": "Bergen"}'), reply("It is 21 C and sunny in Bergen."))  # grounded
    agent = ChatAgent(model=Recorder(local_model_for(openai_server), cassette), mode="auto", tools=[get_weather],
                      stream=stream)
    notes = []
    for question, expected in [
        ("What's the weather in Rome?", "answer “The capital of France is Paris.” did not match them (the name"),
        ("Weather in Oslo?", "the model gave none"),
        ("Weather in Bergen?", None),
    ]:
        vm, printed = RunViewModel("agent"), io.StringIO()
        view = TextView(stream=printed)
        events: list[ev.Event] = []

        def seen(event: ev.Event, vm: RunViewModel = vm, view: TextView = view,
                 events: list[ev.Event] = events) -> None:
            events.append(event)
            vm.apply(event)
            view.handle(event)

        result = await agent.arun(question, on_event=seen)
        view.finish()
        received = [e for e in events if isinstance(e, ev.ModelResponseReceived)]
        html, text = final_html(vm), printed.getvalue()
        if expected is None:
            assert received[-1].note is None and "mm-note" not in html and "ⓘ" not in text
            assert result.final_output == "It is 21 C and sunny in Bergen."
        else:
            note = received[-1].note
            assert note is not None and note.startswith("answer assembled from the tool results: ") and expected in note
            assert result.final_output.startswith("Get weather (")
            assert html.count('class="mm-note"') == 1  # under the answer, not again in its (collapsed) iteration
            live = iteration_html(vm, vm.iterations[-1], True)  # what the live panel shows while it runs
            assert 'class="mm-note"' in live
            assert "mm-icon-info" in html and "ⓘ" not in html  # an SVG: no font on the machine has U+24D8
            assert f"ⓘ {note}" in text and text.index(f"ⓘ {note}") > text.index("Get weather (")
        notes.append(received[-1].note)
    # Replayed from the cassette: the same answers, the same notes.
    replayed = ChatAgent(model=Replay(cassette), mode="auto", tools=[get_weather], stream=stream)
    again = []
    for question in ["What's the weather in Rome?", "Weather in Oslo?", "Weather in Bergen?"]:
        events = []
        await replayed.arun(question, on_event=events.append)
        again.append([e for e in events if isinstance(e, ev.ModelResponseReceived)][-1].note)
    assert again == notes


async def test_local_model_a_question_matching_no_tool_is_answered_directly(openai_server: Any) -> None:
    openai_server.enqueue(reply("Hello! How can I help?", usage=(12, 5)))
    agent = ChatAgent(model=local_model_for(openai_server), mode="auto", tools=[get_weather, count])
    result = await agent.arun("Hello there")
    assert result.final_output == "Hello! How can I help?" and result.iterations_used == 1
    assert weather_calls == [] and invocations == []
    (sent,) = openai_server.requests
    assert "grammar" not in sent
    assert (result.usage.input_tokens, result.usage.output_tokens) == (12, 5)


async def test_a_decision_made_without_generating_costs_zero_tokens_not_unknown(openai_server: Any) -> None:
    """A tool without parameters that the question names is called without asking the model: that step used no
    tokens (it said "usage of 1 request(s) not reported by this model" before), and the run's usage is known."""

    @tool
    def last_error() -> str:
        """The last error of the notebook."""
        return "KeyError: 'pear'"

    openai_server.enqueue(reply("The last error was KeyError: 'pear'.", usage=(30, 9)))
    agent = ChatAgent(model=local_model_for(openai_server), mode="auto", tools=[last_error])
    result = await agent.arun("What was the last error?")
    assert [c.name for c in result.tool_calls] == ["last_error"] and len(openai_server.requests) == 1
    assert result.iterations[0].usage is not None and result.iterations[0].usage.total_tokens == 0
    assert (result.usage.input_tokens, result.usage.output_tokens) == (30, 9)
    assert result.usage.unknown_requests == 0 and "not reported" not in result.usage.describe()


async def test_local_model_fills_arguments_under_a_grammar_and_answers_from_the_result(openai_server: Any) -> None:
    openai_server.enqueue(reply('{"city": "Paris"}', usage=(40, 6)), reply("It's sunny, 21 C in Paris.", usage=(60, 7)))
    agent = ChatAgent(model=local_model_for(openai_server), mode="auto", tools=[get_weather])
    result = await agent.arun("What's the weather in Paris?")
    assert result.final_output == "It's sunny, 21 C in Paris." and result.stop_reason == "completed"
    assert weather_calls == ["Paris"] and result.iterations_used == 2
    fill, answer = openai_server.requests

    # The arguments request: a grammar allowing exactly {"city": <a run of the question's words>}.
    rules = grammar_rules(fill["grammar"])
    assert rules["root"] == "args"
    assert rules["args"] == '"{" "\\"city\\": " copied-string "}"'
    words = [literals(body)[0] for name, body in rules.items() if name.startswith("cw-")]
    assert words == ["What's", "the", "weather", "in", "Paris"]  # only words of the question, verbatim
    assert "get_weather" in fill["prompt"] and "What's the weather in Paris?" in fill["prompt"]
    assert "&#39;" not in fill["prompt"]

    # The answer request: no grammar, the question and the tool's result quoted in the prompt.
    assert "grammar" not in answer
    assert '- get_weather({"city": "Paris"}): Sunny, 21 C in Paris' in answer["prompt"]
    assert "What's the weather in Paris?" in answer["prompt"]
    assert "\n\n" in answer["stop"]  # short answers: stop at a blank line
    # The agent's own history keeps the standard chat form; usage counts both requests.
    assert [m["role"] for m in agent.messages] == ["user", "assistant", "tool", "assistant"]
    assert (result.usage.input_tokens, result.usage.output_tokens) == (100, 13)


async def test_local_model_a_tie_between_tools_is_chosen_under_a_names_only_grammar(openai_server: Any) -> None:
    openai_server.enqueue(reply("get_forecast"), reply('{"city": "Oslo", "days": 3}'))
    agent = ChatAgent(model=local_model_for(openai_server), mode="auto", tools=[get_weather, get_forecast])
    # "weather" is all the question shares with either tool; one iteration: the first tool round only.
    result = await agent.arun("Weather in Oslo in 3 weeks", max_iterations=1)
    assert result.stop_reason == "max_iterations"
    assert forecast_calls == [("Oslo", 3)] and weather_calls == []  # the model's choice was called
    choose, fill = openai_server.requests
    assert grammar_rules(choose["grammar"]) == {"root": '"get_weather" | "get_forecast"'}
    rules = grammar_rules(fill["grammar"])
    assert literals(rules["args"]) == ["{", '"city": ', ', "days": ', "3", "}"]  # the only number in the question


async def test_local_model_a_named_tool_choice_forces_that_tool(openai_server: Any) -> None:
    openai_server.enqueue(reply('{"n": 9}'), reply("Counted 9."))
    agent = ChatAgent(model=local_model_for(openai_server), mode="auto", tools=[get_weather, count])
    forced = {"type": "function", "function": {"name": "count"}}
    result = await agent.arun("do it for 9", model_settings={"tool_choice": forced})  # no word in common with count
    assert result.final_output == "Counted 9." and invocations == [9] and weather_calls == []
    assert literals(grammar_rules(openai_server.requests[0]["grammar"])["args"]) == ["{", '"n": ', "9", "}"]
    assert "grammar" not in openai_server.requests[1]  # the forced choice applies to the first request only


async def test_local_model_streamed_answer_assembles(openai_server: Any) -> None:
    openai_server.enqueue(reply('{"city": "Rome"}'), reply("It's sunny and 21 C in Rome today."))
    agent = ChatAgent(model=local_model_for(openai_server), mode="auto", tools=[get_weather], stream=True)
    events: list[ev.Event] = []
    result = await agent.arun("What's the weather in Rome?", on_event=events.append)
    assert result.final_output == "It's sunny and 21 C in Rome today." and weather_calls == ["Rome"]
    deltas = [e.delta for e in run_events(events, ev.TextDelta)]
    # An answer after tools is checked against the results before anyone sees it: it arrives whole.
    assert deltas == [result.final_output]
    fill, answer = openai_server.requests
    assert not fill.get("stream") and not answer.get("stream")
    openai_server.enqueue(reply("Hello! How can I help you today?", usage=None))
    plain = await agent.arun("Hello there", on_event=events.append)  # no tool: streamed token by token
    assert openai_server.requests[-1]["stream"] is True and "stream_options" not in openai_server.requests[-1]
    assert plain.iterations[-1].usage is None  # llama.cpp's streams report no usage: unknown, never zero


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("kind", ["503", "disconnect", "timeout", "malformed"])
async def test_local_model_transient_failures_are_retried(openai_server: Any, kind: str, stream: bool) -> None:
    failure = {"503": lambda: fault(503), "disconnect": lambda: disconnect(),
               "timeout": lambda: reply("too late", delay=2.0), "malformed": lambda: malformed()}[kind]  # fmt: skip
    # One failure while filling the arguments, one while answering.
    openai_server.enqueue(failure(), reply('{"city": "Lima"}'), failure(), reply("Sunny, 21 C in Lima."))
    timeout = 0.8 if kind == "timeout" else 30.0  # the client gives up on the 2 s reply; a busy machine is fine
    agent = ChatAgent(model=local_model_for(openai_server, timeout=timeout), mode="auto", tools=[get_weather],
                      stream=stream)  # fmt: skip
    events: list[ev.Event] = []
    result = await agent.arun("weather in Lima", on_event=events.append)
    assert result.stop_reason == "completed" and result.final_output == "Sunny, 21 C in Lima."
    assert weather_calls == ["Lima"]  # the tool ran once
    assert len(openai_server.requests) == 4
    first, fill, second, answer = openai_server.requests
    assert first == fill and second == answer  # the retried request is the same request
    assert [r.attempt for r in run_events(events, ev.Retry)] == [1, 1]
    if stream:  # a Retry voids what was streamed before it; the deltas after the last one are the answer
        last_retry = max(i for i, e in enumerate(events) if isinstance(e, ev.Retry))
        assert "".join(e.delta for e in run_events(events[last_retry:], ev.TextDelta)) == "Sunny, 21 C in Lima."
        # An answer after tools is not streamed (it is checked against the results first): the broken
        # response showed nothing, and nothing needs voiding.
        assert not run_events(events[:last_retry], ev.TextDelta)


async def test_local_model_a_failure_chains_no_sdk_exception_and_quotes_no_key(openai_server: Any) -> None:
    # A careless server echoes the request headers (Authorization included) in its error.
    openai_server.enqueue(fault(400, echo_headers=True))
    model = local_model_for(openai_server, api_key=SECRET)
    request = ModelRequest(messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(ModelError) as info:
        await model.request(request, lambda e: None)
    error = info.value
    assert len(openai_server.requests) == 1 and error.status == 400 and not error.retryable
    assert error.__cause__ is None and error.__context__ is None  # the SDK exception (and its response) is gone
    assert_no_secret(str(error), repr(error), error.args)


async def test_local_model_retries_are_bounded(openai_server: Any) -> None:
    openai_server.enqueue(*(fault(502) for _ in range(3)))
    model = local_model_for(openai_server, retry=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02))
    events: list[ev.Event] = []
    with pytest.raises(ModelError, match="after 3 attempts") as info:
        await model.request(ModelRequest(messages=[{"role": "user", "content": "hi"}]), events.append)
    assert len(openai_server.requests) == 3 and info.value.status == 502
    assert [e.attempt for e in run_events(events, ev.Retry)] == [1, 2]
    assert info.value.__context__ is None
