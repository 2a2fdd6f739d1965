"""The two HTTP libraries under the SDK (aiohttp, the default where the SDK has its transport, and httpx): the same
answers, the same errors named for what happened, the same congestion signals, and no client left open when a
model is collected while its loop runs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest

from menglong_magic import ChatAgent
from menglong_magic.loopshare import loop_share
from menglong_magic.models import ModelError, OpenAIModel, openai_compat
from menglong_magic.models.base import ModelRequest, current_gate
from menglong_magic.models.openai_compat import RetryPolicy
from menglong_magic.testing import disconnect, fault, free_port, reply
from menglong_magic.testing.server import ScriptedOpenAIServer

AIOHTTP = openai_compat._has_aiohttp_transport()
ONCE = RetryPolicy(max_attempts=1)


def ask(stream: bool = False) -> ModelRequest:
    return ModelRequest(messages=[{"role": "user", "content": "hi"}], stream=stream)


class RecordingGate:
    """What the model tells an adaptive limiter about each failed attempt."""

    def __init__(self) -> None:
        self.failures: list[tuple[int | None, float | None, bool]] = []

    def attempt_failed(self, status: int | None, retry_after: float | None, *, refused: bool = False) -> None:
        self.failures.append((status, retry_after, refused))

    @contextlib.asynccontextmanager
    async def released(self) -> AsyncIterator[None]:
        yield


@contextlib.contextmanager
def gate() -> Iterator[RecordingGate]:
    recording = RecordingGate()
    token = current_gate.set(recording)  # type: ignore[arg-type]
    try:
        yield recording
    finally:
        current_gate.reset(token)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_answers_and_retries_are_the_same(openai_server: ScriptedOpenAIServer, library: str,
                                                stream: bool) -> None:
    model = OpenAIModel("m", base_url=openai_server.base_url, http_library=library,  # type: ignore[arg-type]
                        retry=RetryPolicy(max_attempts=3, base_delay=0.01))
    assert model.http_library == library
    openai_server.enqueue(fault(429, retry_after=0.05), disconnect(), reply("héllo 👋 wörld"))
    with gate() as recording:
        response = await model.request(ask(stream), lambda event: None)
    assert response.text == "héllo 👋 wörld"
    assert recording.failures == [(429, 0.05, False), (None, None, False)]
    assert len(openai_server.requests) == 3


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_closed_connection_is_named_a_connection_failure_not_a_timeout(
    openai_server: ScriptedOpenAIServer, library: str, stream: bool
) -> None:
    """The SDK's aiohttp transport maps every aiohttp connection error to a connect *timeout*; the root cause
    names it: the server closing the connection, a refused connection, and a real read timeout."""
    model = OpenAIModel("m", base_url=openai_server.base_url, http_library=library,  # type: ignore[arg-type]
                        retry=ONCE, timeout=0.5)
    openai_server.enqueue(disconnect(), reply("late", delay=3.0))
    with pytest.raises(ModelError) as closed:
        await model.request(ask(stream), lambda event: None)
    assert "connection to http://127.0.0.1" in str(closed.value) and "failed" in str(closed.value)
    assert "timed out" not in str(closed.value) and closed.value.retryable
    with pytest.raises(ModelError) as slow:
        await model.request(ask(stream), lambda event: None)
    assert "timed out after 0.5s" in str(slow.value) and slow.value.retryable

    nobody = OpenAIModel("m", base_url=f"http://127.0.0.1:{free_port()}/v1", http_library=library,  # type: ignore[arg-type]
                         retry=ONCE, timeout=5)
    with gate() as recording, pytest.raises(ModelError) as refused:
        await nobody.request(ask(stream), lambda event: None)
    assert "failed" in str(refused.value) and "timed out" not in str(refused.value)
    assert recording.failures == [(None, None, True)]  # a refused connection is a congestion signal


class ReportedErrors:
    """The loop's exception handler, recording what is reported (aiohttp reports an unclosed session there)."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.messages.append(str(context.get("message")))


@pytest.mark.parametrize("cycle", [False, True], ids=["freed", "in-a-cycle"])
async def test_a_collected_model_closes_its_clients_on_the_loop(openai_server: ScriptedOpenAIServer, library: str,
                                                                cycle: bool) -> None:
    """A notebook cell that makes a new agent drops the old one while the kernel's loop runs: its clients are
    closed on that loop, and nothing reports an unclosed session."""
    loop = asyncio.get_running_loop()
    reported = ReportedErrors()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(reported)
    try:
        openai_server.enqueue(reply("a"), reply("b"))
        model = OpenAIModel("m", base_url=openai_server.base_url, http_library=library)  # type: ignore[arg-type]
        if cycle:
            model.itself = model  # type: ignore[attr-defined]
        await asyncio.gather(*(model.request(ask(), lambda event: None) for _ in range(2)))
        clients = [weakref.ref(c) for c in model._clients.get().clients]  # nothing here keeps them alive
        assert clients and not any(c().is_closed() for c in clients)  # type: ignore[union-attr]
        del model
        gc.collect()
        for _ in range(100):
            await asyncio.sleep(0.01)
            gc.collect()
            if all(c() is None or c().is_closed() for c in clients):  # type: ignore[union-attr]
                break
        assert all(c() is None or c().is_closed() for c in clients)  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert reported.messages == []


