"""Adaptive concurrency for model requests: full speed until the server pushes back, then AIMD.

``ChatAgent(max_concurrency="auto")`` (the default) bounds the agent's model requests with one
:class:`AdaptiveLimiter` per event loop instead of a fixed semaphore:

- it starts wide open (``maximum`` requests in flight, the HTTP client's own connection limit), so a
  batch sends what a hand-written ``asyncio.gather`` would; no window to grow into on a server that
  never needed one;
- evidence of congestion, a 429 or 503 answer or a refused connection, sets the window to ``decrease``
  times the requests in flight at that moment (each rejected request gives its slot back as it fails,
  so a burst of rejections from one overshoot converges on what the server accepted, in one round
  trip); from then on the window grows by one slot per round trip (``1/limit`` per success) while it is
  full (a window the client does not fill is not grown: no evidence it would be accepted);
- it never goes below ``minimum`` nor above ``maximum``;
- ``Retry-After`` is honoured by the request that got it (the model waits it out before retrying,
  and gives its slot back meanwhile, see :class:`~menglong_magic.models.base.RequestGate`); when the
  window is already at ``minimum`` the server is limiting by time, not concurrency, and the limiter
  admits nothing new until the Retry-After has passed;
- what it learned is remembered per endpoint (base URL + model) for the rest of the process: a later
  limiter for the same endpoint (another agent, another event loop, a later batch) starts at the
  learned window instead of rediscovering it with a burst of 429s.

An explicit ``initial`` starts there and, until the first push-back, adds one slot per success (the
window doubles every round trip). A user who wants a fixed bound passes an integer
``max_concurrency`` instead, which is a plain semaphore: exactly that many, never adapted.

Why not a leaky bucket (``aiolimiter``)? A bucket needs the rate up front; a concurrency window
finds it from the server's answers, and concurrency (not rate) is what a loopback or self-hosted
server limits. The models learn about rejections through :data:`~menglong_magic.models.base.current_gate`
(set while a request holds a slot), so every request the agent makes, batch item or not, is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..models.base import current_gate

#: HTTP statuses that mean "too much, slow down".
CONGESTION_STATUSES = (429, 503)
#: The default (and starting) window: the connection limit of the openai SDK's HTTP client, so "auto"
#: never queues a request the client would have sent at once.
DEFAULT_MAXIMUM = 1000

# Windows learned per endpoint (see endpoint_key), for the whole process; written by any loop's limiter.
_learned: dict[str, float] = {}
_learned_lock = threading.Lock()


def endpoint_key(model: Any) -> str | None:
    """What a learned window is remembered under: the model's base URL and the model it asks for."""
    base_url = getattr(model, "base_url", None)
    name = getattr(model, "request_model", None) or getattr(model, "name", None)
    if base_url is None and name is None:
        return None
    return f"{base_url or type(model).__name__} {name}"


def learned_limit(endpoint: str | None) -> float | None:
    """The window learned for ``endpoint`` in this process (None: it never pushed back)."""
    if endpoint is None:
        return None
    with _learned_lock:
        return _learned.get(endpoint)


def forget_learned(endpoint: str | None = None) -> None:
    """Forget what was learned about ``endpoint`` (every endpoint when None): the next limiter starts wide open."""
    with _learned_lock:
        if endpoint is None:
            _learned.clear()
        else:
            _learned.pop(endpoint, None)


