"""A scripted OpenAI-compatible chat completions server on 127.0.0.1, with fault injection.

It also serves the legacy text completions endpoint (``/v1/completions``, which llama.cpp's server and
:class:`~menglong_magic.models.local.LocalModel` use) from the same script.

Standard library only. Used by the test suite, the benchmarks and the demo notebooks so that the real
``openai`` client is exercised over real HTTP without any network.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class ToolCallSpec:
    name: str
    arguments: dict[str, Any] | str
    id: str | None = None


@dataclass
class Reply:
    text: str | None = None
    tool_calls: list[ToolCallSpec] = field(default_factory=list)
    usage: tuple[int, int] | str | None = "auto"
    delay: float = 0.0
    chunk_delay: float = 0.0
    reject_stream_options: bool = False


@dataclass
class Fault:
    status: int
    retry_after: float | None = None
    message: str = "injected fault"
    delay: float = 0.0
    echo_headers: bool = False


@dataclass
class Disconnect:
    delay: float = 0.0


@dataclass
class Malformed:
    """HTTP 200 whose JSON body (or, for a streamed request, one SSE chunk) is cut off or not JSON."""

    body: str | None = None
    chunks_before: int = 2
    delay: float = 0.0


Step = Reply | Fault | Disconnect | Malformed | Callable[[dict[str, Any]], Any]
_STEP_TYPES = (Reply, Fault, Disconnect, Malformed)


def reply(
    text: str,
    *,
    usage: tuple[int, int] | str | None = "auto",
    delay: float = 0.0,
    chunk_delay: float = 0.0,
    reject_stream_options: bool = False,
) -> Reply:
    """An assistant text answer. ``usage=None`` omits the usage field (unknown usage)."""
    return Reply(
        text=text, usage=usage, delay=delay, chunk_delay=chunk_delay, reject_stream_options=reject_stream_options
    )


def tool_call(name: str, arguments: dict[str, Any] | str | None = None, id: str | None = None) -> ToolCallSpec:
    """A tool call for :func:`call_tools`; a str ``arguments`` is sent verbatim."""
    return ToolCallSpec(name, {} if arguments is None else arguments, id)


def call_tools(
    *calls: ToolCallSpec,
    text: str | None = None,
    usage: tuple[int, int] | str | None = "auto",
    delay: float = 0.0,
    chunk_delay: float = 0.0,
    reject_stream_options: bool = False,
) -> Reply:
    """An assistant message asking for tool calls."""
    return Reply(
        text=text,
        tool_calls=list(calls),
        usage=usage,
        delay=delay,
        chunk_delay=chunk_delay,
        reject_stream_options=reject_stream_options,
    )


def fault(
    status: int,
    *,
    retry_after: float | None = None,
    message: str = "injected fault",
    delay: float = 0.0,
    echo_headers: bool = False,
) -> Fault:
    """An HTTP error with an OpenAI-style error body (and optional Retry-After).

    ``echo_headers=True`` plays a careless server: the error message quotes every request header verbatim
    (``Authorization`` included), and the response repeats the ``Authorization`` header as
    ``X-Echo-Authorization`` (which the SDK logs at DEBUG).
    """
    return Fault(status, retry_after, message, delay, echo_headers)


def malformed(body: str | None = None, *, chunks_before: int = 2, delay: float = 0.0) -> Malformed:
    """HTTP 200 with a broken body: by default a chat completion's JSON cut off mid-string.

    For a streamed request, ``chunks_before`` valid text chunks are sent, then one ``data:`` line with
    ``body`` (default: a chunk cut off mid-string), then ``[DONE]``. ``body`` replaces the broken text
    (e.g. ``"<html>bad gateway</html>"``); the response keeps a correct Content-Length, so only the JSON
    is wrong, not the HTTP framing.
    """
    return Malformed(body, chunks_before, delay)


def disconnect(delay: float = 0.0) -> Disconnect:
    """Close the connection without answering."""
    return Disconnect(delay)


def tool_then_answer_responder(
    tool_name: str, arguments: dict[str, Any] | str, answer_text: str = "done", delay: float = 0.0
) -> Callable[[dict[str, Any]], Reply]:
    """Call ``tool_name`` when the last message is the user's; answer once a tool result is in."""

    def respond(body: dict[str, Any]) -> Reply:
        last = body["messages"][-1]
        if last.get("role") == "user":
            return call_tools(tool_call(tool_name, arguments), delay=delay)
        return reply(answer_text, delay=delay)

    return respond


