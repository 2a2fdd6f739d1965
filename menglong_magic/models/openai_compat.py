"""OpenAI-compatible chat completions over ``openai.AsyncOpenAI``: streaming, retries, per-loop clients."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import importlib
import json
import os
import random
import ssl
import time
import urllib.parse
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import openai

from ..events import Retry, TextDelta, ToolCallDelta
from ..loopcache import PerLoop
from ..loopshare import loop_share
from ..secrets import Secret, install_log_redaction, redact, register_secret
from ..usage import Usage
from .base import Emit, Model, ModelRequest, ModelResponse, ToolCall, current_gate
from .parts import TextJoiner, ToolCallAssembler

_T = TypeVar("_T")

DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
_OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: The key sent when there is none (OpenAI-compatible local servers ignore it; the SDK requires one).
NO_API_KEY = "sk-no-key-required"
_NO_KEY_SECRET = Secret(NO_API_KEY)
_MAX_DETAIL = 500  # server error bodies can be huge (llama.cpp sends whole validation reports)
#: The request options that make the SDK (3.x, which picks the auth header per endpoint) send the key, as
#: create() does; empty for SDKs that always send it.
BEARER_AUTH: dict[str, Any] = (
    {"security": {"bearer_auth": True}} if "security" in getattr(openai, "RequestOptions", dict).__annotations__ else {}
)
#: The SDK's telemetry headers: its version and the client's OS, CPU, Python and timeout, on every request.
#: Sent to OpenAI's own API as the SDK sends them; other servers (local ones, other providers) do not read them,
#: and they are half of each request's headers, which the SDK and its HTTP stack copy and re-encode five times
#: (16% of a map item's Python calls): there the SDK is told to omit them (``Omit``, its own way to drop a header).
SDK_TELEMETRY_HEADERS = (
    "X-Stainless-Lang", "X-Stainless-Package-Version", "X-Stainless-OS", "X-Stainless-Arch",
    "X-Stainless-Runtime", "X-Stainless-Runtime-Version", "X-Stainless-Async",
)
#: The two the SDK adds per request unless the request's own headers name them.
SDK_TELEMETRY_REQUEST_HEADERS = ("X-Stainless-Retry-Count", "X-Stainless-Read-Timeout")


def _transport_errors(names: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    """httpx's exception types ``names`` (and httpx2's, which newer openai releases use).

    Recent SDKs wrap errors raised while a stream is read into APIConnectionError; older ones let the
    raw httpx exception escape, so both are classified, by type.
    """
    found: list[type[BaseException]] = []
    for module_name in ("httpx", "httpx2"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for attr in names:
            exc_type = getattr(module, attr, None)
            if isinstance(exc_type, type) and issubclass(exc_type, BaseException):
                found.append(exc_type)
    return tuple(found)


_TIMEOUT_ERRORS = _transport_errors(("TimeoutException",))
_TRANSPORT_ERRORS = _transport_errors(("TimeoutException", "NetworkError", "RemoteProtocolError"))

HttpLibrary = Literal["aiohttp", "httpx"]


@functools.lru_cache(maxsize=1)
def _connection_errors() -> tuple[type[BaseException], ...]:
    """Root causes that mean the connection failed (refused, reset, closed by the server), not a timeout."""
    try:  # imported when first needed: importing this package does not import aiohttp
        import aiohttp
    except ImportError:
        return (OSError,)
    return (OSError, aiohttp.ClientConnectionError)


class ModelError(Exception):
    """A model request failed for good (not retryable, or retries exhausted).

    Never contains a credential, and chains no exception (``__cause__`` and ``__context__`` are None):
    the SDK's exceptions keep the request (with its ``Authorization`` header) and the server's response.
    """

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class MalformedResponseError(Exception):
    """The server answered 200 but its body (or a streamed chunk) is not a valid chat completion.

    Transient (a proxy cut the body, a server hiccup): retried like a 5xx. Raised inside the model layer
    only; callers see a :class:`ModelError` naming the model and the endpoint.
    """


@dataclass(frozen=True)
class RetryPolicy:
    """Retries for transient failures: 408/409/429/5xx, connection errors and timeouts.

    ``max_attempts`` counts the first try. Delays grow exponentially from ``base_delay`` (capped at
    ``max_delay``) with up to ``jitter`` × the delay added at random, so parallel clients do not retry in
    lockstep. A server's ``Retry-After`` is honoured exactly; one longer than ``max_retry_after`` fails at
    once rather than silently stalling the run.
    """

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0
    jitter: float = 0.25
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None:
            return max(retry_after, 0.0)
        base = min(self.base_delay * (2 ** (attempt - 1)), self.max_delay)
        return min(base * (1 + random.uniform(0, self.jitter)), self.max_delay)


def is_retryable(exc: BaseException) -> bool:
    """Transient by type/status: connection errors, timeouts, 408/409/429/5xx (not an exhausted quota)."""
    if isinstance(exc, openai.APIStatusError):
        if exc.code == "insufficient_quota":  # a 429 that no amount of waiting fixes
            return False
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    return isinstance(exc, (MalformedResponseError, *_TRANSPORT_ERRORS))


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first (the SDK's APIConnectionError wraps the transport's error,
    which wraps aiohttp's or the OSError); at most 8."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


def _refused(exc: BaseException) -> bool:
    """Whether the connection was refused (the server is out of sockets or down): a congestion signal."""
    return any(isinstance(seen, ConnectionRefusedError) for seen in _causes(exc))


def _timed_out(exc: BaseException) -> bool:
    """Whether the request timed out, judged by the root cause where there is one.

    The SDK's aiohttp transport maps every aiohttp connection error (a refused connection, a server that
    closed it) to a connect *timeout*: the root cause tells them apart.
    """
    root = _causes(exc)[-1]
    if root is not exc and isinstance(root, _connection_errors()) and not isinstance(root, (TimeoutError,
                                                                                            asyncio.TimeoutError)):
        return False
    return isinstance(exc, (openai.APITimeoutError, *_TIMEOUT_ERRORS))


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
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(parsed.timestamp() - time.time(), 0.0)


def safe_url(url: str | None) -> str | None:
    """``url`` without any ``user:password@`` part (shown in reprs and errors)."""
    if not url:
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def check_base_url(url: str | None, source: str = "base_url") -> None:
    """Refuse a URL with ``user:password@``: the HTTP client would send it as ``Authorization: Basic``
    (dropping the Bearer key) and log it with every request. The error never quotes the URL."""
    if not url:
        return
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None and "@" not in parts.netloc:
        return
    register_secret(parts.password)  # in case the caller prints the URL next to our output
    register_secret(urllib.parse.unquote(parts.password or ""))
    raise ValueError(
        f"{source} must not contain credentials (user:password@host); pass the key as api_key=... "
        "(sent as 'Authorization: Bearer <key>') or any other header as default_headers={'Authorization': ...}"
    )


def _is_openai_host(url: str | None) -> bool:
    """Whether ``url`` is OpenAI's own API (no base URL: the SDK's default, api.openai.com)."""
    host = urllib.parse.urlsplit(url).hostname if url else "api.openai.com"
    return host is not None and (host == "openai.com" or host.endswith(".openai.com"))


def _is_loopback(url: str | None) -> bool:
    host = urllib.parse.urlsplit(url).hostname if url else None
    return host in ("127.0.0.1", "localhost", "::1")


def _forced(tool_choice: Any) -> bool:
    return tool_choice == "required" or isinstance(tool_choice, dict)


def after_tool_round(messages: list[dict[str, Any]]) -> bool:
    """True when the request follows a tool round (its last message is a tool result)."""
    return bool(messages) and messages[-1].get("role") == "tool"


class OpenAIModel(Model):
    """Any OpenAI-compatible chat completions endpoint (OpenAI, Ollama, vLLM, DeepSeek, llama.cpp).

    ``api_key``/``base_url`` default to ``OPENAI_API_KEY``/``OPENAI_BASE_URL``. One ``AsyncOpenAI``
    client is created per running event loop (HTTP clients are loop-bound). The SDK's own retries are
    off: this class retries, once, in one place (see :class:`RetryPolicy`); a request's own
    ``max_retries`` (``ModelRequest.max_retries``: 0 = one attempt) overrides the policy's count. The
    timeout (``timeout``, or ``ModelRequest.timeout``) is sent with every request, so changing
    ``model.timeout`` takes effect at the next request.

    Credentials: ``api_key`` (sent as ``Authorization: Bearer``) and the values of ``default_headers``
    (sent with every request) are secrets: they are redacted from every error, event, repr and from the
    log lines of the SDK and its HTTP client (see :mod:`menglong_magic.secrets`). A ``base_url`` with
    ``user:password@`` is refused with a ValueError (pass the key or header explicitly instead).
    Malformed or truncated responses (invalid JSON, a broken streamed chunk) are retried like a 5xx.

    ``http_library``: what carries the SDK's requests. ``"aiohttp"`` (the default when the SDK has its aiohttp
    transport, ``openai[aiohttp]``) costs a quarter of httpx's CPU per request, which is what bounds a map of
    many requests on a busy client; ``"httpx"`` is the SDK's default. ``MENGLONG_HTTP_LIBRARY`` sets the default.

    ``reset_tool_choice``: a forced ``tool_choice`` (a named tool, or ``"required"``) applies to the first
    request of a turn; after a tool round it becomes ``"auto"``, as in the OpenAI Agents SDK, so a forced
    call cannot repeat until ``max_iterations``.
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
        reset_tool_choice: bool = True,
        default_headers: dict[str, str] | None = None,
        provider: str | None = None,
        http_library: HttpLibrary | None = None,
    ):
        self.name = name or os.environ.get("MENGLONG_OPENAI_MODEL") or DEFAULT_OPENAI_MODEL
        #: The provider for prices (genai-prices id, e.g. "openai"); None: inferred from ``base_url``.
        self.provider = provider
        #: The model id sent to the server (``name`` is what panels and results show).
        self.request_model = self.name
        # Keyless local servers still need some key for the SDK; it is never shown anywhere.
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY") or NO_API_KEY
        self._default_headers = {str(k): str(v) for k, v in (default_headers or {}).items()}
        if base_url:
            check_base_url(base_url)
        else:
            check_base_url(os.environ.get("OPENAI_BASE_URL"), "OPENAI_BASE_URL")
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.settings = dict(settings or {})
        self.reset_tool_choice = reset_tool_choice
        self._stream_usage = stream_usage
        self._stream_usage_accepted = False
        self.http_library: HttpLibrary = _http_library(http_library)
        # Clients per loop, closed when their loop shuts down (HTTP clients are loop-bound).
        self._clients: PerLoop[_ClientShards] = PerLoop(self._new_shards, _close_shards)

    # The key and header values live in Secret holders: vars(model), pickles and reprs show "***".
    @property
    def _api_key(self) -> str:
        return self._key.get()

    @_api_key.setter
    def _api_key(self, value: str) -> None:
        self._key = Secret(value) if value != NO_API_KEY else _NO_KEY_SECRET

    @property
    def _default_headers(self) -> dict[str, str]:
        return {name: value.get() for name, value in self._headers.items()}

    @_default_headers.setter
    def _default_headers(self, headers: dict[str, str]) -> None:
        self._headers = {name: Secret(value) for name, value in headers.items()}

    def rebuild_options(self) -> tuple[dict[str, Any], Secret | None, dict[str, Secret]]:
        """What rebuilds this model in another process (the Ray executor's workers): the constructor's options
        (no secrets), the API key (None when there is none) and the default headers, both as Secret holders."""
        options = {"name": self.name, "base_url": self.base_url, "timeout": self.timeout,
                   "settings": dict(self.settings), "provider": self.provider, "retry": self.retry,
                   "stream_usage": self._stream_usage, "reset_tool_choice": self.reset_tool_choice,
                   "http_library": self.http_library}
        if self.request_model != self.name:
            options["request_model"] = self.request_model
        key = None if self._key is _NO_KEY_SECRET else self._key
        return options, key, dict(self._headers)

    def __repr__(self) -> str:  # never the key
        where = f", base_url={safe_url(self.base_url)!r}" if self.base_url else ""
        return f"{type(self).__name__}({self.name!r}{where})"

    def price(self, usage: Usage) -> float | None:
        """US dollars for one request from genai-prices, when it knows this model and provider (else None).

        The provider is ``provider=`` if given, else OpenAI without a ``base_url``, else whatever genai-prices
        recognises from the ``base_url`` (a local or unknown endpoint: None, never a guess).
        """
        if usage.input_tokens is None or usage.output_tokens is None:
            return None
        return _price(self.request_model, usage.input_tokens, usage.output_tokens, self.provider,
                      None if self.provider or not self.base_url else self.base_url)

    @property
    def base_url(self) -> str | None:
        return self._base_url

    @base_url.setter
    def base_url(self, url: str | None) -> None:
        check_base_url(url)
        self._base_url = url
        self._route = self._chat_route()

    @property
    def sends_sdk_telemetry(self) -> bool:
        """Whether requests carry the SDK's telemetry headers (:data:`SDK_TELEMETRY_HEADERS`): to OpenAI's API only."""
        return _is_openai_host(self.base_url)

    def _chat_route(self) -> tuple[str, dict[str, Any]]:
        """Where a chat request is posted, and its request options: worked out once per base URL.

        The whole URL, not the SDK's relative path: the SDK would parse the path, rebuild its base URL around it
        and print it, and httpx parse the result again (one URL parse in three, ~4% of a request's CPU). A base
        URL with a query or fragment keeps the SDK's own merging.
        """
        options: dict[str, Any] = dict(BEARER_AUTH)
        if not self.sends_sdk_telemetry:
            options["headers"] = {name: openai.Omit() for name in SDK_TELEMETRY_REQUEST_HEADERS}
        base = self.base_url or _OPENAI_DEFAULT_BASE_URL
        if "?" in base or "#" in base:
            return "/chat/completions", options
        return base.rstrip("/") + "/chat/completions", options

    @property
    def default_headers(self) -> dict[str, str]:
        """Header names sent with every request (values are secrets: never shown)."""
        return {name: "***" for name in self._default_headers}

    @property
    def endpoint(self) -> str:
        """The chat completions URL, as shown in errors (never with credentials)."""
        return (safe_url(self.base_url) or _OPENAI_DEFAULT_BASE_URL).rstrip("/") + "/chat/completions"

    def _timeout_for(self, request: ModelRequest) -> float | None:
        return self.timeout if request.timeout is None else request.timeout

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The (first) client for the running loop."""
        return self._clients.get().clients[0]

    @property
    def open_clients(self) -> int:
        """HTTP clients open on the running loop: one, and one more per :data:`CLIENT_SHARE` concurrent requests."""
        return len(self._clients.get().clients)

    def _new_shards(self) -> _ClientShards:
        return _ClientShards(lambda: _with_platform(self._new_client()), CLIENT_SHARE[self.http_library])

    def _client_options(self) -> dict[str, Any]:
        install_log_redaction()  # the SDK's and httpx's loggers exist once openai is imported
        options: dict[str, Any] = {"max_retries": 0, "timeout": self.timeout}
        headers: dict[str, Any] = dict(self._default_headers)
        if not self.sends_sdk_telemetry:
            named = {name.lower() for name in headers}  # a header the user set is sent as set
            headers.update({name: openai.Omit() for name in SDK_TELEMETRY_HEADERS if name.lower() not in named})
        if headers:
            options["default_headers"] = headers
        # The SDK's client honours HTTP(S)_PROXY even for 127.0.0.1: a proxy must not capture local servers.
        trust_env = not _is_loopback(self.base_url)
        http_client = _http_client(self.http_library, trust_env)
        if http_client is not None:
            options["http_client"] = http_client
        return options

    def _new_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(api_key=self._api_key, base_url=self.base_url, **self._client_options())

    def _forget_clients(self) -> None:
        """Drop every loop's client (they point at an endpoint that changed); each is closed with its loop."""
        self._clients = PerLoop(self._new_shards, _close_shards)

    async def aclose(self) -> None:
        """Close the running loop's clients (optional: they are closed when the loop shuts down)."""
        shards = self._clients.pop()
        if shards is not None:
            await _close_shards(shards)

    async def request(self, request: ModelRequest, emit: Emit) -> ModelResponse:
        if request.stream:
            return await self.with_retries(request, emit, lambda: self._stream(request, emit))
        return await self.with_retries(request, emit, lambda: self._complete(request))

    async def with_retries(
        self, request: ModelRequest, emit: Emit | None, attempt: Callable[[], Awaitable[_T]]
    ) -> _T:
        """Await ``attempt()`` until it succeeds, retrying transient failures; a clean ModelError if not.

        Retries follow :attr:`retry` (``request.max_retries`` overrides its count: 0 = one attempt) and
        emit a :class:`Retry` event before each wait. The ModelError raised at the end chains no exception
        (the SDK's keep the request headers and the server's response) and quotes no credential.
        """
        max_attempts = self.retry.max_attempts if request.max_retries is None else max(request.max_retries, 0) + 1
        timeout = self._timeout_for(request)
        install_log_redaction()  # cheap when no logger was added since the last call
        for settings in (self.settings, request.settings):  # per-request headers are secrets too
            for value in (settings.get("extra_headers") or {}).values():
                register_secret(str(value))
        number = 1
        while True:
            failure: BaseException | None = None
            try:
                return await attempt()
            except (openai.OpenAIError, MalformedResponseError, *_TRANSPORT_ERRORS) as exc:
                failure = exc
            # Decided outside the `except` block: an exception raised there would chain the SDK's one
            # (`raise ... from None` only hides it; `__context__` still holds it, with the request headers).
            retry_after = retry_after_seconds(failure)
            error: ModelError | None = None
            if not is_retryable(failure) or number >= max_attempts:
                error = self._error(failure, number, timeout=timeout)
            elif retry_after is not None and retry_after > self.retry.max_retry_after:
                note = f"the server asked to wait {retry_after:g}s"
                error = self._error(failure, number, note=note, timeout=timeout)
            description = self._describe(failure, timeout=timeout)
            gate = current_gate.get()
            if gate is not None:  # an adaptive limiter learns from 429/503 (and their Retry-After)
                gate.attempt_failed(getattr(failure, "status_code", None), retry_after, refused=_refused(failure))
            failure = None  # no frame local keeps the SDK exception alive either
            if error is not None:
                raise error
            delay = self.retry.delay(number, retry_after)
            # A Retry also tells views that this iteration's streamed deltas so far are void.
            if emit is not None:
                emit(Retry(request.run_id, attempt=number, delay=delay, error=description))
            if gate is not None:
                async with gate.released():  # the slot serves other requests while this one waits
                    await asyncio.sleep(delay)
            else:
                await asyncio.sleep(delay)
            number += 1

    def _kwargs(self, request: ModelRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self.request_model, "messages": request.messages, **self.settings}
        if request.tools:
            kwargs["tools"] = request.tools
        kwargs.update(request.settings)
        # Streaming is decided by request.stream alone.
        kwargs.pop("stream", None)
        kwargs.pop("stream_options", None)
        if not request.tools:
            # OpenAI rejects tool_choice without tools (400): drop it rather than fail a plain chat.
            kwargs.pop("tool_choice", None)
            kwargs.pop("parallel_tool_calls", None)
        elif self.reset_tool_choice and _forced(kwargs.get("tool_choice")) and after_tool_round(request.messages):
            kwargs["tool_choice"] = "auto"
        return kwargs

    async def _create(self, kwargs: dict[str, Any], client: openai.AsyncOpenAI) -> Any:
        """``chat.completions.create(**kwargs)``, without the SDK's per-request params transform.

        create() walks every message and tool through its typed-params transform (aliases, date and base64
        formats) before sending: a quarter of the SDK's CPU per request here (~1 ms, more with long histories),
        for nothing, since chat params declare no alias or format and our messages are JSON already. The
        client's ``post`` (the SDK's documented way to call any endpoint) sends the same body through the same
        client: headers, auth, timeouts, errors and streams are the SDK's. ``extra_body``/``extra_headers``/
        ``extra_query`` mean what they mean to create(); a key create() does not know reaches the server,
        which judges it (providers' own parameters need no ``extra_body``).
        """
        body = dict(kwargs)
        url, route_options = self._route
        options = dict(route_options)
        if "timeout" in body:
            options["timeout"] = body.pop("timeout")
        headers = body.pop("extra_headers", None)
        if headers:
            options["headers"] = {**options.get("headers", {}), **headers}
        query = body.pop("extra_query", None)
        if query:
            options["params"] = query
        extra = body.pop("extra_body", None)
        if extra:
            body.update(extra)  # as create() merges it (the SDK's extra_json)
        response_format = body.get("response_format")
        if isinstance(response_format, type):  # create() refuses a class too; it is for .parse()
            raise TypeError("response_format must be a dict (a JSON schema), not a class")
        stream = bool(body.get("stream"))
        try:
            # cast_to=object: the JSON as it came (dicts), read by this module; the SDK's typed objects would
            # cost a sixth of its CPU per request to build, for fields read once.
            return await client.post(url, body=body, cast_to=object, options=options,
                                     stream=stream, stream_cls=openai.AsyncStream[object])
        except TypeError as exc:  # raised while encoding the body, before anything was sent
            if "serializable" not in str(exc):
                raise
        # A value only create()'s transform turns into JSON (an SDK object put in the history, with an older SDK
        # whose post() encodes with the standard json module, as 1.40 does): send it the slow way.
        made = await client.chat.completions.create(**kwargs)
        return _AsDicts(made) if stream else _as_dict(made)

    @contextlib.contextmanager
    def _borrowed_client(self) -> Iterator[openai.AsyncOpenAI]:
        """The least busy of this loop's clients, counted busy until the response (or stream) is done."""
        shards = self._clients.get()
        index = shards.take()
        try:
            yield shards.clients[index]
        finally:
            shards.give_back(index)

    async def _complete(self, request: ModelRequest) -> ModelResponse:
        try:
            with self._borrowed_client() as client:
                completion = await self._create({**self._kwargs(request), "timeout": self._timeout_for(request)},
                                                client)
        except json.JSONDecodeError as exc:
            raise MalformedResponseError(_json_problem("the response body", exc)) from None
        choices = _field(completion, "choices")
        if not isinstance(choices, list):
            raise MalformedResponseError(f"the response body is not a chat completion ({_shape(completion)})")
        if not choices:
            raise MalformedResponseError("the response has no choices")
        choice = choices[0]
        message = _field(choice, "message")
        if not isinstance(message, dict):
            raise MalformedResponseError("the response's first choice has no message")
        tool_calls = [
            ToolCall(id=_field(tc, "id") or _call_id(), name=function["name"], arguments=function.get("arguments"),
                     extra=_extra(tc))
            for tc in (_field(message, "tool_calls") or ())
            if isinstance(function := _field(tc, "function"), dict) and function.get("name")
        ]
        return ModelResponse(
            text=_field(message, "content") or None,  # "" and None both mean "no text", as in the streamed form
            tool_calls=tool_calls,
            usage=_usage(_field(completion, "usage")),
            model=_field(completion, "model") or self.name,
            finish_reason=_field(choice, "finish_reason"),
        )

    async def _open_stream(self, request: ModelRequest, client: openai.AsyncOpenAI) -> Any:
        kwargs = self._kwargs(request)
        kwargs["stream"] = True
        kwargs["timeout"] = self._timeout_for(request)
        if not self._stream_usage:
            return await self._create(kwargs, client)
        kwargs["stream_options"] = {"include_usage": True}
        try:
            stream = await self._create(kwargs, client)
        except (openai.BadRequestError, openai.UnprocessableEntityError) as first:
            if self._stream_usage_accepted:  # this server took stream_options before: the 400 is about else
                raise
            # Some servers reject stream_options: try once without; only if that works, stop sending it.
            kwargs.pop("stream_options")
            try:
                stream = await self._create(kwargs, client)
            except (openai.BadRequestError, openai.UnprocessableEntityError):
                raise first from None
            self._stream_usage = False
            return stream
        self._stream_usage_accepted = True
        return stream

    async def _stream(self, request: ModelRequest, emit: Emit) -> ModelResponse:
        with self._borrowed_client() as client:  # busy until the stream is read to its end
            return await self._read_stream(request, emit, client)

    async def _read_stream(self, request: ModelRequest, emit: Emit, client: openai.AsyncOpenAI) -> ModelResponse:
        stream = await self._open_stream(request, client)
        watcher = _DoneWatcher.install(stream)
        text = TextJoiner()
        text_parts: list[str] = []
        calls = ToolCallAssembler()
        usage = None
        finish_reason = None
        model_name = self.name
        async with stream:
            chunks = stream.__aiter__()
            received = 0
            while True:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                except json.JSONDecodeError as exc:
                    raise MalformedResponseError(_json_problem(f"streamed chunk {received + 1}", exc)) from None
                received += 1
                choices = _field(chunk, "choices")
                if not isinstance(choices, list) and (choices is not None or _field(chunk, "usage") is None):
                    raise MalformedResponseError(f"streamed chunk {received} is not a chat completion chunk")
                model_name = _field(chunk, "model") or model_name
                if _field(chunk, "usage") is not None:
                    usage = _usage(chunk["usage"])
                for choice in choices or ():
                    if (_field(choice, "index") or 0) != 0:  # n > 1: only the first choice is used
                        continue
                    if _field(choice, "finish_reason"):
                        finish_reason = choice["finish_reason"]
                    delta = _field(choice, "delta")
                    if not isinstance(delta, dict):
                        continue
                    content = delta.get("content")
                    if content:
                        piece = text.feed(content)
                        if piece:
                            text_parts.append(piece)
                            emit(TextDelta(request.run_id, iteration=request.iteration, delta=piece))
                    for tc in delta.get("tool_calls") or ():
                        function = _field(tc, "function")
                        slot, name, args_part = calls.feed(
                            _field(tc, "index"), _field(tc, "id"),
                            _field(function, "name"), _field(function, "arguments"), _extra(tc))
                        emit(ToolCallDelta(request.run_id, iteration=request.iteration, index=slot,
                                           name=name or None, arguments_delta=args_part))
        tail = text.flush()
        if tail:
            text_parts.append(tail)
            emit(TextDelta(request.run_id, iteration=request.iteration, delta=tail))
        if finish_reason is None and watcher is not None and not watcher.done:
            # Neither finish_reason nor [DONE]: the connection ended early (a proxy, a crashed server).
            raise MalformedResponseError(f"the stream ended after {received} chunk(s) without finish_reason or [DONE]"
                                         " (truncated)")
        tool_calls = [ToolCall(id=call_id or _call_id(), name=name, arguments=arguments, extra=extra)
                      for call_id, name, arguments, extra in calls.calls()]
        return ModelResponse(text="".join(text_parts) or None, tool_calls=tool_calls, usage=usage, model=model_name,
                             finish_reason=finish_reason)

    def _describe(self, exc: BaseException, timeout: float | None = None) -> str:
        if isinstance(exc, openai.APIStatusError):
            detail = exc.message
            body = exc.body
            if isinstance(body, dict):
                inner = body.get("error", body)
                if isinstance(inner, dict) and inner.get("message"):
                    detail = str(inner["message"])
            detail = " ".join(str(detail).split())
            if len(detail) > _MAX_DETAIL:
                detail = detail[:_MAX_DETAIL] + "…"
            return redact(f"HTTP {exc.status_code} {type(exc).__name__}: {detail}", self._api_key)
        where = safe_url(self.base_url) or "the OpenAI API"
        if isinstance(exc, MalformedResponseError):
            return redact(f"malformed response from {self.endpoint}: {exc}", self._api_key)
        if _timed_out(exc):
            seconds = self.timeout if timeout is None else timeout
            after = f" after {seconds:g}s" if seconds else ""
            return redact(f"request to {where} timed out{after}", self._api_key)
        if isinstance(exc, (openai.APIConnectionError, *_TRANSPORT_ERRORS)):  # refused, reset, dropped mid-stream
            return redact(f"connection to {where} failed", self._api_key)
        return redact(f"{type(exc).__name__}: {exc}", self._api_key)

    def _error(
        self, exc: BaseException, attempts: int, note: str | None = None, timeout: float | None = None
    ) -> ModelError:
        status = getattr(exc, "status_code", None)
        message = f"model {self.name!r} failed: {self._describe(exc, timeout=timeout)}"
        if note:
            message += f"; {note}"
        if attempts > 1:
            message += f" (after {attempts} attempts)"
        if status == 401:  # the endpoint (without user info) says which server refused the key
            message += f" at {self.endpoint} — check OPENAI_API_KEY (or the api_key you passed)"
        elif status == 404:
            message += f" at {self.endpoint} — check the model name and base_url"
        error = ModelError(redact(message, self._api_key), status=status, retryable=is_retryable(exc))
        error.__cause__ = error.__context__ = None
        error.__suppress_context__ = True
        return error