class AdaptiveLimiter:
    """An AIMD concurrency window for one event loop; ``async with limiter:`` holds one slot."""

    def __init__(self, initial: int | None = None, *, minimum: int = 1, maximum: int = DEFAULT_MAXIMUM,
                 decrease: float = 0.85, endpoint: str | None = None):
        self.endpoint = endpoint
        learned = learned_limit(endpoint) if initial is None else None
        start = float(maximum if initial is None else initial)
        if learned is not None:
            start = min(max(learned, float(minimum)), float(maximum))
        if not 1 <= minimum <= start <= maximum:
            raise ValueError("need 1 <= minimum <= initial <= maximum")
        if not 0 < decrease < 1:
            raise ValueError("decrease must be between 0 and 1")
        self.minimum, self.maximum, self.decrease = minimum, maximum, decrease
        self._limit = start
        self.in_flight = 0
        #: Until the server first pushes back, an explicit ``initial`` grows by one slot per success.
        self.slow_start = learned is None
        #: How often the server pushed back (429/503/refused), and how often the limit was cut.
        self.congestion_signals = 0
        self.decreases = 0
        self.peak_in_flight = 0
        self._holders: dict[asyncio.Task[Any] | None, Any] = {}  # task -> its current_gate token
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._paused_until = 0.0
        self._wake_timer: asyncio.TimerHandle | None = None
        self._listeners: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return (f"AdaptiveLimiter(limit={self.limit}, in_flight={self.in_flight}, peak={self.peak_in_flight}, "
                f"congestion_signals={self.congestion_signals}, decreases={self.decreases})")

    def bind(self, endpoint: str | None) -> None:
        """Learn and remember under ``endpoint`` from now on; a limiter that has not been pushed back yet and
        started wide open takes the window already learned for it."""
        if self.endpoint is not None or endpoint is None:
            return
        self.endpoint = endpoint
        learned = learned_limit(endpoint)
        if learned is not None and self.slow_start and self._limit >= self.maximum:
            self._limit = min(max(learned, float(self.minimum)), float(self.maximum))
            self.slow_start = False

    @property
    def limit(self) -> int:
        """The current window: how many requests may be in flight."""
        return max(self.minimum, int(self._limit))

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` whenever the window grows or a slot frees (used by map admission)."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    # ------------------------------------------------------------------ slots
    async def acquire(self) -> None:
        while not self._free():
            future = asyncio.get_running_loop().create_future()
            self._waiters.append(future)
            try:
                await future
            except asyncio.CancelledError:
                if future in self._waiters:
                    self._waiters.remove(future)
                elif future.done() and not future.cancelled():
                    self._wake()  # we were woken but leave: pass the turn on
                raise
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def release(self) -> None:
        self.in_flight = max(self.in_flight - 1, 0)
        self._wake()

    def _free(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        return time.monotonic() >= self._paused_until

    def _wake(self) -> None:
        pause = self._paused_until - time.monotonic()
        if pause > 0:
            if self._wake_timer is None:
                loop = asyncio.get_running_loop()
                self._wake_timer = loop.call_later(pause, self._timer_wake)
            return
        free = self.limit - self.in_flight
        while free > 0 and self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)
                free -= 1
        for callback in tuple(self._listeners):
            callback()

    def _timer_wake(self) -> None:
        self._wake_timer = None
        self._wake()

    async def __aenter__(self) -> AdaptiveLimiter:
        await self.acquire()
        task = asyncio.current_task()
        token = current_gate.set(self)
        self._holders[task] = token
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        task = asyncio.current_task()
        held = self._holders.pop(task, None)
        if held is not None:
            with contextlib.suppress(ValueError):
                current_gate.reset(held)
            if exc_type is None:
                self._succeeded()
            self.release()
        # else: the slot was given back in released() and never re-acquired (cancelled while waiting)

    # ------------------------------------------------------------------ RequestGate (called by the models)
    def attempt_failed(self, status: int | None, retry_after: float | None, *, refused: bool = False) -> None:
        """A request attempt holding a slot failed with HTTP ``status`` (None: no HTTP answer; ``refused``:
        the connection was refused, which a server out of sockets or workers also says)."""
        if status not in CONGESTION_STATUSES and not refused:
            return
        self.congestion_signals += 1
        if self.limit <= self.minimum and retry_after:
            # Already at the floor: the server limits by time; hold new requests until it says so.
            self._paused_until = max(self._paused_until, time.monotonic() + retry_after)
        self.slow_start = False
        # What was in flight when the server said no (this request included) was too much: cut from that,
        # not from the window (which may have grown past it). The requests rejected in the same burst give
        # their slots back as they fail, so the burst's last rejection sees about what the server took.
        target = max(float(self.minimum), min(self._limit, float(self.in_flight) * self.decrease))
        if target < self._limit:
            self._limit = target
            self.decreases += 1
        self._remember()

    @contextlib.asynccontextmanager
    async def released(self) -> AsyncIterator[None]:
        """Give this request's slot back while it waits (a retry back-off); take one again after."""
        task = asyncio.current_task()
        held = self._holders.pop(task, None)
        if held is None:
            yield
            return
        self.release()
        try:
            yield
        finally:
            await self.acquire()  # if cancelled here, __aexit__ finds no holder and releases nothing
            self._holders[task] = held

    def _succeeded(self) -> None:
        if self.in_flight < self.limit:
            return  # the window was not full: a success says nothing about a larger one (RFC 7661)
        if self.slow_start:
            self._limit += 1.0
        else:
            self._limit += 1.0 / max(self._limit, 1.0)
        self._limit = min(self._limit, float(self.maximum))
        if not self.slow_start:
            self._remember()

    def _remember(self) -> None:
        if self.endpoint is not None:
            with _learned_lock:
                _learned[self.endpoint] = self._limit
