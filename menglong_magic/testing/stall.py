"""How long the event loop went without running anything else, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any


class StallMonitor:
    """The longest time the event loop did not get round to a 1 ms timer, while it runs (``async with``).

    It also records how long each full garbage collection (generation 2) took meanwhile: one stops the whole process
    for as long as walking every object of its heap takes (on a 2-core machine ~1 ms per 1,000 objects), whoever
    caused it, so a stall that contains one says little about the code being measured.
    """

    def __init__(self) -> None:
        self.longest = 0.0
        self.full_collections: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._collection_started = 0.0

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.001)
            self.longest = max(self.longest, loop.time() - t - 0.001)

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._collection_started = time.perf_counter()
        else:
            self.full_collections.append(time.perf_counter() - self._collection_started)

    async def __aenter__(self) -> StallMonitor:
        gc.callbacks.append(self._on_collection)
        self._task = asyncio.ensure_future(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        gc.callbacks.remove(self._on_collection)