class AzureOpenAIModel(OpenAIModel):
    """Azure OpenAI: ``deployment`` is the deployment's name (Azure puts it in the URL path, not the body).

    ``azure_endpoint`` is the resource URL (``https://<resource>.openai.azure.com``; default
    ``AZURE_OPENAI_ENDPOINT``), ``api_version`` the ``api-version`` query (default ``OPENAI_API_VERSION``,
    else a current GA version), the key ``api_key`` or ``AZURE_OPENAI_API_KEY`` (sent as the ``api-key``
    header). Requests go through the SDK's ``AsyncAzureOpenAI`` to
    ``<endpoint>/openai/deployments/<deployment>/chat/completions?api-version=...``. Everything else
    (retries, streaming, secrets) is :class:`OpenAIModel`'s. As a model spec: ``"azure:<deployment>"``.
    """

    DEFAULT_API_VERSION = "2024-10-21"

    def __init__(self, deployment: str | None = None, *, azure_endpoint: str | None = None,
                 api_version: str | None = None, api_key: str | None = None, **options: Any) -> None:
        endpoint = azure_endpoint or os.environ.get("AZURE_OPENAI_ENDPOINT")
        if not endpoint:
            raise ValueError("Azure OpenAI needs azure_endpoint=... (or AZURE_OPENAI_ENDPOINT), e.g. "
                             "https://<resource>.openai.azure.com")
        name = deployment or os.environ.get("AZURE_OPENAI_DEPLOYMENT")
        if not name:
            raise ValueError("Azure OpenAI needs the deployment name: AzureOpenAIModel('<deployment>') or "
                             "AZURE_OPENAI_DEPLOYMENT")
        options.pop("base_url", None)
        super().__init__(name, base_url=endpoint, api_key=api_key or os.environ.get("AZURE_OPENAI_API_KEY"),
                         **options)
        self.api_version = api_version or os.environ.get("OPENAI_API_VERSION") or self.DEFAULT_API_VERSION

    @property
    def endpoint(self) -> str:
        base = (safe_url(self.base_url) or "").rstrip("/")
        return f"{base}/openai/deployments/{self.request_model}/chat/completions?api-version={self.api_version}"

    @property
    def sends_sdk_telemetry(self) -> bool:
        return True

    def _chat_route(self) -> tuple[str, dict[str, Any]]:
        # The SDK's Azure client puts the deployment in the path it is given: it must stay the relative one.
        return "/chat/completions", dict(BEARER_AUTH)

    def _new_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncAzureOpenAI(azure_endpoint=self.base_url, api_version=self.api_version,
                                       api_key=self._api_key, **self._client_options())