def test_the_library_is_chosen_by_argument_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    preferred = "aiohttp" if AIOHTTP else "httpx"  # aiohttp where the SDK has its transport
    monkeypatch.delenv("MENGLONG_HTTP_LIBRARY", raising=False)
    assert OpenAIModel("m").http_library == preferred
    assert OpenAIModel("m", http_library="httpx").http_library == "httpx"
    monkeypatch.setenv("MENGLONG_HTTP_LIBRARY", "httpx")
    assert OpenAIModel("m").http_library == "httpx"
    assert OpenAIModel("m", http_library="aiohttp").http_library == preferred
    options, _, _ = OpenAIModel("m", http_library="aiohttp").rebuild_options()
    assert options["http_library"] == preferred  # a Ray worker's model uses the same library
    with pytest.raises(ValueError, match="'aiohttp' or 'httpx', not 'requests'"):
        OpenAIModel("m", http_library="requests")  # type: ignore[arg-type]


async def test_an_sdk_without_its_aiohttp_extra_falls_back_to_httpx(openai_server: ScriptedOpenAIServer,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    class Missing:
        def __init__(self, **_: Any) -> None:
            raise RuntimeError("To use the aiohttp client you must have installed the package with the `aiohttp` extra")

    monkeypatch.setattr(openai, "DefaultAioHttpClient", Missing, raising=False)
    openai_compat._has_aiohttp_transport.cache_clear()
    try:
        model = OpenAIModel("m", base_url=openai_server.base_url)
        assert model.http_library == "httpx"
        openai_server.enqueue(reply("fine"))
        assert (await model.request(ask(), lambda event: None)).text == "fine"
        await model.aclose()
    finally:
        monkeypatch.undo()
        openai_compat._has_aiohttp_transport.cache_clear()


class ForwardProxy:
    """A plain-HTTP forward proxy on 127.0.0.1 that sends every request to one server (it resolves no names)."""

    def __init__(self, target: str) -> None:
        import http.server
        import threading
        import urllib.parse

        self.seen: list[str] = []
        proxy = self
        origin = urllib.parse.urlsplit(target)

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                import http.client

                proxy.seen.append(self.path)  # a proxy is sent the absolute URL
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                path = urllib.parse.urlsplit(self.path).path
                upstream = http.client.HTTPConnection(origin.hostname, origin.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "proxy-connection")}
                upstream.request("POST", path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_a_remote_server_is_reached_through_the_environments_proxy_a_local_one_directly(
    openai_server: ScriptedOpenAIServer, library: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = ForwardProxy(openai_server.base_url)
    try:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        openai_server.enqueue(reply("through the proxy"), reply("direct"))
        remote = OpenAIModel("m", base_url="http://models.example.test/v1", http_library=library,  # type: ignore[arg-type]
                             retry=ONCE)
        assert (await remote.request(ask(), lambda event: None)).text == "through the proxy"
        assert proxy.seen == ["http://models.example.test/v1/chat/completions"]
        local = OpenAIModel("m", base_url=openai_server.base_url, http_library=library,  # type: ignore[arg-type]
                            retry=ONCE)
        assert (await local.request(ask(), lambda event: None)).text == "direct"
        assert len(proxy.seen) == 1  # a loopback server is never sent through a proxy
        await remote.aclose()
        await local.aclose()
    finally:
        proxy.close()


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_run_takes_a_turn_before_each_request_and_one_to_read_each_answer(
        openai_server: ScriptedOpenAIServer, library: str, stream: bool) -> None:
    model = OpenAIModel("m", base_url=openai_server.base_url, http_library=library)  # type: ignore[arg-type]
    openai_server.enqueue(reply("one"), reply("two"))
    share = loop_share()
    before = share.turns
    first = await model.request(ask(stream), lambda e: None)
    assert (first.text, share.turns - before) == ("one", 1)  # the answer's headers in: reading it takes a turn
    agent = ChatAgent(model=model, stream=stream)
    assert (await agent.chat_async("again")) == "two"
    assert share.turns - before == 3  # and the run takes one before its request (and before a limiter slot)
    await model.aclose()


async def test_requests_started_together_take_turns(openai_server: ScriptedOpenAIServer, library: str) -> None:
    model = OpenAIModel("m", base_url=openai_server.base_url, http_library=library)  # type: ignore[arg-type]
    openai_server.enqueue(*(reply(f"answer {i}") for i in range(20)))
    agent = ChatAgent(model=model)
    share = loop_share()
    share.budget = 0.0  # any turn after the first of an iteration waits for a later one
    answers = await asyncio.gather(*(agent.fork().chat_async("hi") for _ in range(20)))
    assert sorted(answers) == sorted(f"answer {i}" for i in range(20))
    assert share.turns == 40
    assert share.deferred >= 19  # the 20 started in one iteration: one went on, the others in later ones
    await model.aclose()
