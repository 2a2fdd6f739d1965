"""OpenAI-compatible chat completions over ``openai.AsyncOpenAI``: streaming, retries, per-loop clients."""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import re
import time
import weakref
from dataclasses import dataclass
from typing import Any

import openai

from ..agent.result import Usage
from ..events import Retry, TextDelta, ToolCallDelta
from .base import Emit, Model, ModelRequest, ModelResponse, ToolCall

DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
_KEY_PATTERN = re.compile(r"\b(sk-|sk_|key-)[A-Za-z0-9_\-*]{4,}")


class ModelError(Exception):
    """A model request failed for good (not retryable, or retries exhausted). Never contains a key."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable


@dataclass(frozen=True)
class RetryPolicy:
    """Retries for transient failures: 408/409/429/5xx, connection errors and timeouts."""

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0
    jitter: float = 0.25  # up to +25% random delay, so parallel clients do not retry in lockstep

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        base = min(self.base_delay * (2 ** (attempt - 1)), self.max_delay)
        return base * (1 + random.uniform(0, self.jitter))


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return False


def retry_after_seconds(exc: BaseException) -> float | None:
    """The server's ``Retry-After`` (seconds or HTTP date) or ``retry-after-ms`` hint, if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(parsed.timestamp() - time.time(), 0.0) if parsed else None


def redact(text: str, secret: str | None = None) -> str:
    """Remove an API key (exact, and anything key-shaped) from a message."""
    if secret:
        text = text.replace(secret, "***")
    return _KEY_PATTERN.sub(lambda m: m.group(1) + "***", text)


class OpenAIModel(Model):
    """Any OpenAI-compatible chat completions endpoint (OpenAI, Ollama, vLLM, DeepSeek, llama.cpp).

    ``api_key``/``base_url`` default to ``OPENAI_API_KEY``/``OPENAI_BASE_URL``. One ``AsyncOpenAI``
    client is created per running event loop (httpx clients are loop-bound). The SDK's own retries are
    off: this class retries, once, in one place.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = 120.0,
        stream_usage: bool = True,
        settings: dict[str, Any] | None = None,
    ):
        self.name = name or os.environ.get("MENGLONG_OPENAI_MODEL") or DEFAULT_OPENAI_MODEL
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        # Keyless local servers still need some key for the SDK; it is never shown anywhere.
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY") or "sk-no-key-required"
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.settings = dict(settings or {})
        self._stream_usage = stream_usage
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, openai.AsyncOpenAI] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:  # never the key
        where = f", base_url={self.base_url!r}" if self.base_url else ""
        return f"OpenAIModel({self.name!r}{where})"

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The client for the running loop."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = openai.AsyncOpenAI(
                api_key=self._api_key, base_url=self.base_url, max_retries=0, timeout=self.timeout
            )
            self._clients[loop] = client
        return client

    async def request(self, request: ModelRequest, emit: Emit) -> ModelResponse:
        attempt = 1
        while True:
            try:
                if request.stream:
                    return await self._stream(request, emit)
                return await self._complete(request)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_retryable(exc) or attempt >= self.retry.max_attempts:
                    raise self._error(exc, attempt) from None
                delay = self.retry.delay(attempt, retry_after_seconds(exc))
                emit(Retry(request.run_id, attempt=attempt, delay=delay, error=self._describe(exc)))
                await asyncio.sleep(delay)
                attempt += 1

    def _kwargs(self, request: ModelRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self.name, "messages": request.messages, **self.settings}
        if request.tools:
            kwargs["tools"] = request.tools
        kwargs.update(request.settings)
        return kwargs

    async def _complete(self, request: ModelRequest) -> ModelResponse:
        completion = await self.client.chat.completions.create(**self._kwargs(request))
        choice = completion.choices[0]
        message = choice.message
        tool_calls = [
            ToolCall(id=tc.id, name=tc.function.name, arguments=tc.function.arguments or "")
            for tc in (message.tool_calls or ())
            if getattr(tc, "function", None) is not None
        ]
        return ModelResponse(
            text=message.content,
            tool_calls=tool_calls,
            usage=_usage(completion.usage),
            model=completion.model or self.name,
            finish_reason=choice.finish_reason,
        )

    async def _stream(self, request: ModelRequest, emit: Emit) -> ModelResponse:
        kwargs = self._kwargs(request)
        kwargs["stream"] = True
        if self._stream_usage:
            kwargs["stream_options"] = {"include_usage": True}
        try:
            stream = await self.client.chat.completions.create(**kwargs)
        except openai.BadRequestError as first:
            if "stream_options" not in kwargs:
                raise
            # Some servers reject stream_options: try once without; if that works, stop sending it.
            kwargs.pop("stream_options")
            try:
                stream = await self.client.chat.completions.create(**kwargs)
            except openai.BadRequestError:
                raise first from None
            self._stream_usage = False
        text_parts: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        usage = None
        finish_reason = None
        model_name = self.name
        async with stream:
            async for chunk in stream:
                model_name = chunk.model or model_name
                if chunk.usage is not None:
                    usage = _usage(chunk.usage)
                for choice in chunk.choices:
                    delta = choice.delta
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
                    if delta is None:
                        continue
                    if delta.content:
                        text_parts.append(delta.content)
                        emit(TextDelta(request.run_id, iteration=request.iteration, delta=delta.content))
                    for tc in delta.tool_calls or ():
                        entry = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                        name_part = tc.function.name if tc.function else None
                        args_part = (tc.function.arguments if tc.function else None) or ""
                        entry["id"] = tc.id or entry["id"]
                        entry["name"] += name_part or ""
                        entry["arguments"] += args_part
                        emit(
                            ToolCallDelta(
                                request.run_id,
                                iteration=request.iteration,
                                index=tc.index,
                                name=entry["name"] or None,
                                arguments_delta=args_part,
                            )
                        )
        tool_calls = [
            ToolCall(id=c["id"] or f"call_{i}", name=c["name"], arguments=c["arguments"])
            for i, c in sorted(calls.items())
        ]
        text = "".join(text_parts) if text_parts else None
        return ModelResponse(
            text=text, tool_calls=tool_calls, usage=usage, model=model_name, finish_reason=finish_reason
        )

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, openai.APIStatusError):
            detail = exc.message
            body = exc.body
            if isinstance(body, dict):
                inner = body.get("error", body)
                if isinstance(inner, dict) and inner.get("message"):
                    detail = str(inner["message"])
            return redact(f"HTTP {exc.status_code} {type(exc).__name__}: {detail}", self._api_key)
        if isinstance(exc, openai.APITimeoutError):
            return "request timed out"
        if isinstance(exc, openai.APIConnectionError):
            where = self.base_url or "the OpenAI API"
            return redact(f"could not connect to {where}", self._api_key)
        return redact(f"{type(exc).__name__}: {exc}", self._api_key)

    def _error(self, exc: BaseException, attempts: int) -> ModelError:
        status = getattr(exc, "status_code", None)
        message = f"model {self.name!r} failed: {self._describe(exc)}"
        if attempts > 1:
            message += f" (after {attempts} attempts)"
        if status == 401:
            message += " — check OPENAI_API_KEY (or the api_key you passed)"
        return ModelError(message, status=status, retryable=is_retryable(exc))


def _usage(usage: Any) -> Usage | None:
    if usage is None:
        return None
    return Usage(getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))