def _json_problem(what: str, exc: json.JSONDecodeError) -> str:
    """What is wrong with a JSON text, without quoting it (it may echo anything the server was sent)."""
    return f"{what} is not valid JSON: {exc.msg} (character {exc.pos} of {len(exc.doc)})"


def _shape(value: Any) -> str:
    if isinstance(value, str):
        return f"got {len(value)} characters of non-JSON text"
    return f"got {type(value).__name__}"


class _DoneWatcher:
    """Wraps the SDK stream's SSE decoder to see whether the server sent ``data: [DONE]``.

    The SDK stops iterating both at ``[DONE]`` and when the body just ends; only the events tell them apart.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.done = False

    @classmethod
    def install(cls, stream: Any) -> _DoneWatcher | None:
        inner = getattr(stream, "_decoder", None)
        if inner is None or not hasattr(inner, "aiter_bytes"):  # another SDK layout: cannot tell, trust the end
            return None
        watcher = cls(inner)
        stream._decoder = watcher  # noqa: SLF001 (the SDK's stream has no public hook for its bytes)
        return watcher

    async def aiter_bytes(self, iterator: Any) -> Any:
        async for sse in self._inner.aiter_bytes(iterator):
            if sse.data.startswith("[DONE]"):
                self.done = True
            yield sse

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _field(value: Any, name: str) -> Any:
    """``value[name]`` of a JSON object; None for a missing key or when ``value`` is not an object."""
    return value.get(name) if isinstance(value, dict) else None


def _extra(tool_call: Any) -> dict[str, Any] | None:
    """Provider fields beside a tool call's standard ones (Gemini's ``extra_content``), kept for the history."""
    extra = _field(tool_call, "extra_content")
    return None if extra is None else {"extra_content": extra}


def _as_dict(made: Any) -> Any:
    """An SDK object (from create(), the fallback) as the JSON it was read from."""
    return made.model_dump(mode="json", exclude_unset=True) if hasattr(made, "model_dump") else made


class _AsDicts:
    """create()'s stream (the fallback) with each chunk as the JSON it was read from, as post() gives them."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    @property
    def _decoder(self) -> Any:  # what _DoneWatcher wraps: the SDK stream's own
        return getattr(self._stream, "_decoder", None)

    @_decoder.setter
    def _decoder(self, decoder: Any) -> None:
        self._stream._decoder = decoder  # noqa: SLF001

    async def __aenter__(self) -> _AsDicts:
        await self._stream.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stream.__aexit__(*exc)

    async def __aiter__(self) -> Any:
        async for chunk in self._stream:
            yield _as_dict(chunk)


