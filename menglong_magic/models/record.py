"""Record a model's requests and responses to a JSON Lines cassette, and replay them without the model.

A cassette is a text file with one JSON object a line, one request/response pair per line, keys sorted::

    {"chunks": [...], "model": "gpt-4o-mini", "request": {...}, "response": {...}, "v": 1}

- ``v``: the format version (1).
- ``model``: the name of the recorded model (as panels showed it).
- ``request``: ``messages`` and ``tools`` exactly as sent (tool results as the model saw them),
  ``settings`` (temperature, tool_choice, ...; never headers or credentials) and ``stream``.
- ``response``: ``text``, ``tool_calls`` (``id``, ``name``, ``arguments`` as raw JSON text), ``usage``
  (``input_tokens``/``output_tokens``, or null when the server did not report it), ``model``,
  ``finish_reason``.
- ``chunks``: for a streamed response, its fragments in order: ``{"type": "text", "delta": ...}`` or
  ``{"type": "tool_call", "index": i, "name": ..., "arguments_delta": ...}`` (empty when not streamed).

Nothing secret is written: no API key, no ``user:password@`` of a URL, no request headers. Secrets the
wrapped model holds (its key, URL user info, header values) are also scrubbed from every recorded string.

The core stays free of IPython: this module only needs the model interface.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import threading
import urllib.parse
from collections.abc import Iterable
from dataclasses import asdict, is_dataclass
from typing import Any, Literal

from ..events import Event, Retry, TextDelta, ToolCallDelta
from ..markup import shorten
from ..usage import Usage
from .base import Emit, Model, ModelRequest, ModelResponse, ToolCall

CASSETTE_VERSION = 1

#: Request settings never written to a cassette: they carry headers or credentials, not model behaviour.
_SECRET_SETTINGS = frozenset(
    {
        "api_key",
        "authorization",
        "base_url",
        "default_headers",
        "default_query",
        "extra_headers",
        "extra_query",
        "headers",
        "http_client",
        "organization",
        "project",
        "timeout",
        "max_retries",
    }
)
_MIN_SECRET = 6  # shorter "secrets" would mangle ordinary text; real keys and tokens are far longer
_SHOWN = 80  # characters of a value quoted in a mismatch error


class ReplayError(Exception):
    """A cassette cannot answer a request (base class)."""


class CassetteFormatError(ReplayError):
    """A cassette line is not valid JSON or has an unknown format version."""


class ReplayMismatch(ReplayError):
    """Strict replay: the request differs from every unused recorded request. Names the first difference."""

    def __init__(self, message: str, *, path: str | None = None):
        super().__init__(message)
        #: Where the request first differs, e.g. ``"messages[2].content"``.
        self.path = path


class ReplayExhausted(ReplayError):
    """The model was asked more often than the cassette recorded (non-strict), or the cassette is empty."""


# --------------------------------------------------------------------------- (de)serialisation


def _plain(value: Any) -> Any:
    """``value`` as plain JSON data (dataclasses and pydantic models to dicts, anything else to str)."""

    def default(obj: Any) -> Any:
        if is_dataclass(obj) and not isinstance(obj, type):
            return asdict(obj)
        dump = getattr(obj, "model_dump", None)
        if callable(dump):
            return dump()
        if isinstance(obj, (set, frozenset, tuple)):
            return list(obj)
        return str(obj)

    return json.loads(json.dumps(value, default=default))


def _scrub(value: Any, secrets: Iterable[str]) -> Any:
    """``value`` with every occurrence of each secret replaced by ``***`` (in keys and strings)."""
    secrets = tuple(s for s in secrets if s)
    if not secrets:
        return value

    def clean(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return clean(v)
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            return {clean(str(k)): walk(x) for k, x in v.items()}
        return v

    return walk(value)


def _usage_data(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}


def _chunk_data(event: Event) -> dict[str, Any] | None:
    if isinstance(event, TextDelta):
        return {"type": "text", "delta": event.delta}
    if isinstance(event, ToolCallDelta):
        return {"type": "tool_call", "index": event.index, "name": event.name, "arguments_delta": event.arguments_delta}
    return None


def request_data(request: ModelRequest) -> dict[str, Any]:
    """The recorded form of a request: messages, tools, settings (no credentials/headers), stream."""
    settings = {k: v for k, v in (request.settings or {}).items() if k.lower() not in _SECRET_SETTINGS}
    return _plain(
        {"messages": request.messages, "tools": request.tools, "settings": settings, "stream": bool(request.stream)}
    )


def response_data(response: ModelResponse) -> dict[str, Any]:
    """The recorded form of a response."""
    return _plain(
        {
            "text": response.text,
            "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments,
                            **({"extra": c.extra} if c.extra else {})} for c in response.tool_calls],
            "usage": _usage_data(response.usage),
            "model": response.model,
            "finish_reason": response.finish_reason,
            **({"note": response.note} if response.note else {}),
        }
    )


def dump_line(pair: dict[str, Any]) -> str:
    """One cassette line (sorted keys, no trailing newline)."""
    return json.dumps(pair, sort_keys=True, ensure_ascii=False)


def _model_secrets(model: Any, depth: int = 0) -> set[str]:
    """Secret strings a model holds: its API key, URL user info, header values (also of wrapped models)."""
    found: set[str] = set()
    if model is None or depth > 3:
        return found
    for attr in ("_api_key", "api_key"):
        key = getattr(model, attr, None)
        if isinstance(key, str):
            found.add(key)
    base_url = getattr(model, "base_url", None)
    if isinstance(base_url, str):
        parts = urllib.parse.urlsplit(base_url)
        for part in (parts.username, parts.password):
            if part:
                found.add(part)
                found.add(urllib.parse.unquote(part))
    for attr in ("default_headers", "_default_headers", "headers", "_headers"):
        found |= _header_values(getattr(model, attr, None))
    settings = getattr(model, "settings", None)
    if isinstance(settings, dict):
        for key in ("extra_headers", "default_headers", "headers"):
            found |= _header_values(settings.get(key))
    found |= _model_secrets(getattr(model, "model", None), depth + 1)  # a wrapper's wrapped model
    return found


def _header_values(headers: Any) -> set[str]:
    found: set[str] = set()
    if not isinstance(headers, dict):
        return found
    for value in headers.values():
        if isinstance(value, str):
            found.add(value)
            scheme, _, token = value.partition(" ")
            if token and scheme.lower() in ("bearer", "basic", "token"):
                found.add(token.strip())  # the token alone may appear elsewhere too
    return found


# --------------------------------------------------------------------------- recording


class Recorder(Model):
    """Wraps a model and appends every answered request to a JSON Lines cassette at ``path``.

    ``model`` is a :class:`Model` or a model spec (see ``resolve_model``). Each successful request
    becomes one line (request, response, streamed chunks); a failed request writes nothing, and
    chunks streamed before a retry are dropped (as the panel drops them). ``mode="w"`` starts a new
    cassette (truncates ``path`` now); the default ``"a"`` appends. The wrapper behaves like the wrapped
    model: same ``name``, events passed through unchanged. Safe to share between concurrent requests.
    """

    def __init__(self, model: Model | str | None, path: str | os.PathLike[str], *, mode: Literal["a", "w"] = "a"):
        if not isinstance(model, Model):
            from . import resolve_model

            model = resolve_model(model)
        if mode not in ("a", "w"):
            raise ValueError("mode must be 'a' (append) or 'w' (start a new cassette)")
        self.model = model
        self.name = model.name
        self.path = pathlib.Path(path).expanduser()
        self.recorded = 0  # lines written by this recorder
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if mode == "w":
            self.path.write_text("", encoding="utf-8")
        else:
            self.path.touch()  # an existing cassette is kept, a new one exists (empty) from now on

    def __repr__(self) -> str:
        return f"Recorder({self.model!r}, {str(self.path)!r})"

    def __getattr__(self, name: str) -> Any:
        # Anything else (aclose, request_model, ...) is the wrapped model's. Private names are not forwarded.
        if name.startswith("_") or name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    async def request(self, request: ModelRequest, emit: Emit) -> ModelResponse:
        chunks: list[dict[str, Any]] = []

        def capture(event: Event) -> None:
            if isinstance(event, Retry):
                chunks.clear()  # the attempt's fragments are void, as in the panel
            else:
                chunk = _chunk_data(event)
                if chunk is not None:
                    chunks.append(chunk)
            emit(event)

        response = await self.model.request(request, capture)
        self._write(request, response, chunks)
        return response

    def _write(self, request: ModelRequest, response: ModelResponse, chunks: list[dict[str, Any]]) -> None:
        secrets = _model_secrets(self.model)
        for key in ("extra_headers", "default_headers", "headers"):
            secrets |= _header_values((request.settings or {}).get(key))
        secrets = {s for s in secrets if len(s) >= _MIN_SECRET}
        pair = {
            "v": CASSETTE_VERSION,
            "model": self.name,
            "request": request_data(request),
            "response": response_data(response),
            "chunks": _plain(chunks),
        }
        line = dump_line(_scrub(pair, sorted(secrets, key=len, reverse=True)))
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            self.recorded += 1


# --------------------------------------------------------------------------- replay


def load_cassette(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The pairs of a cassette, checked (valid JSON, known version, request and response present)."""
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no cassette at {str(path)!r} (record one with Recorder(model, path) or --record)")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            pair = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CassetteFormatError(f"{path.name} line {number}: not JSON ({exc.msg})") from None
        if not isinstance(pair, dict) or pair.get("v") != CASSETTE_VERSION:
            version = pair.get("v") if isinstance(pair, dict) else None
            raise CassetteFormatError(
                f"{path.name} line {number}: cassette format version {version!r}, this version reads {CASSETTE_VERSION}"
            )
        if not isinstance(pair.get("request"), dict) or not isinstance(pair.get("response"), dict):
            raise CassetteFormatError(f"{path.name} line {number}: needs a 'request' and a 'response' object")
        pairs.append(pair)
    return pairs


