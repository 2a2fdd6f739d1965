"""A scripted OpenAI-compatible chat completions server on 127.0.0.1, with fault injection.

It also serves the legacy text completions endpoint (``/v1/completions``, which llama.cpp's server and
:class:`~menglong_magic.models.local.LocalModel` use) from the same script.

Standard library only. Used by the test suite, the benchmarks and the demo notebooks so that the real
``openai`` client is exercised over real HTTP without any network.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import sys
import threading
import time
import urllib.parse
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
    #: Reasoning sent in the dialect's reasoning field (DeepSeek's ``reasoning_content``), before the text.
    reasoning: str | None = None


@dataclass
class RawStream:
    """A streamed answer written exactly as given: each item is one ``data:`` payload (a dict is JSON-encoded,
    a str is sent verbatim, ``"[DONE]"`` included); nothing else is added. For chunk patterns no dialect has."""

    chunks: list[dict[str, Any] | str]
    delay: float = 0.0


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


@dataclass(frozen=True)
class Dialect:
    """How a server family shapes its answers (documented behaviour; see :data:`DIALECTS`).

    ``index``: how streamed tool-call fragments are numbered ("sequential" as OpenAI, "zero" = every call at
    index 0 as Ollama, "none" = no index field as Gemini). ``whole_calls``: each call in one fragment.
    ``repeat_name``/``repeat_id``: the name/id repeated in every fragment. ``no_args``: what a call without
    arguments carries ("" as vLLM, "{}" or None = the field left out). ``stream_tool_finish``: finish_reason
    of a streamed tool-call answer ("tool_calls", "stop" as Gemini, None = null then [DONE]).
    ``stream_text_finish``: the same for a text answer. ``usage``: "separate" (a last chunk with
    ``choices: []`` when ``include_usage`` is asked), "final" (in the finish chunk, always, as llama.cpp).
    ``reasoning_field``: where reasoning is streamed (DeepSeek: "reasoning_content"). ``azure``: Azure's
    deployment URL, ``api-version`` query and ``api-key`` header are required; an empty first chunk with
    ``prompt_filter_results`` and ``content_filter_results`` on every choice. ``signature``: Gemini's
    ``extra_content.google.thought_signature`` on each call, required back in the history (400 otherwise).
    ``id_prefix``: the form of call ids.
    """

    name: str = "openai"
    index: str = "sequential"
    whole_calls: bool = False
    repeat_name: bool = False
    repeat_id: bool = False
    no_args: str | None = "{}"
    stream_tool_finish: str | None = "tool_calls"
    stream_text_finish: str | None = "stop"
    usage: str = "separate"
    reasoning_field: str | None = None
    azure: bool = False
    signature: bool = False
    id_prefix: str = "call_"
    system_fingerprint: bool = False


#: Named dialects; each reproduces what its server's documentation and public bug reports show it sends.
DIALECTS: dict[str, Dialect] = {
    "openai": Dialect(),
    # Ollama /v1: each call whole in one fragment, all parallel calls at index 0 with distinct ids
    # (ollama/ollama#15457); finish_reason "tool_calls"; usage chunk only when asked.
    "ollama": Dialect("ollama", index="zero", whole_calls=True, no_args="{}", id_prefix="call_"),
    # vLLM: OpenAI's fragment pattern; a parameterless call's arguments are "" (and vLLM rejects "" when it
    # comes back in the history); usage chunk with choices [] when asked.
    "vllm": Dialect("vllm", no_args="", id_prefix="chatcmpl-tool-"),
    # llama.cpp's server: the name and id repeated in every fragment, usage in the finish chunk even unasked.
    "llamacpp": Dialect("llamacpp", repeat_name=True, repeat_id=True, usage="final", system_fingerprint=True),
    # LM Studio: name only in the first fragment (later ones carry ""), arguments whole in one fragment.
    "lmstudio": Dialect("lmstudio", whole_calls=False, id_prefix=""),
    # DeepSeek: reasoning streamed in reasoning_content before the answer; usage in the finish chunk.
    "deepseek": Dialect("deepseek", reasoning_field="reasoning_content", usage="final"),
    # Gemini's OpenAI-compatible endpoint: no index on tool-call fragments, each call whole, finish_reason
    # "stop" for streamed tool calls (python-genai#2868), thought signatures that must be sent back.
    "gemini": Dialect("gemini", index="none", whole_calls=True, stream_tool_finish="stop", signature=True,
                      id_prefix="function-call-"),
    # Anthropic's OpenAI SDK compatibility: toolu_ ids, arguments streamed in pieces, usage in the finish chunk.
    "anthropic": Dialect("anthropic", id_prefix="toolu_", usage="final"),
    # Azure OpenAI: /openai/deployments/<name>/chat/completions?api-version=..., api-key header, an empty
    # first chunk with prompt_filter_results, content_filter_results on every choice.
    "azure": Dialect("azure", azure=True),
    # A proxy that never says how the answer ended: null finish_reason, only [DONE].
    "null-finish": Dialect("null-finish", stream_tool_finish=None, stream_text_finish=None),
}

_SAFE_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

Step = Reply | Fault | Disconnect | Malformed | RawStream | Callable[[dict[str, Any]], Any]
_STEP_TYPES = (Reply, Fault, Disconnect, Malformed, RawStream)


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
        if len(raw) < length:  # the client went away mid-request (a killed worker): nothing to record or answer
            self.close_connection = True
            return
        split = urllib.parse.urlsplit(self.path)
        path = split.path.rstrip("/")
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
        owner._enter(body, headers, authorization, self.path)
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
            if owner.dialect is not None:
                problem = owner._check_request(body, path, urllib.parse.parse_qs(split.query), self.headers)
                if problem is not None:
                    owner.rejected.append(problem)
                    status = 404 if problem.startswith("404") else 400
                    self._send_json(status, {"error": {"message": problem, "type": "invalid_request_error"}})
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
        if isinstance(step, RawStream):
            self._begin_event_stream()
            for item in step.chunks:
                data = item if isinstance(item, str) else json.dumps(item)
                self.wfile.write(f"data: {data}\n\n".encode("utf-8", "surrogatepass"))
            self.wfile.flush()
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
        dialect = owner.dialect or DIALECTS["openai"]
        calls = []
        for c in step.tool_calls:
            arguments = c.arguments if isinstance(c.arguments, str) else json.dumps(c.arguments)
            if owner.dialect is not None and c.arguments == {}:  # a call without arguments, as the server sends it
                arguments = dialect.no_args
            function: dict[str, Any] = {"name": c.name}
            if arguments is not None:
                function["arguments"] = arguments
            entry: dict[str, Any] = {"id": c.id or owner._new_call_id(), "type": "function", "function": function}
            if dialect.signature:
                signature = f"sig-{entry['id']}"
                owner.signatures.add(signature)
                entry["extra_content"] = {"google": {"thought_signature": signature}}
            calls.append(entry)
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
            if owner.dialect is not None:
                self._dialect_stream(dialect, base, step, calls, usage_obj, include_usage)
                return
            self._stream(base, step, calls, finish, usage_obj if include_usage else None)
            return
        message: dict[str, Any] = {"role": "assistant", "content": step.text}
        if calls:
            message["tool_calls"] = calls
        if step.reasoning and dialect.reasoning_field:
            message[dialect.reasoning_field] = step.reasoning
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
        if dialect.azure:
            choice["content_filter_results"] = _FILTER_RESULTS
        payload = {
            **base,
            "object": "chat.completion",
            "choices": [choice],
        }
        if dialect.azure:
            payload["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": _FILTER_RESULTS}]
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


    def _dialect_stream(self, dialect: Dialect, base: dict[str, Any], step: Reply, calls: list[dict[str, Any]],
                        usage: dict[str, int] | None, include_usage: bool) -> None:
        """A streamed answer shaped as ``dialect`` sends it (see :class:`Dialect`)."""
        self._begin_event_stream()
        extra = {"system_fingerprint": "b1234-scripted"} if dialect.system_fingerprint else {}

        def chunk(choices: list[dict[str, Any]], more: dict[str, Any] | None = None) -> None:
            if dialect.azure:
                choices = [{**c, "content_filter_results": _FILTER_RESULTS} for c in choices]
            payload = {**base, "object": "chat.completion.chunk", "choices": choices, **extra, **(more or {})}
            self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
            self.wfile.flush()
            if step.chunk_delay:
                time.sleep(step.chunk_delay)

        def delta(content: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"index": 0, "delta": content, "finish_reason": finish}

        if dialect.azure:  # Azure's first chunk: no choices, the prompt's filter results
            payload = {**base, "object": "", "choices": [], "created": 0, "model": "",
                       "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _FILTER_RESULTS}]}
            self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
        chunk([delta({"role": "assistant", "content": "" if dialect.reasoning_field is None else None})])
        if step.reasoning and dialect.reasoning_field:
            for piece in _pieces(step.reasoning):
                chunk([delta({"content": None, dialect.reasoning_field: piece})])
        for piece in _pieces(step.text or ""):
            chunk([delta({"content": piece})])
        for number, call in enumerate(calls):
            index: dict[str, Any] = {} if dialect.index == "none" else \
                {"index": 0 if dialect.index == "zero" else number}
            name = call["function"]["name"]
            arguments = call["function"].get("arguments")
            extra_content = {"extra_content": call["extra_content"]} if "extra_content" in call else {}
            if dialect.whole_calls:
                function = {"name": name, **({} if arguments is None else {"arguments": arguments})}
                chunk([delta({"tool_calls": [{**index, "id": call["id"], "type": "function", "function": function,
                                               **extra_content}]})])
                continue
            head = {"name": name, **({} if arguments is None else {"arguments": ""})}
            chunk([delta({"tool_calls": [{**index, "id": call["id"], "type": "function", "function": head,
                                           **extra_content}]})])
            for piece in _pieces(arguments or "", words=False):
                fragment: dict[str, Any] = {**index, "function": {"arguments": piece}}
                if dialect.repeat_name:
                    fragment["function"]["name"] = name
                elif dialect.name == "lmstudio":
                    fragment["function"]["name"] = ""
                if dialect.repeat_id:
                    fragment["id"] = call["id"]
                    fragment["type"] = "function"
                chunk([delta({"tool_calls": [fragment]})])
        finish = dialect.stream_tool_finish if calls else dialect.stream_text_finish
        final_usage = {"usage": usage} if usage is not None and dialect.usage == "final" else {}
        chunk([delta({}, finish)], final_usage)
        if usage is not None and include_usage and dialect.usage == "separate":
            chunk([], {"usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


_FILTER_RESULTS = {kind: {"filtered": False, "severity": "safe"}
                   for kind in ("hate", "self_harm", "sexual", "violence")}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a server a test starts, or a refused connection)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pieces(text: str, words: bool = True) -> list[str]:
    """``text`` cut into stream fragments: words (text) or thirds (arguments)."""
    if not text:
        return []
    if words:
        parts = text.split(" ")
        return [p if i == 0 else " " + p for i, p in enumerate(parts)]
    size = max(1, len(text) // 3)
    return [text[i : i + size] for i in range(0, len(text), size)]


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # batches open 100+ connections at once
    allow_reuse_address = True
    owner: ScriptedOpenAIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up mid-answer (its timeout, a cancelled run) is what clients do: no traceback for it.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


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
        dialect: str | Dialect | None = None,
    ):
        self._host, self._port = host, port
        #: None: the historical OpenAI shape, no request checks. A name of :data:`DIALECTS` (or a Dialect):
        #: answers shaped like that server, and every request checked as a strict server would (see
        #: :meth:`_check_request`); refusals are answered 400 and recorded in ``rejected``.
        self.dialect = DIALECTS[dialect] if isinstance(dialect, str) else dialect
        self.rejected: list[str] = []
        self.signatures: set[str] = set()
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
        #: Each request's path and query, as sent (``/v1/chat/completions?api-version=...``).
        self.request_paths: list[str] = []
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
            self.request_paths.clear()
            self.authorization_schemes.clear()
            self.max_in_flight = self.in_flight
            self.exhausted_calls = 0
            self.rate_limited = 0

    # used by the handler
    def _enter(self, body: dict[str, Any], headers: dict[str, str], authorization: str | None = None,
               path: str = "") -> None:
        with self._lock:
            self.requests.append(body)
            self.request_headers.append(headers)
            self.request_paths.append(path)
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
        prefix = self.dialect.id_prefix if self.dialect is not None else "call_"
        return f"{prefix}{next(self._ids)}" if prefix else f"{next(self._ids):09d}"

    def _check_request(self, body: dict[str, Any], path: str, query: dict[str, list[str]], headers: Any) -> str | None:
        """Why a strict server would refuse this request (None: it is fine)."""
        assert self.dialect is not None
        if self.dialect.azure:
            parts = path.split("/")
            if "deployments" not in parts or parts[parts.index("deployments") + 1:][:1] == []:
                return "404 Azure: the path must be /openai/deployments/<deployment>/chat/completions"
            if not query.get("api-version"):
                return "Azure: the api-version query parameter is required"
            if not headers.get("api-key") and not (headers.get("Authorization") or "").startswith("Bearer "):
                return "Azure: an api-key header (or a Bearer token) is required"
        for number, entry in enumerate(body.get("tools") or []):
            name = (entry.get("function") or {}).get("name", "")
            if not _SAFE_NAME.match(str(name)):
                return f"Invalid 'tools[{number}].function.name': string does not match pattern ^[a-zA-Z0-9_-]{{1,64}}$"
        schema_name = ((body.get("response_format") or {}).get("json_schema") or {}).get("name")
        if schema_name is not None and not _SAFE_NAME.match(str(schema_name)):
            return "Invalid 'response_format.json_schema.name': string does not match pattern ^[a-zA-Z0-9_-]{1,64}$"
        open_calls: set[str] = set()
        for number, message in enumerate(body.get("messages") or []):
            role = message.get("role")
            if open_calls and role != "tool":
                return f"messages[{number}]: tool calls {sorted(open_calls)} have no tool message answering them"
            if role == "assistant":
                for call in message.get("tool_calls") or []:
                    arguments = (call.get("function") or {}).get("arguments")
                    try:
                        valid = isinstance(json.loads(arguments), dict)
                    except (TypeError, ValueError):
                        valid = False
                    if not valid:
                        return f"messages[{number}]: tool call arguments must be a JSON object text, got {arguments!r}"
                    if self.dialect.signature:
                        signature = ((call.get("extra_content") or {}).get("google") or {}).get("thought_signature")
                        if signature not in self.signatures:
                            return f"messages[{number}]: function call is missing its thought_signature"
                    open_calls.add(call.get("id"))
                if self.dialect.reasoning_field and self.dialect.reasoning_field in message:
                    return f"messages[{number}]: {self.dialect.reasoning_field} must not be sent back"
            elif role == "tool":
                if message.get("tool_call_id") not in open_calls:
                    return f"messages[{number}]: a tool message answers no open tool call"
                open_calls.discard(message.get("tool_call_id"))
        if open_calls:
            return f"tool calls {sorted(open_calls)} have no tool message answering them"
        return None
