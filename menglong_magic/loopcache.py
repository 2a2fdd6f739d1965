"""One value per event loop (an HTTP client, a limiter, a lock) that lives no longer than its loop.

A ``WeakKeyDictionary`` keyed by loop leaks when the value refers to the loop (client → pool → transport →
loop): the loop can never be collected, and neither can the sockets. :class:`PerLoop` keys by ``id(loop)``
and drops a loop's value when the loop shuts down: an async generator started on the loop is closed by
``loop.shutdown_asyncgens()`` (which ``asyncio.run`` and :mod:`.agent.sync` call before closing a loop), and
its ``finally`` closes the value there, on its own loop. A loop closed without that is dropped at the next
access from any loop. Standard library only.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Entry(Generic[T]):
    loop: weakref.ref[asyncio.AbstractEventLoop]
    value: T
    watcher: AsyncGenerator[None, None] | None = None
    dropped: bool = field(default=False)


class PerLoop(Generic[T]):
    """``get()`` returns the running loop's value, made by ``factory()`` on first use on that loop.

    ``closer(value)`` (optional, async) runs on the loop when it shuts down; values of loops closed without a
    shutdown are only dropped (their loop cannot run anything any more).
    """

    def __init__(self, factory: Callable[[], T], closer: Callable[[T], Awaitable[Any]] | None = None) -> None:
        self._factory = factory
        self._closer = closer
        self._entries: dict[int, _Entry[T]] = {}

    def __getstate__(self) -> dict[str, Any]:  # a copy or a pickle starts without any loop's values
        return {"_factory": self._factory, "_closer": self._closer, "_entries": {}}

    def __len__(self) -> int:
        self._purge()
        return len(self._entries)

    def values(self) -> list[T]:
        """The values of the loops that are still open."""
        self._purge()
        return [entry.value for entry in self._entries.values()]

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        entry = self._entries.get(id(loop))
        if entry is not None and entry.loop() is loop:
            return entry.value
        self._purge()
        entry = _Entry(weakref.ref(loop), self._factory())
        self._entries[id(loop)] = entry
        entry.watcher = self._watch(id(loop), entry)
        # The first step registers the generator with the running loop (its asyncgen "firstiter" hook), so
        # that loop.shutdown_asyncgens() closes it; the body runs to its yield without awaiting anything.
        step = entry.watcher.__anext__()
        try:
            step.send(None)
        except StopIteration:
            pass
        return entry.value

    def pop(self) -> T | None:
        """Forget the running loop's value and return it (the caller closes it)."""
        entry = self._entries.pop(id(asyncio.get_running_loop()), None)
        if entry is None:
            return None
        self._retire(entry)
        return entry.value

    async def _watch(self, key: int, entry: _Entry[T]) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            if self._entries.get(key) is entry:
                del self._entries[key]
            if not entry.dropped and self._closer is not None:
                entry.dropped = True
                await self._closer(entry.value)

    def _purge(self) -> None:
        for key, entry in list(self._entries.items()):
            loop = entry.loop()
            if loop is None or loop.is_closed():
                del self._entries[key]
                self._retire(entry)

    @staticmethod
    def _retire(entry: _Entry[Any]) -> None:
        """Close the watcher without running the closer (so a collected loop does not try to run it)."""
        entry.dropped = True
        watcher, entry.watcher = entry.watcher, None
        if watcher is not None:
            closing = watcher.aclose()
            try:
                closing.send(None)
            except (StopIteration, RuntimeError):
                pass
