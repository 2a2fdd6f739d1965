"""Typed run events: the one stream every UI (panel, text view) renders.

Events are small frozen dataclasses. An :class:`EventBus` fans them out to callbacks and to async
iterators. Nothing here knows about IPython or widgets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .agent.result import RunResult
    from .usage import Usage

log = logging.getLogger("menglong_magic")

StopReason = Literal["completed", "max_iterations", "timeout", "cancelled", "error", "usage_limit", "output_invalid",
                     "no_answer"]


@dataclass(frozen=True)
class Event:
    """Base class of all events. ``run_id`` groups the events of one run (or batch, or workflow)."""

    run_id: str
    timestamp: float = field(default_factory=time.time, kw_only=True)


@dataclass(frozen=True)
class RunStarted(Event):
    agent: str
    model: str
    mode: str
    task: str
    max_iterations: int
    kind: str = "run"  # "run" | "chat" | "batch_item" | "workflow_step"


@dataclass(frozen=True)
class RunFinished(Event):
    result: RunResult


@dataclass(frozen=True)
class IterationStarted(Event):
    iteration: int
    max_iterations: int


@dataclass(frozen=True)
class IterationFinished(Event):
    iteration: int
    duration: float
    tool_calls: int


@dataclass(frozen=True)
class ModelRequestStarted(Event):
    iteration: int
    messages: int
    tools: int


@dataclass(frozen=True)
class ModelResponseReceived(Event):
    iteration: int
    text: str | None
    tool_calls: tuple[str, ...]
    usage: Usage | None
    duration: float
    cost: float | None = None  # US dollars, when the model and provider are known to genai-prices
    note: str | None = None  # the model layer's word on this answer (ModelResponse.note)


@dataclass(frozen=True)
class TextDelta(Event):
    iteration: int
    delta: str


@dataclass(frozen=True)
class ToolCallDelta(Event):
    """A fragment of a streamed tool call (name known, arguments still arriving)."""

    iteration: int
    index: int
    name: str | None
    arguments_delta: str


@dataclass(frozen=True)
class ToolCallStarted(Event):
    iteration: int
    call_id: str
    name: str  # the tool's own name
    arguments: Any  # the parsed arguments (a dict)
    #: The name the API saw, when the tool's own name is not valid there (``fs.read`` → ``fs_read``).
    api_name: str | None = None


@dataclass(frozen=True)
class ToolCallFinished(Event):
    iteration: int
    call_id: str
    name: str
    ok: bool
    result: str | None
    error: str | None
    duration: float
    status: str = ""  # "ok" | "error" | "cancelled" | "denied" ("" from older producers: see ``ok``)


@dataclass(frozen=True)
class ToolProgress(Event):
    """A running tool reported progress through ``RunContext.progress(done, total, note)``."""

    iteration: int
    call_id: str
    name: str
    done: float
    total: float | None
    note: str


@dataclass(frozen=True)
class ToolAttachment(Event):
    """A running tool attached a rich output to its call (``RunContext.attach``): e.g. a figure as PNG.

    Shown on the call's card; not sent to the model (the tool's text result says what was attached).
    """

    iteration: int
    call_id: str
    name: str
    mime: str
    data: str  # base64
    description: str = ""


@dataclass(frozen=True)
class TurnWaiting(Event):
    """The run waits for earlier turns of the same conversation to commit (``ahead`` of them)."""

    ahead: int


@dataclass(frozen=True)
class TurnResumed(Event):
    """The run got its turn after waiting ``waited`` seconds."""

    waited: float


@dataclass(frozen=True)
class ApprovalRequested(Event):
    """A tool call waits for a person's (or a callback's) yes before it runs."""

    iteration: int
    call_id: str
    name: str
    arguments: Any
    agent: str


@dataclass(frozen=True)
class ApprovalDecided(Event):
    """``approved`` or denied (``reason``) by ``by``: "callback" | "panel" | "prompt" | "timeout" | "policy"."""

    iteration: int
    call_id: str
    name: str
    approved: bool
    reason: str | None
    by: str


@dataclass(frozen=True)
class Retry(Event):
    attempt: int
    delay: float
    error: str


@dataclass(frozen=True)
class ModelStarting(Event):
    """A model backend is getting ready before its first answer (the embedded llama.cpp server starting)."""

    model: str
    note: str  # what is starting, e.g. "starting the local model (llama.cpp, SmolLM2-135M-Instruct)"


@dataclass(frozen=True)
class ModelReady(Event):
    """The backend announced by :class:`ModelStarting` is ready, ``seconds`` after it started."""

    model: str
    seconds: float
    note: str  # e.g. "local model started in 3.2s" or "local model: using the server another kernel started"


@dataclass(frozen=True)
class BatchStarted(Event):
    messages: tuple[str, ...]
    mode: str = "parallel"  # "parallel" | "sequential"


@dataclass(frozen=True)
class BatchItemStarted(Event):
    index: int
    message: str
    item_run_id: str


@dataclass(frozen=True)
class BatchItemFinished(Event):
    index: int
    status: str  # "ok" | "error" | "cancelled" | "skipped"
    duration: float
    result: str | None
    error: str | None


@dataclass(frozen=True)
class BatchFinished(Event):
    ok: int
    failed: int
    duration: float


@dataclass(frozen=True)
class WorkflowStepStarted(Event):
    index: int
    name: str


@dataclass(frozen=True)
class WorkflowStepFinished(Event):
    index: int
    name: str
    status: str  # "ok" | "error" | "skipped"
    output: Any
    error: str | None
    duration: float


@dataclass(frozen=True)
class WorkflowFinished(Event):
    ok: int
    failed: int
    duration: float


EventCallback = Callable[[Event], Any]


class EventSubscription(AsyncIterator[Event]):
    """An async iterator over events, ending when closed (``async with`` closes it)."""

    _CLOSED = object()

    def __init__(self, bus: EventBus, run_id: str | None) -> None:
        self._bus = bus
        self._run_id = run_id
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._unsubscribe = bus.subscribe(self._put)

    def _put(self, event: Event) -> None:
        if self._run_id is None or event.run_id == self._run_id:
            self._deliver(event)

    def _deliver(self, item: Any) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._queue.put_nowait(item)
        else:  # emitted from another thread or loop
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def close(self) -> None:
        self._unsubscribe()
        self._deliver(self._CLOSED)

    async def __anext__(self) -> Event:
        item = await self._queue.get()
        if item is self._CLOSED:
            raise StopAsyncIteration
        return item

    async def __aenter__(self) -> EventSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Fans events out to subscribers. A failing subscriber is logged, never breaks the run."""

    def __init__(self) -> None:
        self._subscribers: list[EventCallback] = []

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(event)`` for every event; returns a function that unsubscribes."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def stream(self, run_id: str | None = None) -> EventSubscription:
        """An async iterator of events (optionally of one run): ``async with bus.stream() as s``."""
        return EventSubscription(self, run_id)

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscribers)

    def emit(self, event: Event) -> None:
        for callback in tuple(self._subscribers):
            dispatch(callback, event)


def dispatch(callback: EventCallback, event: Event) -> None:
    """Call one subscriber, isolating the run from its failures."""
    try:
        callback(event)
    except Exception:  # a broken view must not break the agent
        log.exception("event subscriber %r failed on %s", callback, type(event).__name__)


__all__ = [
    "ApprovalDecided",
    "ApprovalRequested",
    "BatchFinished",
    "BatchItemFinished",
    "BatchItemStarted",
    "BatchStarted",
    "Event",
    "EventBus",
    "EventCallback",
    "EventSubscription",
    "IterationFinished",
    "IterationStarted",
    "ModelReady",
    "ModelRequestStarted",
    "ModelResponseReceived",
    "ModelStarting",
    "Retry",
    "RunFinished",
    "RunStarted",
    "StopReason",
    "TextDelta",
    "ToolAttachment",
    "ToolCallDelta",
    "ToolCallFinished",
    "ToolCallStarted",
    "ToolProgress",
    "TurnResumed",
    "TurnWaiting",
    "WorkflowFinished",
    "WorkflowStepFinished",
    "WorkflowStepStarted",
]