def first_difference(recorded: Any, actual: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first place where two JSON values differ: ``(path, recorded, actual)``, or None if equal.

    Paths look like ``messages[2].content`` or ``tools[0].function.name``; a missing list item or key
    shows as ``<missing>``.
    """
    if isinstance(recorded, dict) and isinstance(actual, dict):
        for key in sorted(set(recorded) | set(actual), key=lambda k: (k not in recorded, str(k))):
            sub = f"{path}.{key}" if path else str(key)
            if key not in recorded:
                return sub, _MISSING, actual[key]
            if key not in actual:
                return sub, recorded[key], _MISSING
            found = first_difference(recorded[key], actual[key], sub)
            if found:
                return found
        return None
    if isinstance(recorded, list) and isinstance(actual, list):
        for i in range(max(len(recorded), len(actual))):
            sub = f"{path}[{i}]"
            if i >= len(recorded):
                return sub, _MISSING, actual[i]
            if i >= len(actual):
                return sub, recorded[i], _MISSING
            found = first_difference(recorded[i], actual[i], sub)
            if found:
                return found
        return None
    if recorded == actual and type(recorded) is type(actual):
        return None
    return path or "<request>", recorded, actual


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def _shown(value: Any) -> str:
    return shorten(repr(value), _SHOWN)


def _matched_part(data: dict[str, Any]) -> dict[str, Any]:
    return {"messages": data.get("messages", []), "tools": data.get("tools", [])}


def _key(data: dict[str, Any]) -> str:
    """A canonical text of the matched part of a request (equal requests, equal keys)."""
    return json.dumps(_matched_part(data), sort_keys=True, ensure_ascii=False)


def _leading_equal(recorded: list[Any], actual: list[Any]) -> int:
    n = 0
    for a, b in zip(recorded, actual, strict=False):
        if a != b:
            break
        n += 1
    return n


class Replay(Model):
    """Answers from a cassette written by :class:`Recorder`: no server, no key, same answers.

    ``strict=True``: a request must equal a recorded one (messages and tools); it is answered by the
    first unused recorded pair with an equal request, so concurrent requests (batches) replay
    deterministically; once all equal pairs are used, the first of them answers again (the same
    question gets the same answer: a cell run twice). A request equal to none raises
    :class:`ReplayMismatch` naming the first difference from the closest recorded request (e.g.
    ``messages[2].content``). ``strict=False``: pairs answer in recorded order, whatever is asked.

    Streamed requests replay the recorded chunks one by one as ``TextDelta``/``ToolCallDelta`` events,
    ``chunk_delay`` seconds apart (0: just yield to the loop), so a live panel shows the stream again.
    In order (non-strict), asking more often than recorded raises :class:`ReplayExhausted`; ``unused`` and
    ``assert_all_used()`` tell whether the run used the whole cassette.
    """

    def __init__(self, path: str | os.PathLike[str], strict: bool = True, *, chunk_delay: float = 0.0):
        self.path = pathlib.Path(path).expanduser()
        self.strict = strict
        self.chunk_delay = chunk_delay
        self.pairs = load_cassette(self.path)
        self.name = f"replay:{self.path.name}"
        #: Name of the model the cassette was recorded from ("" for an empty cassette).
        self.recorded_model: str = next((str(p.get("model") or "") for p in self.pairs if p.get("model")), "")
        self.requests: list[ModelRequest] = []
        self._used = [False] * len(self.pairs)
        self._next = 0
        self._lock = threading.Lock()
        self._by_request: dict[str, list[int]] = {}  # strict matching is a lookup, not a scan
        for i, pair in enumerate(self.pairs):
            self._by_request.setdefault(_key(pair["request"]), []).append(i)

    def __repr__(self) -> str:
        recorded = f", recorded from {self.recorded_model!r}" if self.recorded_model else ""
        return f"Replay({str(self.path)!r}, strict={self.strict}{recorded})"

    @property
    def unused(self) -> list[dict[str, Any]]:
        """Recorded pairs no request has used yet."""
        with self._lock:
            return [p for p, used in zip(self.pairs, self._used, strict=True) if not used]

    def assert_all_used(self) -> None:
        left = len(self.unused)
        if left:
            raise AssertionError(f"{left} of {len(self.pairs)} recorded request(s) in {self.path.name} never replayed")

    def reset(self) -> None:
        """Make every recorded pair available again (to replay the cassette once more)."""
        with self._lock:
            self._used = [False] * len(self.pairs)
            self._next = 0
            self.requests.clear()

    def _take(self, request: ModelRequest) -> dict[str, Any]:
        data = request_data(request)
        actual = _matched_part(data)
        with self._lock:
            self.requests.append(request)
            if not self.strict:
                if self._next >= len(self.pairs):
                    raise ReplayExhausted(self._exhausted_message())
                index = self._next
                self._next += 1
                self._used[index] = True
                return self.pairs[index]
            if not self.pairs:
                raise ReplayExhausted(self._exhausted_message())
            equal = self._by_request.get(_key(data), [])
            unused = [i for i in equal if not self._used[i]]
            if unused or equal:
                # An identical request asked again (a notebook cell run twice) gets the same answer again.
                index = (unused or equal)[0]
                self._used[index] = True
                return self.pairs[index]
            candidates = [i for i, used in enumerate(self._used) if not used] or list(range(len(self.pairs)))
            raise self._mismatch(actual, candidates)

    def _exhausted_message(self) -> str:
        return (
            f"the cassette {self.path.name} has {len(self.pairs)} recorded request(s), all replayed; "
            f"this run asked for more (record it again?)"
        )

    def _mismatch(self, actual: dict[str, Any], candidates: list[int]) -> ReplayMismatch:
        def closeness(i: int) -> tuple[int, int, int]:
            recorded = _matched_part(self.pairs[i]["request"])
            return (
                int(recorded["tools"] == actual["tools"]),
                _leading_equal(recorded["messages"], actual["messages"]),
                -i,
            )

        best = max(candidates, key=closeness)
        found = first_difference(_matched_part(self.pairs[best]["request"]), actual)
        assert found is not None  # best differs, or it would have matched
        where, recorded, got = found
        return ReplayMismatch(
            f"request does not match the cassette {self.path.name} (closest: recorded request {best + 1} of "
            f"{len(self.pairs)}): first difference at {where}: recorded {_shown(recorded)}, got {_shown(got)}",
            path=where,
        )

    async def request(self, request: ModelRequest, emit: Emit) -> ModelResponse:
        pair = self._take(request)
        data = pair["response"]
        if request.stream:
            chunks = pair.get("chunks") or []
            if not chunks and data.get("text"):  # recorded without streaming: one fragment
                chunks = [{"type": "text", "delta": data["text"]}]
            for chunk in chunks:
                await asyncio.sleep(self.chunk_delay)
                event = self._event(request, chunk)
                if event is not None:
                    emit(event)
        usage = data.get("usage")
        return ModelResponse(
            text=data.get("text"),
            tool_calls=[
                ToolCall(id=str(c.get("id") or ""), name=str(c.get("name") or ""),
                         arguments=str(c.get("arguments") or ""),
                         extra=c["extra"] if isinstance(c.get("extra"), dict) else None)
                for c in data.get("tool_calls") or []
            ],
            usage=None if usage is None else Usage(usage.get("input_tokens"), usage.get("output_tokens")),
            model=str(data.get("model") or self.recorded_model or self.name),
            finish_reason=data.get("finish_reason"),
            note=data["note"] if isinstance(data.get("note"), str) else None,
        )

    @staticmethod
    def _event(request: ModelRequest, chunk: dict[str, Any]) -> Event | None:
        if chunk.get("type") == "text":
            return TextDelta(request.run_id, iteration=request.iteration, delta=str(chunk.get("delta") or ""))
        if chunk.get("type") == "tool_call":
            return ToolCallDelta(
                request.run_id,
                iteration=request.iteration,
                index=int(chunk.get("index") or 0),
                name=chunk.get("name"),
                arguments_delta=str(chunk.get("arguments_delta") or ""),
            )
        return None


__all__ = [
    "CASSETTE_VERSION",
    "CassetteFormatError",
    "Recorder",
    "Replay",
    "ReplayError",
    "ReplayExhausted",
    "ReplayMismatch",
    "first_difference",
    "load_cassette",
]