def _http_library(requested: str | None) -> HttpLibrary:
    chosen = (requested or os.environ.get("MENGLONG_HTTP_LIBRARY") or "aiohttp").strip().lower()
    if chosen not in ("aiohttp", "httpx"):
        raise ValueError(f"http_library must be 'aiohttp' or 'httpx', not {chosen!r}")
    if chosen == "aiohttp" and not _has_aiohttp_transport():
        return "httpx"
    return chosen  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def _has_aiohttp_transport() -> bool:
    """Whether this SDK has its aiohttp transport (openai >= 1.8x) and the packages it needs are installed."""
    if getattr(openai, "DefaultAioHttpClient", None) is None:
        return False
    try:  # its aiohttp session is made at the first request: nothing to close
        openai.DefaultAioHttpClient(verify=False)
    except (RuntimeError, ImportError):  # "you must have installed the package with the `aiohttp` extra"
        return False
    return True


def _http_client(library: HttpLibrary, trust_env: bool) -> Any:
    """The SDK's default HTTP client for ``library`` with the process's shared TLS context (None: SDK's own)."""
    make = getattr(openai, "DefaultAioHttpClient" if library == "aiohttp" else "DefaultAsyncHttpxClient", None)
    if make is None:
        return None
    context = _ssl_context(trust_env, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    return make(trust_env=trust_env, event_hooks={"response": [_answer_turn]},
                **({} if context is None else {"verify": context}))


async def _answer_turn(response: object) -> None:
    """httpx's response hook: an answer's headers are in; reading and decoding it waits for a fair share of the loop."""
    del response
    await loop_share().turn(answer=True)


@functools.lru_cache(maxsize=8)
def _ssl_context(trust_env: bool, cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext | None:
    """One TLS context per process (per CA setting), shared by every client this module makes.

    Each HTTP client otherwise builds its own, loading the whole CA bundle: 30-80 ms on the event loop for every
    new model or loop (a kernel's first run, each worker), 2 ms with the shared one. ``SSL_CERT_FILE``/``_DIR``
    are part of the key, so a changed setting gets its own context, made as the HTTP library makes it.
    """
    del cert_file, cert_dir  # only the cache key: the library reads them itself when trust_env is on
    for base in getattr(openai, "DefaultAsyncHttpxClient", object).__mro__:
        root = base.__module__.partition(".")[0]
        if root.startswith("httpx"):  # httpx, or the httpx2 that newer SDKs use
            make = getattr(importlib.import_module(root), "create_ssl_context", None)
            return make(trust_env=trust_env) if make is not None else None
    return None


#: Concurrent requests one HTTP client carries before another is opened beside it. httpx's connection pool does
#: O(connections) work on every request it adds or removes (each idle connection is probed by a syscall): 1,000
#: concurrent requests cost 8.8 s of CPU through one client, 6.0 s through eight. aiohttp's pool does not.
CLIENT_SHARE: dict[str, int] = {"httpx": 32, "aiohttp": 1_000_000}
#: At most this many clients per model and loop (beyond, the least busy one takes the request).
MAX_CLIENTS = 64


def _with_platform(client: openai.AsyncOpenAI) -> openai.AsyncOpenAI:
    """``client``, told the platform its first request would look up.

    The SDK looks the platform up (for its X-Stainless-OS header) in a worker thread during each new client's first
    request. Every request started meanwhile awaits the same lookup, holding its limiter slot, and then they all go
    at once, unpaced: a fresh kernel's first map sent 1,000 requests together (970 429s from a server that takes 20,
    1.85-2.03x the ideal). Looked up here once per process (2 ms), no request waits for it. An SDK without these
    names keeps its own way.
    """
    if getattr(client, "_platform", "") is None:
        platform = _sdk_platform()
        if platform is not None:
            client._platform = platform  # noqa: SLF001 (the SDK's own cache for exactly this value)
    return client


@functools.lru_cache(maxsize=1)
def _sdk_platform() -> Any:
    get_platform = getattr(importlib.import_module("openai._base_client"), "get_platform", None)
    return get_platform() if callable(get_platform) else None


class _ClientShards:
    """A model's HTTP clients on one loop, each carrying at most ``share`` requests at a time when it can: a
    request goes to the least busy client, a new one is opened when every client is full.

    Clients left open when the shards are dropped (a model collected while its loop runs: a notebook cell
    that makes a new agent) are closed on their loop then. The finalizer holds them till that is done, so the
    garbage collector never meets an open one among the model's garbage (aiohttp reports that as an error).
    """

    def __init__(self, make: Callable[[], openai.AsyncOpenAI], share: int) -> None:
        self._make = make
        self._share = share
        self.clients = [make()]
        self.busy = [0]
        self.closer = weakref.finalize(self, _close_later, weakref.ref(asyncio.get_running_loop()), self.clients)
        self.closer.atexit = False

    def take(self) -> int:
        index = min(range(len(self.busy)), key=self.busy.__getitem__)
        if self.busy[index] >= self._share and len(self.clients) < MAX_CLIENTS:
            self.clients.append(self._make())
            self.busy.append(0)
            index = len(self.clients) - 1
        self.busy[index] += 1
        return index

    def give_back(self, index: int) -> None:
        self.busy[index] -= 1


async def _close_shards(shards: _ClientShards) -> None:
    shards.closer.detach()
    await _close_all(shards.clients)


async def _close_all(clients: list[openai.AsyncOpenAI]) -> None:
    for client in clients:
        await client.close()


_closing: set[asyncio.Future[None]] = set()  # closings under way (a task only weakly held would be collected)


def _close_later(loop_ref: weakref.ref[asyncio.AbstractEventLoop], clients: list[openai.AsyncOpenAI]) -> None:
    loop = loop_ref()
    if loop is None or loop.is_closed():
        return

    def start() -> None:
        task = asyncio.ensure_future(_close_all(clients))
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    try:
        loop.call_soon_threadsafe(start)
    except RuntimeError:  # closed meanwhile
        pass


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _usage(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    return Usage(usage.get("prompt_tokens"), usage.get("completion_tokens"))


@functools.lru_cache(maxsize=256)
def _price(model: str, input_tokens: int, output_tokens: int, provider: str | None,
           api_url: str | None) -> float | None:
    try:
        from genai_prices import Usage as PriceUsage
        from genai_prices import calc_price
    except ImportError:  # pragma: no cover - a declared dependency; prices are optional all the same
        return None
    try:
        result = calc_price(PriceUsage(input_tokens=input_tokens, output_tokens=output_tokens), model,
                            provider_id=provider or (None if api_url else "openai"), provider_api_url=api_url)
    except (LookupError, ValueError):
        return None
    return float(result.total_price)