def echo_responder(delay: float = 0.0) -> Callable[[dict[str, Any]], Reply]:
    """Answer "echo: <last user message>"."""

    def respond(body: dict[str, Any]) -> Reply:
        user = [m for m in body["messages"] if m.get("role") == "user"]
        return reply(f"echo: {user[-1]['content'] if user else ''}", delay=delay)

    return respond


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms delayed-ACK stalls
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._send_json(200, {"object": "list", "data": [{"id": "scripted", "object": "model", "owned_by": "x"}]})
        else:
            self._send_json(404, {"error": {"message": "not found", "type": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        path = self.path.rstrip("/")
        if not path.endswith("/completions"):  # /chat/completions, or the legacy /completions (llama.cpp)
            self._send_json(404, {"error": {"message": "not found", "type": "not_found"}})
            return
        owner = self.server.owner
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._send_json(400, {"error": {"message": "invalid JSON", "type": "invalid_request_error"}})
            return
        if not path.endswith("/chat/completions") and isinstance(body, dict):
            body["_endpoint"] = "completions"  # recorded with the request; steps answer as text completions
        authorization = self.headers.get("Authorization")
        headers = {k: ("<redacted>" if k.lower() == "authorization" else v) for k, v in self.headers.items()}
        owner._enter(body, headers, authorization)
        try:
            if owner._over_rate_limit():
                self._answer(body, Fault(429, owner.rate_limit_retry_after, "rate limit: too many concurrent requests"))
                return
            if owner.reject_response_format and "response_format" in body:  # like servers without JSON mode
                self._send_json(400, {"error": {"message": "response_format is not supported by this server",
                                                "type": "invalid_request_error", "param": "response_format"}})
                return
            if owner.require_authorization is not None and authorization != owner.require_authorization:
                self._send_json(401, {"error": {"message": "wrong or missing Authorization header",
                                                "type": "invalid_request_error", "code": "invalid_api_key"}})
                return
            step = owner._next_step(body)
            while callable(step) and not isinstance(step, _STEP_TYPES):
                step = step(body)
            self._answer(body, step)
        finally:
            owner._leave()

    def _answer(self, body: dict[str, Any], step: Any) -> None:
        if getattr(step, "delay", 0):
            time.sleep(step.delay)
        if isinstance(step, Disconnect):
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if isinstance(step, Fault):
            headers = {"Retry-After": f"{step.retry_after:g}"} if step.retry_after is not None else {}
            message = step.message
            if step.echo_headers:  # a careless server: quotes what it was sent, credentials included
                sent = "; ".join(f"{k}: {v}" for k, v in self.headers.items())
                message = f"{message} (request headers: {sent})"
                if self.headers.get("Authorization"):
                    headers["X-Echo-Authorization"] = self.headers["Authorization"]
            kind = (
                "rate_limit_error"
                if step.status == 429
                else "server_error"
                if step.status >= 500
                else "invalid_request_error"
            )
            self._send_json(
                step.status, {"error": {"message": message, "type": kind, "code": str(step.status)}}, headers
            )
            return
        if isinstance(step, Malformed):
            self._malformed(body, step)
            return
        if not isinstance(step, Reply):
            self._send_json(500, {"error": {"message": f"bad scripted step {step!r}", "type": "server_error"}})
            return
        if body.get("stream") and step.reject_stream_options and "stream_options" in body:
            self._send_json(
                400, {"error": {"message": "stream_options not supported", "type": "invalid_request_error"}}
            )
            return
        owner = self.server.owner
        calls = [
            {
                "id": c.id or owner._new_call_id(),
                "type": "function",
                "function": {
                    "name": c.name,
                    "arguments": c.arguments if isinstance(c.arguments, str) else json.dumps(c.arguments),
                },
            }
            for c in step.tool_calls
        ]
        usage = step.usage
        if usage == "auto":
            usage = (10, len((step.text or "").split()) + 5 * len(calls))
        usage_obj = (
            None
            if usage is None
            else {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": usage[0] + usage[1]}
        )
        finish = "tool_calls" if calls else "stop"
        base = {
            "id": f"chatcmpl-{owner._new_call_id()}",
            "created": int(time.time()),
            "model": body.get("model", "scripted"),
        }
        if body.get("_endpoint") == "completions":
            self._answer_completion(body, base, step, usage_obj)
            return
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(base, step, calls, finish, usage_obj if include_usage else None)
            return
        message: dict[str, Any] = {"role": "assistant", "content": step.text}
        if calls:
            message["tool_calls"] = calls
        payload = {
            **base,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        }
        if usage_obj is not None:
            payload["usage"] = usage_obj
        self._send_json(200, payload)

    def _answer_completion(
        self, body: dict[str, Any], base: dict[str, Any], step: Reply, usage: dict[str, int] | None
    ) -> None:
        """A ``/completions`` answer: ``choices[0].text`` (whole, or streamed word by word)."""
        if step.tool_calls:
            error = {"message": "a /completions step cannot call tools", "type": "server_error"}
            self._send_json(500, {"error": error})
            return
        base = {**base, "id": "cmpl-" + base["id"].removeprefix("chatcmpl-"), "object": "text_completion"}
        text = step.text or ""
        if not body.get("stream"):
            payload = {**base, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}]}
            if usage is not None:
                payload["usage"] = usage
            self._send_json(200, payload)
            return
        self._begin_event_stream()

        def chunk(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
            self.wfile.write(f"data: {json.dumps({**base, 'choices': choices, **(extra or {})})}\n\n".encode())
            self.wfile.flush()
            if step.chunk_delay:
                time.sleep(step.chunk_delay)

        for i, word in enumerate(text.split(" ") if text else ()):
            chunk([{"index": 0, "text": word if i == 0 else " " + word, "logprobs": None, "finish_reason": None}])
        chunk([{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}])
        if usage is not None and (body.get("stream_options") or {}).get("include_usage"):
            chunk([], {"usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _begin_event_stream(self) -> None:
        """A 200 server-sent-event response; the connection closes after it."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _send_raw_json(self, data: bytes) -> None:
        """A 200 ``application/json`` response with exactly these bytes (malformed bodies included)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _malformed(self, body: dict[str, Any], step: Malformed) -> None:
        owner = self.server.owner
        base = {"id": f"chatcmpl-{owner._new_call_id()}", "created": int(time.time()),
                "model": body.get("model", "scripted")}
        if body.get("_endpoint") == "completions":
            self._malformed_completion(body, step, base)
            return
        if not body.get("stream"):
            whole = json.dumps({**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "finish_reason": "stop"}]})
            self._send_raw_json((step.body if step.body is not None else whole[: whole.index("Hello") + 3]).encode())
            return
        self._begin_event_stream()
        for i in range(step.chunks_before):
            payload = {**base, "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": {"content": f"part{i} "}, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
        whole = json.dumps({**base, "object": "chat.completion.chunk",
                            "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]})
        broken = step.body if step.body is not None else whole[: whole.index("Hello") + 3]
        self.wfile.write(f"data: {broken}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _malformed_completion(self, body: dict[str, Any], step: Malformed, base: dict[str, Any]) -> None:
        base = {**base, "object": "text_completion"}

        def text_choice(text: str, finish: str | None) -> list[dict[str, Any]]:
            return [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]

        whole = json.dumps({**base, "choices": text_choice("Hello there", None if body.get("stream") else "stop")})
        broken = step.body if step.body is not None else whole[: whole.index("Hello") + 3]
        if not body.get("stream"):
            self._send_raw_json(broken.encode())
            return
        self._begin_event_stream()
        for i in range(step.chunks_before):
            self.wfile.write(f"data: {json.dumps({**base, 'choices': text_choice(f'part{i} ', None)})}\n\n".encode())
        self.wfile.write(f"data: {broken}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _stream(
        self, base: dict[str, Any], step: Reply, calls: list[dict[str, Any]], finish: str, usage: dict[str, int] | None
    ) -> None:
        self._begin_event_stream()

        def chunk(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
            payload = {**base, "object": "chat.completion.chunk", "choices": choices, **(extra or {})}
            self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
            self.wfile.flush()
            if step.chunk_delay:
                time.sleep(step.chunk_delay)

        chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        if step.text:
            words = step.text.split(" ")
            for i, word in enumerate(words):
                piece = word if i == 0 else " " + word
                chunk([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        for index, call in enumerate(calls):
            chunk(
                [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {
                                    "index": index,
                                    "id": call["id"],
                                    "type": "function",
                                    "function": {"name": call["function"]["name"], "arguments": ""},
                                }
                            ]
                        },
                        "finish_reason": None,
                    }
                ]
            )
            args = call["function"]["arguments"]
            size = max(1, len(args) // 3)
            for start in range(0, len(args), size):
                chunk(
                    [
                        {
                            "index": 0,
                            "delta": {
                                "tool_calls": [{"index": index, "function": {"arguments": args[start : start + size]}}]
                            },
                            "finish_reason": None,
                        }
                    ]
                )
        chunk([{"index": 0, "delta": {}, "finish_reason": finish}])
        if usage is not None:
            chunk([], {"usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # batches open 100+ connections at once
    allow_reuse_address = True
    owner: ScriptedOpenAIServer


class ScriptedOpenAIServer:
    """Scripted OpenAI-compatible server: ``enqueue`` steps, point a client at ``base_url``.

    Any path ending in ``/chat/completions`` is the chat endpoint; any other path ending in
    ``/completions`` (``/v1/completions``) is the text completions endpoint, answered from the same FIFO:
    a :func:`reply` becomes ``choices[0].text`` with usage (streamed: one ``text`` chunk per word, then a
    ``finish_reason`` chunk, then usage if ``stream_options.include_usage``); faults, disconnects and
    :func:`malformed` work the same way. Its requests are recorded in ``requests`` with the extra key
    ``"_endpoint": "completions"`` (chat requests are recorded unchanged).

    When the FIFO is empty, ``responder(body)`` answers if set, else HTTP 500 (counted in
    ``exhausted_calls``). ``requests``, ``request_headers`` (Authorization redacted),
    ``authorization_schemes`` (``"Bearer"``, ``"Basic"`` or None per request), ``in_flight`` and
    ``max_in_flight`` let tests observe what the client did. With ``require_authorization`` set, a request
    whose ``Authorization`` header is not exactly that value gets a 401 (which does not quote it).
    With ``rate_limit=N``, a request arriving while N others are in flight gets a 429 with
    ``Retry-After: rate_limit_retry_after`` (counted in ``rate_limited``; its scripted step is not used).
    ``reject_response_format = True``: a request carrying ``response_format`` gets a 400, as from servers
    without structured output.
    """

    reject_response_format = False

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        responder: Callable[[dict[str, Any]], Any] | None = None,
        require_authorization: str | None = None,
        rate_limit: int | None = None,
        rate_limit_retry_after: float | None = 0.1,
    ):
        self._host, self._port = host, port
        self.responder = responder
        self.require_authorization = require_authorization
        self.authorization_schemes: list[str | None] = []
        self._steps: deque[Any] = deque()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[dict[str, Any]] = []
        self.request_headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.exhausted_calls = 0
        self.rate_limit = rate_limit
        self.rate_limit_retry_after = rate_limit_retry_after
        self.rate_limited = 0

    # lifecycle
    def start(self) -> ScriptedOpenAIServer:
        if self._server is None:
            self._server = _HTTPServer((self._host, self._port), _Handler)
            self._server.owner = self
            # poll_interval: stop() waits up to one interval; the default 0.5 s adds up over the suite.
            self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="scripted-openai",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ScriptedOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # script
    def enqueue(self, *steps: Step) -> ScriptedOpenAIServer:
        with self._lock:
            self._steps.extend(steps)
        return self

    @property
    def pending_steps(self) -> int:
        with self._lock:
            return len(self._steps)

    def clear(self) -> None:
        with self._lock:
            self._steps.clear()

    def reset_stats(self) -> None:
        with self._lock:
            self.requests.clear()
            self.request_headers.clear()
            self.authorization_schemes.clear()
            self.max_in_flight = self.in_flight
            self.exhausted_calls = 0
            self.rate_limited = 0

    # used by the handler
    def _enter(self, body: dict[str, Any], headers: dict[str, str], authorization: str | None = None) -> None:
        with self._lock:
            self.requests.append(body)
            self.request_headers.append(headers)
            self.authorization_schemes.append(authorization.partition(" ")[0] if authorization else None)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _over_rate_limit(self) -> bool:
        with self._lock:
            if self.rate_limit is None or self.in_flight <= self.rate_limit:
                return False
            self.rate_limited += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _next_step(self, body: dict[str, Any]) -> Any:
        with self._lock:
            if self._steps:
                return self._steps.popleft()
            if self.responder is None:
                self.exhausted_calls += 1
                return Fault(500, message="scripted server: no step left")
        return self.responder

    def _new_call_id(self) -> str:
        return f"call_{next(self._ids)}"
