"""Models for tests and demos that need no server: a strict script, and a schema-driven offline model."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ..events import TextDelta
from ..usage import Usage
from .base import Emit, Model, ModelRequest, ModelResponse, ToolCall


class ScriptExhausted(AssertionError):
    """A ScriptedModel was called more often than it was scripted."""


@dataclass
class Step:
    """One scripted model answer: text and/or tool calls, optional delay and usage."""

    text: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    delay: float = 0.0
    usage: Usage | None = None


def reply(text: str, *, delay: float = 0.0, usage: Usage | None = None) -> Step:
    """A step that answers with text (no tool calls: the run ends)."""
    return Step(text=text, delay=delay, usage=usage)


def call(name: str, arguments: dict[str, Any] | str | None = None, *, id: str | None = None) -> ToolCall:
    """A tool call for :func:`calls`; a str ``arguments`` is sent verbatim (malformed JSON tests)."""
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
    return ToolCall(id=id or "", name=name, arguments=raw)


def calls(*tool_calls: ToolCall, text: str | None = None, delay: float = 0.0, usage: Usage | None = None) -> Step:
    """A step that asks for one or more tool calls."""
    return Step(text=text, tool_calls=list(tool_calls), delay=delay, usage=usage)


ScriptItem = Step | str | BaseException | Callable[[ModelRequest], Any]


class ScriptedModel(Model):
    """A strict FIFO of scripted steps.

    Each step is a :class:`Step` (see :func:`reply`, :func:`calls`), a plain ``str`` (a text answer),
    an exception instance (raised), or a function ``f(request) -> step`` (sync or async). Calling the
    model more often than scripted raises :class:`ScriptExhausted`; ``unused`` lists steps left over;
    ``requests`` records every request.
    """

    def __init__(self, steps: Iterable[ScriptItem] = (), *, name: str = "scripted", stream_chunk: int = 0):
        self.name = name
        self._steps: deque[ScriptItem] = deque(steps)
        self.requests: list[ModelRequest] = []
        self._stream_chunk = stream_chunk  # >0: emit text deltas of this many characters
        self._lock = threading.Lock()
        self._counter = 0

    def add(self, *steps: ScriptItem) -> ScriptedModel:
        with self._lock:
            self._steps.extend(steps)
        return self

    @property
    def unused(self) -> list[ScriptItem]:
        return list(self._steps)

    def assert_all_used(self) -> None:
        if self._steps:
            raise AssertionError(f"{len(self._steps)} scripted step(s) never used: {list(self._steps)!r}")

    async def request(self, request: ModelRequest, emit: Emit) -> ModelResponse:
        with self._lock:
            self.requests.append(request)
            if not self._steps:
                raise ScriptExhausted(f"ScriptedModel called {len(self.requests)} times, scripted for fewer")
            item = self._steps.popleft()
        if callable(item) and not isinstance(item, (Step, BaseException)):
            item = item(request)
            if inspect.isawaitable(item):
                item = await item
        if isinstance(item, BaseException):
            raise item
        step = Step(text=item) if isinstance(item, str) else item
        if step.delay:
            await asyncio.sleep(step.delay)
        if step.text and (request.stream or self._stream_chunk):
            size = self._stream_chunk or 8
            for i in range(0, len(step.text), size):
                emit(TextDelta(request.run_id, iteration=request.iteration, delta=step.text[i : i + size]))
        tool_calls = []
        for tc in step.tool_calls:
            with self._lock:
                self._counter += 1
                n = self._counter
            tool_calls.append(replace(tc, id=tc.id or f"call_{n}"))  # keeps a problem found in its arguments
        return ModelResponse(
            text=step.text,
            tool_calls=tool_calls,
            usage=step.usage,
            model=self.name,
            finish_reason="tool_calls" if tool_calls else "stop",
        )
