"""The model interface every backend implements, and the request/response types."""

from __future__ import annotations

import abc
import contextvars
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..events import Event
from ..usage import Usage
from .parts import check_arguments, clean_text


@dataclass(frozen=True)
class ToolCall:
    """One tool call requested by the model.

    ``arguments`` is always a JSON object text: ``""``/``null`` become ``"{}"``, and text that is not a JSON
    object (cut off, invalid) becomes ``"{}"`` with ``problem`` saying what was wrong. Such a call is not
    run: its result is that error, fed back to the model. Names and ids are valid Unicode.
    """

    id: str
    name: str
    arguments: str
    problem: str | None = None
    #: Provider fields of the call that must go back with it in the history (Gemini's thought signature in
    #: ``extra_content``); JSON values only.
    extra: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    def __post_init__(self) -> None:
        arguments, problem = check_arguments(self.arguments)
        object.__setattr__(self, "arguments", arguments)
        object.__setattr__(self, "problem", self.problem or problem)
        object.__setattr__(self, "name", clean_text(self.name or ""))
        object.__setattr__(self, "id", clean_text(self.id or ""))

    def to_message(self) -> dict[str, Any]:
        return {**(self.extra or {}), "id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ModelRequest:
    """What the agent asks of a model for one iteration."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # temperature, tool_choice, ...
    stream: bool = False
    run_id: str = ""
    iteration: int = 0
    #: Per-request timeout in seconds and retry count for transient errors (None: the model's own).
    timeout: float | None = None
    max_retries: int | None = None


@dataclass
class ModelResponse:
    """The model's answer for one iteration."""

    text: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage | None = None  # None: the server did not report usage (unknown, not zero)
    model: str = ""
    finish_reason: str | None = None
    #: What the model layer says about this answer (the embedded model: "answer assembled from the tool results: ...").
    note: str | None = None

    def __post_init__(self) -> None:
        if self.text is not None:
            self.text = clean_text(self.text)

    def to_message(self) -> dict[str, Any]:
        """The OpenAI chat-format assistant message for the history."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = [call.to_message() for call in self.tool_calls]
        return message


Emit = Callable[[Event], None]


class RequestGate(Protocol):
    """The concurrency limiter a model request runs under (an adaptive one: ``agent.limiter()``).

    A model that retries reports each failed attempt (HTTP ``status`` or None, the server's
    ``retry_after`` in seconds or None) and waits out its back-off inside ``released()``, which gives
    the request's slot back meanwhile.
    """

    def attempt_failed(self, status: int | None, retry_after: float | None, *, refused: bool = False) -> None: ...

    def released(self) -> AbstractAsyncContextManager[None]: ...


#: The gate of the model request running in this task (set by the limiter while it holds a slot).
current_gate: contextvars.ContextVar[RequestGate | None] = contextvars.ContextVar("menglong_request_gate",
                                                                                   default=None)


class Model(abc.ABC):
    """A chat model backend. Implementations must be safe to share between concurrent requests."""

    #: Shown in panels and results.
    name: str = "model"
    #: Whether the server takes ``response_format`` (None: not known yet; the agent learns it).
    supports_response_format: bool | None = None
    #: Whether images a tool attached (``RunContext.attach``, e.g. a figure) are sent to the model as image parts
    #: of a user message after the tool results. Off unless set (``agent.model.accepts_images = True``).
    accepts_images: bool = False

    @abc.abstractmethod
    async def request(self, request: ModelRequest, emit: Emit) -> ModelResponse:
        """Answer one request. ``emit`` takes streaming (TextDelta, ToolCallDelta) and Retry events."""

    def price(self, usage: Usage) -> float | None:
        """The request's price in US dollars, or None when it is not known (never a guess)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
